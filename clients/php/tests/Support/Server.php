<?php

declare(strict_types=1);

namespace Tickwire\Tests\Support;

/**
 * The real `tickwire` binary as a child process on a free loopback port, configured through
 * `TICKWIRE__*` variables on a clean environment (no config file, feed off). The binary is
 * `TICKWIRE_BIN` or the workspace's target/debug/tickwire (built by `cargo test --workspace`);
 * a missing binary fails the test, it never skips.
 */
final class Server
{
    /** @var resource|null */
    private $process = null;
    public readonly int $port;
    private string $log;

    /** @param array<string, string> $env extra TICKWIRE__* settings */
    public function __construct(private array $env = [], ?int $port = null)
    {
        $this->port = $port ?? self::freePort();
        $this->log = sys_get_temp_dir() . '/tickwire-php-test-' . getmypid() . '-' . $this->port . '.log';
    }

    public static function binary(): string
    {
        $bin = getenv('TICKWIRE_BIN') ?: dirname(__DIR__, 4) . '/target/debug/tickwire';
        if (!is_executable($bin)) {
            throw new \RuntimeException("tickwire binary not found at $bin: run `cargo build` first (or set TICKWIRE_BIN)");
        }
        return $bin;
    }

    public static function freePort(): int
    {
        $s = stream_socket_server('tcp://127.0.0.1:0');
        $name = stream_socket_get_name($s, false);
        fclose($s);
        return (int) substr($name, strrpos($name, ':') + 1);
    }

    public static function start(array $env = [], ?int $port = null): self
    {
        $server = new self($env, $port);
        $server->run();
        return $server;
    }

    public function run(): void
    {
        $env = ['PATH' => getenv('PATH') ?: '/usr/bin:/bin', 'HOME' => sys_get_temp_dir()];
        $env['TICKWIRE__SERVER__LISTEN'] = "127.0.0.1:{$this->port}";
        $env['TICKWIRE__FEED__ENABLED'] = 'false';
        $env = array_merge($env, $this->env);
        $this->process = proc_open(
            [self::binary(), 'serve'],
            [0 => ['file', '/dev/null', 'r'], 1 => ['file', $this->log, 'a'], 2 => ['file', $this->log, 'a']],
            $pipes,
            sys_get_temp_dir(),
            $env,
        );
        if (!is_resource($this->process)) {
            throw new \RuntimeException('cannot start tickwire');
        }
        $deadline = microtime(true) + 15;
        $scheme = isset($this->env['TICKWIRE__TLS__CERT']) ? 'tls' : 'tcp';
        while (microtime(true) < $deadline) {
            $status = proc_get_status($this->process);
            if (!$status['running']) {
                throw new \RuntimeException("tickwire exited at start:\n" . @file_get_contents($this->log));
            }
            $ctx = stream_context_create(['ssl' => ['verify_peer' => false, 'verify_peer_name' => false]]);
            $s = @stream_socket_client("$scheme://127.0.0.1:{$this->port}", $errno, $errstr, 0.5, STREAM_CLIENT_CONNECT, $ctx);
            if ($s !== false) {
                fclose($s);
                return;
            }
            usleep(20_000);
        }
        throw new \RuntimeException("tickwire did not listen on {$this->port} within 15 s:\n" . @file_get_contents($this->log));
    }

    /** SIGTERM (graceful: clients get 1001), SIGKILL after 5 s. */
    public function stop(): void
    {
        if ($this->process === null) {
            return;
        }
        proc_terminate($this->process, 15);
        $deadline = microtime(true) + 5;
        while (proc_get_status($this->process)['running'] && microtime(true) < $deadline) {
            usleep(10_000);
        }
        if (proc_get_status($this->process)['running']) {
            proc_terminate($this->process, 9);
        }
        proc_close($this->process);
        $this->process = null;
    }

    public function ws(): string
    {
        $scheme = isset($this->env['TICKWIRE__TLS__CERT']) ? 'wss' : 'ws';
        return "$scheme://127.0.0.1:{$this->port}/ws";
    }

    public function http(): string
    {
        $scheme = isset($this->env['TICKWIRE__TLS__CERT']) ? 'https' : 'http';
        return "$scheme://127.0.0.1:{$this->port}";
    }

    /** A counter from /metrics (sum over its label sets). */
    public function metric(string $name): float
    {
        $text = (string) file_get_contents($this->http() . '/metrics');
        $sum = 0.0;
        foreach (explode("\n", $text) as $line) {
            if (preg_match('/^' . preg_quote($name, '/') . '(\{[^}]*\})? ([0-9.eE+-]+)$/', $line, $m)) {
                $sum += (float) $m[2];
            }
        }
        return $sum;
    }

    public function __destruct()
    {
        $this->stop();
        @unlink($this->log);
    }
}
