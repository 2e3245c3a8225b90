<?php
// A terminal chat room: lines typed on stdin are published to chat.<room>; everything
// published there is printed.
//
//   php clients/php/examples/chat.php [ws://127.0.0.1:8080/ws] [room] [nick]
//
// chat.> topics use the server's queue policy and history: after a dropped connection the
// messages missed meanwhile are replayed, in order, exactly once. stdin is watched by the same
// event loop as the socket, so typing never blocks receiving.

declare(strict_types=1);

require __DIR__ . '/../autoload.php';

use Tickwire\Client;
use Tickwire\Update;

$url = $argv[1] ?? 'ws://127.0.0.1:8080/ws';
$topic = 'chat.' . ($argv[2] ?? 'lobby');
$nick = $argv[3] ?? get_current_user();

$client = new Client($url);
$client->onOpen(fn () => fwrite(STDERR, "* connected to $topic\n"))
    ->onClose(fn (int $code, string $reason) => fwrite(STDERR, "* disconnected: $code $reason\n"))
    ->onError(fn (Throwable $e) => fwrite(STDERR, '* ' . $e->getMessage() . "\n"))
    ->onReset(fn (string $t) => fwrite(STDERR, "* history of $t lost: some messages may be missing\n"))
    ->onMessage(function (Update $u): void {
        $m = $u->data;
        $when = date('H:i:s', intdiv($u->ts, 1000));
        printf("%s %s: %s\n", $when, $m['from'] ?? '?', $m['text'] ?? json_encode($m));
    });
$client->subscribe([$topic]);

stream_set_blocking(STDIN, false);
$client->loop()->addReadStream(STDIN, function ($stdin) use ($client, $topic, $nick): void {
    $line = fgets($stdin);
    if ($line === false) {
        if (feof($stdin)) {
            $client->loop()->removeReadStream($stdin);
            $client->close(); // end of input: leave
        }
        return;
    }
    $text = rtrim($line, "\r\n");
    if ($text !== '') {
        $client->publish($topic, ['from' => $nick, 'text' => $text])
            ->then(null, fn (Throwable $e) => fwrite(STDERR, "* not sent: {$e->getMessage()}\n"));
    }
});
$client->run();
