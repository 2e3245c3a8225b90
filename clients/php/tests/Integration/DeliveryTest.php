<?php

declare(strict_types=1);

namespace Tickwire\Tests\Integration;

use Tickwire\Exception\ServerException;
use Tickwire\Publisher;
use Tickwire\Published;
use Tickwire\Tests\Support\Server;

/** Subscribe, snapshot, updates, publish, errors, deltas and throughput against a real server. */
final class DeliveryTest extends TestCase
{
    public function testSnapshotThenUpdatesInSeqOrder(): void
    {
        $server = Server::start();
        $http = new Publisher($server->http());
        $this->assertSame(1, $http->publish('orders.1', ['status' => 'new'])->seq);

        $client = $this->client($server->ws());
        $reply = $this->await($client->subscribe(['orders.*']));
        $this->assertSame(['orders.*'], $reply['topics']);
        $this->assertSame(1, $reply['positions']['orders.1']['seq']);
        $this->until(fn () => count($this->messages()) === 1, 5, 'the snapshot');

        $results = $http->publishBatch([
            ['topic' => 'orders.1', 'data' => ['status' => 'paid']],
            ['topic' => 'orders.2', 'data' => 'x'],
            ['topic' => 'orders.1', 'data' => ['status' => 'shipped', 'price' => 1.50]],
        ]);
        $this->assertEquals([new Published('orders.1', 2), new Published('orders.2', 1), new Published('orders.1', 3)], $results);
        $this->until(fn () => count($this->messages()) === 4, 5, 'three updates');

        $one = $this->messages('orders.1');
        $this->assertSame(['snapshot', 'update', 'update'], array_map(fn ($u) => $u->kind, $one));
        $this->assertSame([1, 2, 3], array_map(fn ($u) => $u->seq, $one));
        $this->assertSame(['status' => 'new'], $one[0]->data);
        $this->assertSame('{"status":"shipped","price":1.5}', $one[2]->json, 'data text byte for byte');
        $this->assertSame('x', $this->messages('orders.2')[0]->data);
        $this->assertSame('open', $this->events[0][0]);

        // Topic names PHP turns into integer array keys recover like any other.
        $http->publish('7', 'seven');
        $this->await($client->subscribe(['7']));
        $this->until(fn () => count($this->messages('7')) === 1, 5, 'the snapshot of "7"');
        $this->assertSame('seven', $this->messages('7')[0]->data);
        $this->events = array_values(array_filter($this->events, fn ($e) => $e[0] !== 'message' || $e[1]->topic !== '7'));
        $this->await($client->unsubscribe(['7']));

        $this->await($client->unsubscribe(['orders.*']));
        $http->publish('orders.1', 'after');
        $this->await($client->subscribe(['other'])); // a round trip: anything sent before it has arrived
        $this->assertCount(4, $this->messages(), 'nothing after unsubscribed');
        $client->close();
        $this->until(fn () => $this->eventsOf('close') !== [], 5, 'close');
        $this->assertSame(1000, $this->eventsOf('close')[0][1]);
    }

    public function testPublishRoundTripAndRefusals(): void
    {
        $server = Server::start();
        $client = $this->client($server->ws());
        $this->await($client->subscribe(['chat.lobby']));
        $published = $this->await($client->publish('chat.lobby', ['user' => 'ann', 'text' => 'héllo']));
        $this->assertEquals(new Published('chat.lobby', 1), $published);
        $this->until(fn () => count($this->messages()) === 1, 5, 'own publication');
        $this->assertSame(['user' => 'ann', 'text' => 'héllo'], $this->messages()[0]->data);

        // Refusals reject the request's Deferred with the server's code; the connection stays.
        foreach ([
            [fn () => $client->publish('prices.X', 1), 'forbidden'],
            [fn () => $client->publish('chat.*', 1), 'invalid_topic'],
            [fn () => $client->subscribe(['a..b']), 'invalid_topic'],
            [fn () => $client->refreshToken('x.y.z'), 'bad_request'],
        ] as [$request, $code]) {
            try {
                $this->await($request());
                $this->fail("accepted, expected $code");
            } catch (ServerException $e) {
                $this->assertSame($code, $e->errorCode);
            }
        }
        $this->assertSame(2, $this->await($client->publish('chat.lobby', 'still open'))->seq);

        // The HTTP publisher's typed errors.
        $http = new Publisher($server->http());
        try {
            $http->publish('a.*', 1);
            $this->fail('accepted');
        } catch (ServerException $e) {
            $this->assertSame('invalid_topic', $e->errorCode);
            $this->assertSame(400, $e->status);
        }
    }

