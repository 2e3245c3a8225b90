<?php

declare(strict_types=1);

namespace Tickwire\Tests\Integration;

use Tickwire\Publisher;
use Tickwire\Tests\Support\Loop;
use Tickwire\Tests\Support\Redis;
use Tickwire\Tests\Support\Server;

/** Reconnects: gap-free recovery with `since`, and an explicit reset when it cannot be. */
final class RecoveryTest extends TestCase
{
    /**
     * Two nodes share a Redis. The client's node is stopped; 50 messages are published through
     * the other node while it is down; the node comes back on the same port. The client
     * reconnects and gets exactly those 50, in order, with no reset and no duplicate.
     *
     * The client's node allows 2 requests at once (then 1 a second): of the re-subscription's
     * three requests (one per set of options) the third is refused with `rate_limited`, and
     * its retry must still ask to recover its topic (not take a snapshot over the gap).
     */
    public function testGapFreeRecoveryAcrossAServerRestart(): void
    {
        $redis = new Redis();
        $env = ['TICKWIRE__BROKER__KIND' => 'redis', 'TICKWIRE__BROKER__REDIS_URL' => $redis->url()];
        $limited = $env + ['TICKWIRE__SERVER__REQUEST_BURST' => '2', 'TICKWIRE__SERVER__REQUESTS_PER_SECOND' => '1'];
        $a = Server::start($limited);
        $b = Server::start($env);
        $http = new Publisher($b->http());

        // Published to once before the subscribe, so that its reply carries the topic's epoch
        // (in a cluster a topic never published has none yet, protocol.md §5: a client that
        // subscribed before the first publication cannot recover it, and resets).
        $http->publish('orders.7', ['n' => 1]);
        $http->publish('0', 'zero 1');
        $client = $this->client($a->ws());
        $this->await($client->subscribe(['orders.7']));
        // A topic PHP keeps as an integer array key, alone in its re-subscribe request (other
        // options): its `since` must still go out as a JSON object.
        $this->await($client->subscribe(['0'], ['max_rate' => 100]));
        $http->publish('x.y', 'xy 1');
        Loop::for($this->loop, 1.1); // a token for the third subscribe
        $this->await($client->subscribe(['x.y'], ['max_rate' => 50]));
        for ($i = 2; $i <= 5; $i++) {
            $http->publish('orders.7', ['n' => $i]);
        }
        $this->until(fn () => count($this->messages('orders.7')) === 5, 10, 'the first 5');

        $port = $a->port;
        $a->stop();
        $this->until(fn () => $this->eventsOf('close') !== [], 10, 'the close of the stopped node');
        $this->assertSame(1001, $this->eventsOf('close')[0][1]);
        for ($i = 6; $i <= 55; $i++) {
            $http->publish('orders.7', ['n' => $i]);
        }
        $http->publish('0', 'zero 2');
        $http->publish('x.y', 'xy 2');
        $this->assertFalse($client->isConnected());
        $a = Server::start($limited, $port);

        $this->until(
            fn () => count($this->messages('orders.7')) === 55 && count($this->messages('0')) === 2 && count($this->messages('x.y')) === 2,
            15,
            'the 50 published while down',
        );
        $http->publish('orders.7', ['n' => 56]);
        $this->until(fn () => count($this->messages('orders.7')) === 56, 5, 'a live one after');
        $this->assertSame(range(1, 56), array_map(fn ($u) => $u->seq, $this->messages('orders.7')));
        $this->assertSame(range(1, 56), array_map(fn ($u) => $u->data['n'], $this->messages('orders.7')));
        $this->assertSame('snapshot', $this->messages('orders.7')[0]->kind);
        $this->assertSame(['zero 1', 'zero 2'], array_map(fn ($u) => $u->data, $this->messages('0')));
        $this->assertSame([['snapshot', 'xy 1'], ['update', 'xy 2']], array_map(fn ($u) => [$u->kind, $u->data], $this->messages('x.y')));
        $this->assertSame([], $this->eventsOf('reset'));
        $this->assertCount(2, $this->eventsOf('open'));
        $client->close();
    }

    /**
     * A server restart without a shared store starts a new epoch: the client cannot recover, so
     * it says `onReset` for the topic, and the new stream's seqs (from 1 again) are delivered,
     * not dropped as old.
     */
    public function testResetWhenTheEpochChanges(): void
    {
        $server = Server::start();
        $http = new Publisher($server->http());
        $client = $this->client($server->ws());
        $this->await($client->subscribe(['news.x']));
        for ($i = 1; $i <= 3; $i++) {
            $http->publish('news.x', "old $i");
        }
        $this->until(fn () => count($this->messages()) === 3, 5, 'three updates');

        $port = $server->port;
        $server->stop();
        $server = Server::start([], $port);
        $this->until(fn () => $this->eventsOf('reset') !== [], 10, 'the reset');
        $this->assertSame('news.x', $this->eventsOf('reset')[0][1]);

        $http = new Publisher($server->http());
        $http->publish('news.x', 'new 1');
        $http->publish('news.x', 'new 2');
        $this->until(fn () => count($this->messages()) === 5, 5, 'the new stream');
        $this->assertSame([1, 2, 3, 1, 2], array_map(fn ($u) => $u->seq, $this->messages()));
        $this->assertSame('new 2', $this->messages()[4]->data);
        // The order the application saw: the reset comes before the new stream's first update.
        $kinds = array_map(fn ($e) => $e[0], $this->events);
        $reset = array_search('reset', $kinds, true);
        $this->assertLessThan(array_keys(array_filter($this->events, fn ($e) => $e[0] === 'message' && $e[1]->data === 'new 1'))[0], $reset);
        $client->close();
    }
}
