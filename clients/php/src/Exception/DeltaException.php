<?php

declare(strict_types=1);

namespace Tickwire\Exception;

/** A Fossil delta could not be applied: malformed, applied to other data, or over the size cap. */
class DeltaException extends TickwireException
{
}