    /**
     * Subscribed with deltas, the application still sees full data, byte for byte, and the
     * server did send deltas (its counter moved).
     */
    public function testDeltasAreAppliedSoDataIsAlwaysFull(): void
    {
        $server = Server::start();
        $http = new Publisher($server->http());
        $client = $this->client($server->ws());
        $this->await($client->subscribe(['doc.*'], ['delta' => 'fossil']));
        $docs = [];
        for ($i = 0; $i < 20; $i++) {
            $rows = array_map(fn ($r) => ['region' => "r$r", 'sales' => $r * 100 + ($r === $i % 8 ? $i : 0)], range(0, 7));
            $docs[] = ['title' => 'Q3 réport 🟢', 'version' => $i, 'rows' => $rows];
            $http->publish('doc.7', end($docs));
        }
        $this->until(fn () => count($this->messages()) === 20, 5, '20 updates');
        foreach ($this->messages() as $i => $u) {
            $this->assertSame($i + 1, $u->seq);
            $this->assertSame($docs[$i], $u->data);
            $this->assertSame(json_encode($docs[$i], JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE), $u->json);
        }
        $this->assertGreaterThanOrEqual(15, $server->metric('tickwire_delta_frames_total'));
        $this->assertSame([], $this->eventsOf('error'));
    }

    /**
     * permessage-deflate is negotiated (the client offers it by default): the server's
     * compressed frames arrive inflated, byte for byte; with `deflate` off they come plain.
     */
    public function testCompressedFramesAreInflated(): void
    {
        $server = Server::start();
        $http = new Publisher($server->http());
        $doc = ['text' => str_repeat('compressible text, ', 200), 'n' => 1];
        foreach ([true, false] as $deflate) {
            $this->events = [];
            $before = $server->metric('tickwire_compressed_frames_total');
            $client = $this->client($server->ws(), ['deflate' => $deflate]);
            $this->await($client->subscribe(['big.x']));
            $http->publish('big.x', $doc);
            $this->until(fn () => count($this->messages()) === 1, 5, 'the update');
            $this->assertSame($doc, $this->messages()[0]->data);
            $compressed = $server->metric('tickwire_compressed_frames_total') - $before;
            $this->assertSame($deflate ? 1.0 : 0.0, $compressed, $deflate ? 'sent compressed' : 'sent plain');
            $client->close();
            $this->until(fn () => $this->eventsOf('close') !== [], 5, 'close');
        }
    }

    /**
     * 1,000 updates a second for 3 s, published from another process: every one arrives, in
     * order (no conflation: the client kept up), each within 250 ms of its publication.
     */
    public function testConsumesAThousandUpdatesPerSecondWithoutFallingBehind(): void
    {
        $server = Server::start();
        $client = $this->client($server->ws());
        $this->await($client->subscribe(['ticks.>']));
        $lag = 0;
        $client->onMessage(function (\Tickwire\Update $u) use (&$lag) {
            $this->events[] = ['message', $u];
            $lag = max($lag, (int) (microtime(true) * 1000) - $u->ts);
        });
        $publisher = proc_open(
            [PHP_BINARY, __DIR__ . '/../publish_rate.php', $server->http(), 'ticks.a', '1000', '3'],
            [1 => ['pipe', 'w'], 2 => ['pipe', 'w']],
            $pipes,
        );
        $this->until(fn () => count($this->messages()) >= 3000, 15, '3,000 updates');
        $out = stream_get_contents($pipes[1]) . stream_get_contents($pipes[2]);
        $this->assertSame(0, proc_close($publisher), $out);
        $seqs = array_map(fn ($u) => $u->seq, $this->messages());
        $this->assertSame(range(1, 3000), $seqs);
        $this->assertLessThan(250, $lag, "worst delay from publication to onMessage, ms ($out)");
        fwrite(STDERR, sprintf("\n[throughput] 3000 updates at 1000/s: worst lag %d ms; %s", $lag, $out));
    }
}
