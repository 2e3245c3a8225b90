<?php

declare(strict_types=1);

namespace Tickwire\Exception;

/** The base of every exception the client throws or hands to `onError`. */
class TickwireException extends \RuntimeException
{
}
