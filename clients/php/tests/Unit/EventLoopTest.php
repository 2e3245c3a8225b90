<?php

declare(strict_types=1);

namespace Tickwire\Tests\Unit;

use PHPUnit\Framework\TestCase;
use Tickwire\EventLoop;

final class EventLoopTest extends TestCase
{
    public function testTimersFireInOrderAndCancelledOnesNever(): void
    {
        $loop = new EventLoop();
        $fired = [];
        $loop->addTimer(0.03, function () use (&$fired) { $fired[] = 'c'; });
        $loop->addTimer(0.01, function () use (&$fired) { $fired[] = 'a'; });
        $cancelled = $loop->addTimer(0.02, function () use (&$fired) { $fired[] = 'x'; });
        $loop->addTimer(0.02, function () use (&$fired) { $fired[] = 'b'; });
        $loop->cancel($cancelled);
        $start = hrtime(true);
        $loop->run(); // returns once no timer is left
        $this->assertSame(['a', 'b', 'c'], $fired);
        $this->assertGreaterThanOrEqual(0.03, (hrtime(true) - $start) / 1e9);
    }

    public function testPeriodicTimerRunsUntilCancelledFromItsOwnCallback(): void
    {
        $loop = new EventLoop();
        $n = 0;
        $id = 0;
        $id = $loop->addPeriodicTimer(0.005, function () use (&$n, &$id, $loop) {
            if (++$n === 3) {
                $loop->cancel($id);
            }
        });
        $loop->run();
        $this->assertSame(3, $n);
    }

    public function testStreamWatchersAndStop(): void
    {
        $loop = new EventLoop();
        [$a, $b] = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);
        stream_set_blocking($b, false);
        $got = '';
        $loop->addWriteStream($a, function ($s) use ($loop) {
            fwrite($s, 'ping');
            $loop->removeWriteStream($s);
        });
        $loop->addReadStream($b, function ($s) use (&$got, $loop) {
            $got .= fread($s, 100);
            if ($got === 'ping') {
                $loop->stop();
            }
        });
        $loop->addTimer(5, fn () => $loop->stop()); // bound
        $loop->run();
        $this->assertSame('ping', $got);
        // stop() ended run() with the watcher still registered: run() can resume later.
        fwrite($a, '!');
        $loop->addTimer(0.01, fn () => null);
        $loop->addTimer(0.2, fn () => $loop->stop());
        $loop->run();
        $this->assertSame('ping!', $got);
    }
}
