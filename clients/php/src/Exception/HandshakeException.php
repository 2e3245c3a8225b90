<?php

declare(strict_types=1);

namespace Tickwire\Exception;

/**
 * The server answered the WebSocket upgrade with something other than `101`: `$status` is the
 * HTTP status and `$errorCode` the `code` of its JSON error body when it had one (`unauthorized`
 * for a refused token, `forbidden`, `too_many_connections`, `unavailable`).
 */
class HandshakeException extends ConnectionException
{
    public function __construct(
        string $message,
        public readonly int $status = 0,
        public readonly ?string $errorCode = null,
    ) {
        parent::__construct($message);
    }

    /** 401 and 403 do not change by trying again with the same credentials. */
    public function isAuthFailure(): bool
    {
        return $this->status === 401 || $this->status === 403;
    }
}
