<?php

declare(strict_types=1);

namespace Tickwire\Tests\Support;

use Tickwire\LoopInterface;

/** Running a loop until a condition holds, bounded in time. */
final class Loop
{
    /** Runs `$loop` until `$done()` is true; false when `$timeout` passed first. */
    public static function until(LoopInterface $loop, callable $done, float $timeout = 10.0): bool
    {
        if ($done()) {
            return true;
        }
        $check = $loop->addPeriodicTimer(0.002, function () use ($loop, $done): void {
            if ($done()) {
                $loop->stop();
            }
        });
        $limit = $loop->addTimer($timeout, fn () => $loop->stop());
        $loop->run();
        $loop->cancel($check);
        $loop->cancel($limit);
        return (bool) $done();
    }

    /** Runs `$loop` for `$seconds`. */
    public static function for(LoopInterface $loop, float $seconds): void
    {
        $timer = $loop->addTimer($seconds, fn () => $loop->stop());
        $loop->run();
        $loop->cancel($timer);
    }
}
