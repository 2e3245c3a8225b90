<?php
// Autobahn TestSuite driver (fuzzingserver mode) for Tickwire\WebSocket\Connection: runs every
// case, echoing each text and binary message, then asks the fuzzing server for its reports.
//
//   ../shared/tools/autobahn.sh --client 9001 '["1.*","2.*",...,"10.*"]' /tmp/ab-php -- php clients/php/tests/autobahn_client.php
//
// Reads AUTOBAHN_URL and AUTOBAHN_AGENT (set by the script).

declare(strict_types=1);

require __DIR__ . '/../autoload.php';

use Tickwire\EventLoop;
use Tickwire\WebSocket\Connection;

$base = getenv('AUTOBAHN_URL') ?: 'ws://127.0.0.1:9001';
$agent = getenv('AUTOBAHN_AGENT') ?: 'tickwire-php';
$loop = new EventLoop();

/** Opens $url, calls $onMessage for each message, runs the loop until the connection closes. */
function session(EventLoop $loop, string $url, callable $onMessage): void
{
    $ws = new Connection($loop, $url, ['max_message_bytes' => 32 << 20]);
    $ws->onMessage(fn (string $payload, bool $binary) => $onMessage($ws, $payload, $binary));
    $ws->onClose(fn () => $loop->stop());
    $ws->connect();
    $loop->run();
}

$count = 0;
session($loop, "$base/getCaseCount", function ($ws, string $payload) use (&$count): void {
    $count = (int) $payload;
});
for ($case = 1; $case <= $count; $case++) {
    session($loop, "$base/runCase?case=$case&agent=$agent", function (Connection $ws, string $payload, bool $binary): void {
        $binary ? $ws->sendBinary($payload) : $ws->send($payload);
    });
}
session($loop, "$base/updateReports?agent=$agent", fn () => null);
fwrite(STDERR, "ran $count cases\n");
