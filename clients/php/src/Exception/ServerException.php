<?php

declare(strict_types=1);

namespace Tickwire\Exception;

/**
 * The server refused a request: `$errorCode` is its error code (`forbidden`, `invalid_topic`,
 * `unauthorized`, `rate_limited`, `unavailable`, ... docs/protocol.md §6 and §10.5), `$status` the
 * HTTP status for the HTTP API (0 over WebSocket). Match on `$errorCode`, not on the message.
 */
class ServerException extends TickwireException
{
    public function __construct(
        public readonly string $errorCode,
        string $message,
        public readonly int $status = 0,
    ) {
        parent::__construct($errorCode . ': ' . $message);
    }

    /** The request was not carried out and the same request may succeed later. */
    public function isTransient(): bool
    {
        return in_array($this->errorCode, ['unavailable', 'rate_limited', 'too_many_topics'], true)
            || $this->status === 503;
    }
}
