<?php
// Publishing from request/response PHP (a controller, a cron job, a queue worker): synchronous
// HTTP, no event loop.
//
//   php clients/php/examples/publisher.php [http://127.0.0.1:8080] [api key]

declare(strict_types=1);

require __DIR__ . '/../autoload.php';

use Tickwire\Exception\ConnectionException;
use Tickwire\Exception\ServerException;
use Tickwire\Publisher;

$publisher = new Publisher($argv[1] ?? 'http://127.0.0.1:8080', [
    'api_key' => $argv[2] ?? null,
    'timeout' => 2.0,
    'attempts' => 3, // retried with the same Idempotency-Key: published once at most
]);

try {
    $published = $publisher->publish('orders.42', ['status' => 'paid', 'total' => 99.5]);
    echo "orders.42 is now at seq {$published->seq}\n";

    // All or nothing, in order.
    $results = $publisher->publishBatch([
        ['topic' => 'orders.42', 'data' => ['status' => 'shipped']],
        ['topic' => 'chat.lobby', 'data' => ['from' => 'shop', 'text' => 'order 42 shipped']],
    ]);
    foreach ($results as $r) {
        echo "{$r->topic} #{$r->seq}\n";
    }
} catch (ServerException $e) {
    // The server's error code: forbidden, invalid_topic, payload_too_large, unauthorized, ...
    fwrite(STDERR, "refused ({$e->status} {$e->errorCode}): {$e->getMessage()}\n");
    exit(1);
} catch (ConnectionException $e) {
    fwrite(STDERR, "server unreachable: {$e->getMessage()}\n");
    exit(1);
}
