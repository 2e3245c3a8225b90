<?php

declare(strict_types=1);

namespace Tickwire\Tests\Integration;

use Tickwire\Exception\ProtocolException;
use Tickwire\Exception\ServerException;
use Tickwire\Tests\Support\Server;

/** Close codes reach onClose; protocol errors reach onError. */
final class ErrorsTest extends TestCase
{
    public function testServerShutdownIs1001(): void
    {
        $server = Server::start();
        $client = $this->client($server->ws(), ['reconnect' => false]);
        $this->await($client->subscribe(['x']));
        $server->stop();
        $this->until(fn () => $this->eventsOf('close') !== [], 5, 'the close');
        $this->assertSame([['close', 1001, 'server shutting down']], $this->eventsOf('close'));
    }

    /** Requests past the rate limit are refused with rate_limited, then the server closes with 4029. */
    public function testRateLimitCloseIs4029(): void
    {
        $server = Server::start(['TICKWIRE__SERVER__REQUEST_BURST' => '5', 'TICKWIRE__SERVER__REQUESTS_PER_SECOND' => '1']);
        $client = $this->client($server->ws(), ['reconnect' => false]);
        $this->await($client->publish('chat.a', 0));
        $refused = 0;
        for ($i = 0; $i < 60; $i++) {
            $client->publish('chat.a', $i)->then(null, function (\Throwable $e) use (&$refused) {
                if ($e instanceof ServerException && $e->errorCode === 'rate_limited') {
                    $refused++;
                }
            });
        }
        $this->until(fn () => $this->eventsOf('close') !== [], 5, 'the close');
        $this->assertSame([['close', 4029, 'rate limit exceeded']], $this->eventsOf('close'));
        $this->assertSame(50, $refused);
    }

    /**
     * A peer that breaks the protocol (a real socket serving scripted frames): a message that is
     * not JSON and an error for no request go to onError with the connection kept; a frame
     * with a reserved opcode goes to onError and closes with 1002.
     */
    public function testProtocolErrorsReachOnError(): void
    {
        $peerSaw = '';
        $port = $this->scriptedPeer("\x81\x04nope"
            . "\x81\x3A" . '{"type":"error","code":"bad_request","message":"whatever"}'
            . "\x83\x00", $peerSaw);
        $client = $this->client("ws://127.0.0.1:$port/ws", ['reconnect' => false]);
        $client->connect();
        $this->until(fn () => $this->eventsOf('close') !== [], 5, 'the close');
        $errors = array_map(fn ($e) => $e[1], $this->eventsOf('error'));
        $this->assertCount(3, $errors, $this->describe());
        $this->assertInstanceOf(ProtocolException::class, $errors[0]);
        $this->assertStringContainsString('not JSON', $errors[0]->getMessage());
        $this->assertInstanceOf(ServerException::class, $errors[1]);
        $this->assertSame('bad_request', $errors[1]->errorCode);
        $this->assertInstanceOf(ProtocolException::class, $errors[2]);
        $this->assertSame(1002, $errors[2]->closeCode);
        $this->assertSame(1002, $this->eventsOf('close')[0][1]);
        // The client told the peer why: a masked close frame with 1002.
        $this->assertMatchesRegularExpression('/\x88\x82(.{4})/s', $peerSaw);
        preg_match('/\x88\x82(.{4})(..)/s', $peerSaw, $m);
        $this->assertSame(1002, unpack('n', $m[2] ^ substr($m[1], 0, 2))[1]);
        $this->assertStringContainsString("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n", $peerSaw);
    }

    /** An extension answer the client did not offer, or cannot accept, fails the handshake. */
    public function testAnUnacceptableExtensionFailsTheHandshake(): void
    {
        foreach ([
            [true, 'permessage-deflate; foo=1', 'cannot accept: foo=1'],
            [true, 'permessage-deflate; server_max_window_bits=7', 'cannot accept'],
            [true, 'permessage-deflate; server_no_context_takeover; server_no_context_takeover', 'twice'],
            [true, 'x-webkit-deflate-frame', 'did not offer'],
            [false, 'permessage-deflate', 'did not offer'],
        ] as [$offer, $answer, $why]) {
            $this->events = [];
            $seen = '';
            $port = $this->scriptedPeer('', $seen, "Sec-WebSocket-Extensions: $answer\r\n");
            $client = $this->client("ws://127.0.0.1:$port/ws", ['reconnect' => false, 'deflate' => $offer]);
            $client->connect();
            $this->until(fn () => $this->eventsOf('close') !== [], 5, 'the failed handshake');
            $this->assertSame([], $this->eventsOf('open'), $answer);
            $this->assertStringContainsString($why, $this->eventsOf('error')[0][1]->getMessage(), $answer);
        }
    }

    /**
     * A one-connection WebSocket server on the test's loop that answers the handshake (with
     * `$headers` added) and then sends `$frames`; what the client sent accumulates in `$saw`.
     */
    private function scriptedPeer(string $frames, string &$saw, string $headers = ''): int
    {
        $listener = stream_socket_server('tcp://127.0.0.1:0');
        $port = (int) substr(strrchr(stream_socket_get_name($listener, false), ':'), 1);
        $this->loop->addReadStream($listener, function ($l) use (&$saw, $frames, $headers) {
            $peer = stream_socket_accept($l);
            $this->loop->removeReadStream($l);
            $this->loop->addReadStream($peer, function ($peer) use (&$saw, $frames, $headers) {
                $chunk = fread($peer, 65536);
                $saw .= $chunk;
                if ($chunk === '' || $chunk === false) {
                    $this->loop->removeReadStream($peer);
                    fclose($peer);
                    return;
                }
                if (preg_match('/Sec-WebSocket-Key: (\S+)/', $chunk, $m)) {
                    $accept = base64_encode(sha1($m[1] . '258EAFA5-E914-47DA-95CA-C5AB0DC85B11', true));
                    fwrite($peer, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        . "Sec-WebSocket-Accept: $accept\r\n$headers\r\n$frames");
                }
            });
            fclose($l);
        });
        return $port;
    }
}
