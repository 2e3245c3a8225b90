<?php

declare(strict_types=1);

namespace Tickwire\Exception;

/** The request could not complete: the client was closed, or the connection dropped meanwhile. */
class ClosedException extends TickwireException
{
}
