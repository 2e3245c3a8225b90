<?php

declare(strict_types=1);

namespace Tickwire;

/** Where a publication went: its topic and the `seq` the server gave it. */
final class Published
{
    public function __construct(public readonly string $topic, public readonly int $seq)
    {
    }
}
