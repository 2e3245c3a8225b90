<?php

declare(strict_types=1);

namespace Tickwire;

/**
 * The result of a request that completes later (subscribe, unsubscribe, publish, auth): settled
 * once, with a value or a `\Throwable`. Callbacks given to {@see then()} run when it settles, or
 * at once if it has; no chaining, no promise library.
 */
final class Deferred
{
    private bool $settled = false;
    private bool $failed = false;
    private mixed $value = null;
    /** @var list<array{0: ?callable, 1: ?callable}> */
    private array $callbacks = [];

    public function then(?callable $onValue, ?callable $onError = null): self
    {
        if (!$this->settled) {
            $this->callbacks[] = [$onValue, $onError];
        } elseif ($this->failed) {
            $onError !== null && $onError($this->value);
        } else {
            $onValue !== null && $onValue($this->value);
        }
        return $this;
    }

    public function resolve(mixed $value = null): void
    {
        $this->settle(false, $value);
    }

    public function reject(\Throwable $error): void
    {
        $this->settle(true, $error);
    }

    public function isSettled(): bool
    {
        return $this->settled;
    }

    public function isRejected(): bool
    {
        return $this->settled && $this->failed;
    }

    /** The value, or throws the error; only once settled. */
    public function result(): mixed
    {
        if (!$this->settled) {
            throw new \LogicException('the request has not completed yet');
        }
        if ($this->failed) {
            throw $this->value;
        }
        return $this->value;
    }

    private function settle(bool $failed, mixed $value): void
    {
        if ($this->settled) {
            return;
        }
        $this->settled = true;
        $this->failed = $failed;
        $this->value = $value;
        $callbacks = $this->callbacks;
        $this->callbacks = [];
        foreach ($callbacks as [$onValue, $onError]) {
            $f = $failed ? $onError : $onValue;
            $f !== null && $f($value);
        }
    }
}
