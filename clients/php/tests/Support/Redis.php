<?php

declare(strict_types=1);

namespace Tickwire\Tests\Support;

/** A real `redis-server` on a free loopback port, without persistence; a missing binary fails. */
final class Redis
{
    /** @var resource */
    private $process;
    public readonly int $port;

    public function __construct()
    {
        $this->port = Server::freePort();
        $this->process = proc_open(
            ['redis-server', '--port', (string) $this->port, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
            [0 => ['file', '/dev/null', 'r'], 1 => ['file', '/dev/null', 'w'], 2 => ['file', '/dev/null', 'w']],
            $pipes,
        );
        if (!is_resource($this->process)) {
            throw new \RuntimeException('cannot start redis-server (Debian: redis-server)');
        }
        $deadline = microtime(true) + 10;
        while (microtime(true) < $deadline) {
            $s = @stream_socket_client("tcp://127.0.0.1:{$this->port}", $errno, $errstr, 0.5);
            if ($s !== false) {
                fwrite($s, "PING\r\n");
                if (str_starts_with((string) fgets($s), '+PONG')) {
                    fclose($s);
                    return;
                }
                fclose($s);
            }
            usleep(20_000);
        }
        throw new \RuntimeException("redis-server did not answer on {$this->port}");
    }

    public function url(): string
    {
        return "redis://127.0.0.1:{$this->port}";
    }

    public function __destruct()
    {
        proc_terminate($this->process, 9);
        proc_close($this->process);
    }
}
