<?php

declare(strict_types=1);

namespace Tickwire\Tests\Unit;

use PHPUnit\Framework\TestCase;
use Tickwire\Client;
use Tickwire\Deferred;

/** The pieces of the client that need no server: pattern matching, token expiry, Deferred. */
final class ClientTest extends TestCase
{
    /** The table of docs/protocol.md §3. */
    public function testPatternsMatchLikeTheServer(): void
    {
        $topics = ['prices', 'prices.BTC-USD', 'prices.ETH-USD', 'prices.BTC-USD.book', 'news.BTC-USD', 'chat'];
        $table = [
            'prices.BTC-USD' => [0, 1, 0, 0, 0, 0],
            'prices.*' => [0, 1, 1, 0, 0, 0],
            'prices.>' => [0, 1, 1, 1, 0, 0],
            '*.BTC-USD' => [0, 1, 0, 0, 1, 0],
            'prices.*.book' => [0, 0, 0, 1, 0, 0],
            '*' => [1, 0, 0, 0, 0, 1],
            '*.*' => [0, 1, 1, 0, 1, 0],
            '>' => [1, 1, 1, 1, 1, 1],
        ];
        foreach ($table as $pattern => $row) {
            foreach ($topics as $i => $topic) {
                $this->assertSame((bool) $row[$i], Client::matches($pattern, $topic), "$pattern vs $topic");
            }
        }
    }

    public function testTokenExpiryIsReadFromTheClaims(): void
    {
        $b64 = fn (string $s) => rtrim(strtr(base64_encode($s), '+/', '-_'), '=');
        $jwt = $b64('{"alg":"HS256"}') . '.' . $b64('{"sub":"ann","exp":1800000000}') . '.sig';
        $this->assertSame(1800000000, Client::tokenExpiry($jwt));
        $this->assertNull(Client::tokenExpiry('not-a-jwt'));
        $this->assertNull(Client::tokenExpiry($b64('{}') . '.' . $b64('{"sub":"x"}') . '.s'));
    }

    public function testDeferredSettlesOnceAndLateCallbacksRunAtOnce(): void
    {
        $d = new Deferred();
        $seen = [];
        $d->then(function ($v) use (&$seen) { $seen[] = "a:$v"; });
        $d->resolve(1);
        $d->resolve(2);
        $d->reject(new \RuntimeException('late'));
        $d->then(function ($v) use (&$seen) { $seen[] = "b:$v"; });
        $this->assertSame(['a:1', 'b:1'], $seen);
        $this->assertSame(1, $d->result());

        $e = new Deferred();
        $e->reject(new \RuntimeException('no'));
        $e->then(null, function (\Throwable $t) use (&$seen) { $seen[] = $t->getMessage(); });
        $this->assertSame('no', end($seen));
        $this->expectExceptionMessage('no');
        $e->result();
    }
}
