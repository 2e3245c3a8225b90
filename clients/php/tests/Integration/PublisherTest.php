<?php

declare(strict_types=1);

namespace Tickwire\Tests\Integration;

use PHPUnit\Framework\TestCase;
use Tickwire\Exception\ConnectionException;
use Tickwire\Exception\ServerException;
use Tickwire\Publisher;
use Tickwire\Tests\Support\Server;

/**
 * The publisher's retry rules against a scripted HTTP peer (PHP's built-in server with a router
 * that answers from a script and logs each request): only what may not have been published is
 * retried, always with the same Idempotency-Key.
 */
final class PublisherTest extends TestCase
{
    private string $dir;
    /** @var resource */
    private $peer;
    private int $port;

    protected function setUp(): void
    {
        $this->dir = sys_get_temp_dir() . '/tickwire-php-peer-' . getmypid() . '-' . bin2hex(random_bytes(3));
        mkdir($this->dir);
        $this->port = Server::freePort();
        $this->peer = proc_open(
            [PHP_BINARY, '-S', "127.0.0.1:{$this->port}", __DIR__ . '/../fixtures/http_script_router.php'],
            [0 => ['file', '/dev/null', 'r'], 1 => ['file', '/dev/null', 'w'], 2 => ['file', '/dev/null', 'w']],
            $pipes,
            null,
            ['SCRIPT_DIR' => $this->dir],
        );
        $deadline = microtime(true) + 5;
        while (($s = @stream_socket_client("tcp://127.0.0.1:{$this->port}", $e, $m, 0.2)) === false) {
            $this->assertLessThan($deadline, microtime(true), 'php -S did not start');
            usleep(20_000);
        }
        fclose($s);
    }

    protected function tearDown(): void
    {
        proc_terminate($this->peer, 9);
        proc_close($this->peer);
        array_map('unlink', glob("$this->dir/*"));
        rmdir($this->dir);
    }

    /** The peer's answers, in order; the last one repeats. */
    private function script(string ...$replies): void
    {
        file_put_contents("$this->dir/replies", implode("\n", $replies) . "\n");
    }

    /** @return list<array> */
    private function requests(): array
    {
        return array_map(fn ($l) => json_decode($l, true), file("$this->dir/log", FILE_IGNORE_NEW_LINES) ?: []);
    }

    public function testA503IsRetriedWithTheSameKey(): void
    {
        $this->script(
            '503 {"error":{"code":"unavailable","message":"retry later"}}',
            '503 {"error":{"code":"unavailable","message":"retry later"}}',
            '200 {"topic":"orders.1","seq":7}',
        );
        $publisher = new Publisher("http://127.0.0.1:{$this->port}", ['api_key' => 'k-123', 'backoff' => 0.01]);
        $this->assertSame(7, $publisher->publish('orders.1', ['a' => 1.0])->seq);
        $log = $this->requests();
        $this->assertCount(3, $log);
        $this->assertMatchesRegularExpression('/^[0-9a-f]{32}$/', $log[0]['key']);
        $this->assertSame([$log[0]['key']], array_values(array_unique(array_column($log, 'key'))));
        $this->assertSame('Bearer k-123', $log[0]['auth']);
        $this->assertSame('/api/v1/publish', $log[0]['path']);
        $this->assertSame('{"topic":"orders.1","data":{"a":1.0}}', $log[0]['body']);
    }

    public function testARefusalIsFinalAndTyped(): void
    {
        $this->script('403 {"error":{"code":"forbidden","message":"not allowed to publish to \"x\""}}');
        $publisher = new Publisher("http://127.0.0.1:{$this->port}", ['backoff' => 0.01]);
        try {
            $publisher->publishBatch([['topic' => 'x', 'data' => 1], ['topic' => 'y', 'data' => 2]]);
            $this->fail('accepted');
        } catch (ServerException $e) {
            $this->assertSame('forbidden', $e->errorCode);
            $this->assertSame(403, $e->status);
            $this->assertFalse($e->isTransient());
        }
        $this->assertCount(1, $this->requests(), 'not retried');
        $this->assertSame('{"messages":[{"topic":"x","data":1},{"topic":"y","data":2}]}', $this->requests()[0]['body']);
    }

    public function testThreeFailedAttemptsEndWithTheLastError(): void
    {
        $this->script('503 {"error":{"code":"unavailable","message":"still down"}}');
        $publisher = new Publisher("http://127.0.0.1:{$this->port}", ['backoff' => 0.01]);
        try {
            $publisher->publish('a', 1);
            $this->fail('accepted');
        } catch (ServerException $e) {
            $this->assertSame('unavailable', $e->errorCode);
            $this->assertTrue($e->isTransient());
        }
        $this->assertCount(3, $this->requests());

        $closed = new Publisher('http://127.0.0.1:' . Server::freePort(), ['backoff' => 0.01, 'attempts' => 2]);
        $this->expectException(ConnectionException::class);
        $closed->publish('a', 1);
    }
}
