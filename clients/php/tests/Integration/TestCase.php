<?php

declare(strict_types=1);

namespace Tickwire\Tests\Integration;

use Tickwire\Client;
use Tickwire\EventLoop;
use Tickwire\Tests\Support\Loop;
use Tickwire\Update;

/**
 * A client against a real server, recording everything it is told: `$this->events` in order,
 * as `['open']`, `['message', Update]`, `['reset', topic]`, `['close', code, reason]`,
 * `['error', Throwable]`.
 */
abstract class TestCase extends \PHPUnit\Framework\TestCase
{
    protected EventLoop $loop;
    /** @var list<array> */
    protected array $events = [];

    protected function setUp(): void
    {
        $this->loop = new EventLoop();
        $this->events = [];
    }

    protected function client(string $url, array $options = []): Client
    {
        $client = new Client($url, $options + ['backoff_initial' => 0.05, 'backoff_max' => 0.5], $this->loop);
        $client->onOpen(function () { $this->events[] = ['open']; })
            ->onMessage(function (Update $u) { $this->events[] = ['message', $u]; })
            ->onReset(function (string $t) { $this->events[] = ['reset', $t]; })
            ->onClose(function (int $c, string $r) { $this->events[] = ['close', $c, $r]; })
            ->onError(function (\Throwable $e) { $this->events[] = ['error', $e]; });
        return $client;
    }

    protected function until(callable $done, float $timeout = 10.0, string $what = 'condition'): void
    {
        $this->assertTrue(Loop::until($this->loop, $done, $timeout), "timed out waiting for: $what\n" . $this->describe());
    }

    /** Waits for a Deferred and returns its value (or throws its error). */
    protected function await(\Tickwire\Deferred $d, float $timeout = 10.0): mixed
    {
        $this->until(fn () => $d->isSettled(), $timeout, 'a reply');
        return $d->result();
    }

    /** @return list<Update> */
    protected function messages(?string $topic = null): array
    {
        $out = [];
        foreach ($this->events as $e) {
            if ($e[0] === 'message' && ($topic === null || $e[1]->topic === $topic)) {
                $out[] = $e[1];
            }
        }
        return $out;
    }

    /** @return list<array> */
    protected function eventsOf(string $kind): array
    {
        return array_values(array_filter($this->events, fn (array $e) => $e[0] === $kind));
    }

    protected function describe(): string
    {
        $lines = [];
        foreach (array_slice($this->events, -30) as $e) {
            $lines[] = match ($e[0]) {
                'message' => "message {$e[1]->kind} {$e[1]->topic} #{$e[1]->seq} {$e[1]->json}",
                'error' => 'error ' . get_class($e[1]) . ': ' . $e[1]->getMessage(),
                default => implode(' ', array_map('strval', $e)),
            };
        }
        return implode("\n", $lines);
    }
}
