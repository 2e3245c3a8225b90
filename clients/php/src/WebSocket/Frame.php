<?php

declare(strict_types=1);

namespace Tickwire\WebSocket;

/** One WebSocket frame (RFC 6455 §5.2), unmasked. */
final class Frame
{
    public const CONTINUATION = 0x0;
    public const TEXT = 0x1;
    public const BINARY = 0x2;
    public const CLOSE = 0x8;
    public const PING = 0x9;
    public const PONG = 0xA;

    public function __construct(
        public readonly int $opcode,
        public readonly string $payload,
        public readonly bool $fin = true,
        public readonly bool $rsv1 = false,
    ) {
    }

    public function isControl(): bool
    {
        return $this->opcode >= 0x8;
    }
}
