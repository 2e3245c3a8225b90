<?php

declare(strict_types=1);

namespace Tickwire\Exception;

/**
 * The peer broke RFC 6455 or the tickwire protocol. `$closeCode` is the WebSocket close code the
 * client closes with (1002 protocol error, 1007 invalid UTF-8, 1009 message too big), or 0 when
 * the connection stays open (an unexpected reply, a frame the client cannot parse).
 */
class ProtocolException extends TickwireException
{
    public function __construct(string $message, public readonly int $closeCode = 1002)
    {
        parent::__construct($message);
    }
}
