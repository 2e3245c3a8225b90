<?php

declare(strict_types=1);

namespace Tickwire;

/**
 * The event loop the client runs on: the seam that lets an application bring its own loop.
 *
 * {@see EventLoop} is the bundled implementation. The method names and callback shapes are
 * those of ReactPHP's `React\EventLoop\LoopInterface`, except that timers are plain integer
 * ids, so an adapter over a ReactPHP loop is a dozen lines (docs/client-php.md shows one).
 * Every callback runs on the loop; none may block.
 */
interface LoopInterface
{
    /** Calls `$listener($stream)` whenever `$stream` is readable, until removed. */
    public function addReadStream($stream, callable $listener): void;

    public function removeReadStream($stream): void;

    /** Calls `$listener($stream)` whenever `$stream` is writable, until removed. */
    public function addWriteStream($stream, callable $listener): void;

    public function removeWriteStream($stream): void;

    /** Calls `$callback()` once after `$seconds`; returns the timer's id. */
    public function addTimer(float $seconds, callable $callback): int;

    /** Calls `$callback()` every `$seconds` until cancelled; returns the timer's id. */
    public function addPeriodicTimer(float $seconds, callable $callback): int;

    /** Cancels a timer; an unknown or fired one-shot timer is ignored. */
    public function cancel(int $timer): void;

    /** Runs until {@see stop()} or until nothing is left to wait for. */
    public function run(): void;

    public function stop(): void;
}
