<?php

declare(strict_types=1);

namespace Tickwire\Tests\Integration;

use Tickwire\Exception\ClosedException;
use Tickwire\Exception\HandshakeException;
use Tickwire\Publisher;
use Tickwire\Tests\Support\Jwt;
use Tickwire\Tests\Support\Loop;
use Tickwire\Tests\Support\Server;
use Tickwire\Tests\Support\Tls;

/** JWT (handshake, refresh, expiry, refusal) and TLS with a self-signed certificate. */
final class AuthTest extends TestCase
{
    /**
     * Tokens valid for 3 s from a provider: the client refreshes each with an `auth` request
     * before it expires, so the connection outlives several tokens without a 4003.
     */
    public function testTokenRefreshKeepsTheConnectionOpen(): void
    {
        $server = Server::start(Jwt::env());
        $issued = 0;
        $client = $this->client($server->ws(), [
            'token' => function () use (&$issued) {
                $issued++;
                return Jwt::token('ann', ['prices.>'], [], 3);
            },
            'refresh_margin' => 2.0,
        ]);
        $this->await($client->subscribe(['prices.>']));
        Loop::for($this->loop, 4.5);
        $this->assertGreaterThanOrEqual(4, $issued, 'the connect and at least three refreshes');
        $this->assertSame([], $this->eventsOf('close'), $this->describe());
        (new Publisher($server->http()))->publish('prices.A', 1);
        $this->until(fn () => count($this->messages()) === 1, 5, 'an update on the refreshed connection');
        $this->assertCount(1, $this->eventsOf('open'));
    }

    /** A fixed token that expires: close 4003 reaches onClose, and the client does not reconnect. */
    public function testExpiredTokenClosesWith4003AndTheClientStops(): void
    {
        $server = Server::start(Jwt::env());
        $client = $this->client($server->ws(), ['token' => Jwt::token('ann', ['a.>'], [], 2)]);
        $this->await($client->subscribe(['a.>']));
        $this->until(fn () => $this->eventsOf('close') !== [], 6, 'the expiry');
        $this->assertSame([['close', 4003, 'token expired']], $this->eventsOf('close'));
        Loop::for($this->loop, 0.5);
        $this->assertCount(1, $this->eventsOf('open'), 'no reconnect with an expired token');
        $this->expectException(ClosedException::class);
        $this->await($client->subscribe(['a.b']));
    }

    /** A token the server refuses (wrong key): a HandshakeException with 401, once; no retry loop. */
    public function testRefusedTokenIsReportedOnce(): void
    {
        $server = Server::start(Jwt::env());
        $client = $this->client($server->ws(), ['token' => Jwt::token('ann', ['a.>'], [], 60, 'another secret')]);
        $client->connect();
        $this->until(fn () => $this->eventsOf('close') !== [], 5, 'the refusal');
        Loop::for($this->loop, 0.3);
        $errors = $this->eventsOf('error');
        $this->assertCount(1, $errors, $this->describe());
        $this->assertInstanceOf(HandshakeException::class, $errors[0][1]);
        $this->assertSame(401, $errors[0][1]->status);
        $this->assertSame('unauthorized', $errors[0][1]->errorCode);
        $this->assertSame([], $this->eventsOf('open'));
        $this->assertSame(1006, $this->eventsOf('close')[0][1]);
    }

    /** wss:// and https:// with a self-signed certificate trusted explicitly; refused without. */
    public function testTlsWithASelfSignedCertificate(): void
    {
        $tls = new Tls();
        $server = Server::start($tls->env());
        $this->assertStringStartsWith('wss://', $server->ws());

        $untrusting = $this->client($server->ws(), ['reconnect' => false]);
        $untrusting->connect();
        $this->until(fn () => $this->eventsOf('close') !== [], 5, 'the refused TLS handshake');
        $this->assertStringContainsString('TLS handshake', $this->eventsOf('error')[0][1]->getMessage());
        $this->events = [];

        $client = $this->client($server->ws(), ['tls' => ['cafile' => $tls->cert()]]);
        $this->await($client->subscribe(['secure.x']));
        $http = new Publisher($server->http(), ['tls' => [CURLOPT_CAINFO => $tls->cert()]]);
        $this->assertSame(1, $http->publish('secure.x', ['over' => 'tls'])->seq);
        $this->until(fn () => count($this->messages()) === 1, 5, 'the update over TLS');
        $this->assertSame(['over' => 'tls'], $this->messages()[0]->data);
        $client->close();
    }
}
