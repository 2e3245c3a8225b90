<?php

declare(strict_types=1);

namespace Tickwire;

/**
 * One publication delivered to the application: a `snapshot` (the topic's latest value, after a
 * subscribe or a reset) or an `update`. `$data` is the decoded JSON value (objects as
 * associative arrays), `$json` the data's text byte for byte as published, also when it arrived
 * as a Fossil delta.
 */
final class Update
{
    public const SNAPSHOT = 'snapshot';
    public const UPDATE = 'update';

    public function __construct(
        public readonly string $kind,
        public readonly string $topic,
        public readonly int $seq,
        public readonly int $ts,
        public readonly mixed $data,
        public readonly string $json,
    ) {
    }

    public function isSnapshot(): bool
    {
        return $this->kind === self::SNAPSHOT;
    }
}
