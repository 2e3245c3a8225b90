<?php
// A live price table in the terminal, from the server's built-in feed (prices.*).
//
//   php clients/php/examples/price_watcher.php [ws://127.0.0.1:8080/ws] [max updates a second]
//
// Redraws at most 4 times a second, whatever the feed's rate: the subscription asks the server
// for at most that many updates per topic (max_rate), and the newest always arrives.

declare(strict_types=1);

require __DIR__ . '/../autoload.php';

use Tickwire\Client;
use Tickwire\Update;

$url = $argv[1] ?? 'ws://127.0.0.1:8080/ws';
$rate = (float) ($argv[2] ?? 4);
$client = new Client($url);
$prices = [];
$status = 'connecting';

$draw = function () use (&$prices, &$status): void {
    ksort($prices);
    $out = "\033[H\033[2J" . sprintf("%-12s %12s %12s %12s %10s %8s   %s\n", 'SYMBOL', 'BID', 'ASK', 'LAST', 'CHANGE', 'SEQ', $status);
    foreach ($prices as $symbol => $p) {
        $arrow = $p['change'] > 0 ? "\033[32m+" : ($p['change'] < 0 ? "\033[31m-" : ' ');
        $out .= sprintf("%-12s %12.4f %12.4f %12.4f %s%9.4f\033[0m %8d\n", $symbol, $p['bid'], $p['ask'], $p['last'], $arrow, abs($p['change']), $p['seq']);
    }
    echo $out;
};

$client->onOpen(function () use (&$status) { $status = 'live'; })
    ->onClose(function (int $code, string $reason) use (&$status) { $status = "disconnected ($code $reason), reconnecting"; })
    ->onError(fn (Throwable $e) => fwrite(STDERR, $e->getMessage() . "\n"))
    ->onReset(function (string $topic) use (&$prices) { unset($prices[substr($topic, 7)]); })
    ->onMessage(function (Update $u) use (&$prices): void {
        $symbol = substr($u->topic, strlen('prices.'));
        $last = (float) ($u->data['last'] ?? 0);
        $before = $prices[$symbol]['last'] ?? $last;
        $prices[$symbol] = [
            'bid' => (float) ($u->data['bid'] ?? 0),
            'ask' => (float) ($u->data['ask'] ?? 0),
            'last' => $last,
            'change' => $last - $before,
            'seq' => $u->seq,
        ];
    });
$client->subscribe(['prices.*'], ['max_rate' => $rate])
    ->then(null, fn (Throwable $e) => fwrite(STDERR, "subscribe refused: {$e->getMessage()}\n"));
$client->loop()->addPeriodicTimer(0.25, $draw);
$client->run();
