<?php

declare(strict_types=1);

namespace Tickwire;

/**
 * A small event loop over `stream_select`: stream watchers and timers, nothing else.
 *
 * Timers are kept in an array keyed by id and the earliest is found by a scan: a client has
 * a handful (ping, reconnect, token refresh, request deadlines), for which a heap's
 * bookkeeping costs more than it saves. Callbacks run in order of readiness; a callback may
 * add or remove watchers and timers, including its own.
 */
final class EventLoop implements LoopInterface
{
    /** @var array<int, array{0: resource, 1: callable}> */
    private array $readers = [];
    /** @var array<int, array{0: resource, 1: callable}> */
    private array $writers = [];
    /** @var array<int, array{due: float, every: ?float, callback: callable}> */
    private array $timers = [];
    private int $nextTimer = 1;
    private bool $running = false;

    public function addReadStream($stream, callable $listener): void
    {
        $this->readers[(int) $stream] = [$stream, $listener];
    }

    public function removeReadStream($stream): void
    {
        unset($this->readers[(int) $stream]);
    }

    public function addWriteStream($stream, callable $listener): void
    {
        $this->writers[(int) $stream] = [$stream, $listener];
    }

    public function removeWriteStream($stream): void
    {
        unset($this->writers[(int) $stream]);
    }

    public function addTimer(float $seconds, callable $callback): int
    {
        $id = $this->nextTimer++;
        $this->timers[$id] = ['due' => self::now() + max(0.0, $seconds), 'every' => null, 'callback' => $callback];
        return $id;
    }

    public function addPeriodicTimer(float $seconds, callable $callback): int
    {
        $every = max(0.001, $seconds);
        $id = $this->nextTimer++;
        $this->timers[$id] = ['due' => self::now() + $every, 'every' => $every, 'callback' => $callback];
        return $id;
    }

    public function cancel(int $timer): void
    {
        unset($this->timers[$timer]);
    }

    public function run(): void
    {
        $this->running = true;
        while ($this->running && ($this->readers || $this->writers || $this->timers)) {
            $this->tick();
        }
        $this->running = false;
    }

    public function stop(): void
    {
        $this->running = false;
    }

    /** One round: wait for the first stream or timer, then run what is ready. */
    private function tick(): void
    {
        $now = self::now();
        $wait = null;
        foreach ($this->timers as $timer) {
            $left = $timer['due'] - $now;
            if ($wait === null || $left < $wait) {
                $wait = $left;
            }
        }
        $wait = $wait === null ? null : max(0.0, $wait);

        if ($this->readers || $this->writers) {
            $read = array_column($this->readers, 0);
            $write = array_column($this->writers, 0);
            $except = null;
            $sec = $wait === null ? null : (int) $wait;
            $usec = $wait === null ? null : (int) (($wait - (int) $wait) * 1e6);
            // A signal interrupts the wait (false); the next round simply waits again.
            $ready = @stream_select($read, $write, $except, $sec, $usec);
            if ($ready > 0) {
                foreach ($read as $stream) {
                    $watch = $this->readers[(int) $stream] ?? null;
                    if ($watch !== null) {
                        ($watch[1])($stream);
                    }
                }
                foreach ($write as $stream) {
                    $watch = $this->writers[(int) $stream] ?? null;
                    if ($watch !== null) {
                        ($watch[1])($stream);
                    }
                }
            }
        } elseif ($wait !== null && $wait > 0) {
            usleep((int) ($wait * 1e6));
        }

        $now = self::now();
        foreach ($this->timers as $id => $timer) {
            if ($timer['due'] > $now || !isset($this->timers[$id])) {
                continue;
            }
            if ($timer['every'] === null) {
                unset($this->timers[$id]);
            } else {
                // Late ticks are not made up for: the next one is a full period after this one.
                $this->timers[$id]['due'] = $now + $timer['every'];
            }
            ($timer['callback'])();
        }
    }

    private static function now(): float
    {
        return hrtime(true) / 1e9;
    }
}
