<?php

declare(strict_types=1);

namespace Tickwire\Exception;

/** The network failed: could not connect, TLS failed, the connection broke, a timeout. */
class ConnectionException extends TickwireException
{
}
