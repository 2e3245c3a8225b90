<?php

declare(strict_types=1);

namespace Tickwire;

use Tickwire\Exception\DeltaException;

/**
 * Applies Fossil deltas (docs/protocol.md §4.1, `"delta":"fossil"` subscriptions), as strictly
 * as the server's own decoder (proto/src/fossil): every number has a digit and fits 32 bits, a
 * copy ends with `,` and stays inside the source, the output reaches exactly the declared
 * length, the checksum always matches, nothing follows the `;`. A delta applied to other data
 * than it was made from fails its checksum instead of producing a wrong document.
 */
final class Fossil
{
    private const DIGITS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~';

    /**
     * @param string $source   the previous data, as bytes
     * @param string $delta    the delta, as bytes (UTF-8: its counts are byte counts)
     * @param int    $maxBytes the largest result accepted: the header's length is checked first
     */
    public static function apply(string $source, string $delta, int $maxBytes = 64 << 20): string
    {
        $pos = 0;
        $end = strlen($delta);
        $declared = self::number($delta, $pos);
        if ($pos >= $end || $delta[$pos] !== "\n") {
            throw new DeltaException('fossil delta: bad header');
        }
        $pos++;
        if ($declared > $maxBytes) {
            throw new DeltaException("fossil delta: declared length $declared is over the cap of $maxBytes bytes");
        }
        $out = '';
        $outLen = 0;
        $sourceLen = strlen($source);
        while (true) {
            if ($pos >= $end) {
                throw new DeltaException('fossil delta: no terminating checksum');
            }
            $count = self::number($delta, $pos);
            if ($pos >= $end) {
                throw new DeltaException('fossil delta: no terminating checksum');
            }
            $op = $delta[$pos++];
            if ($op === '@') {
                $offset = self::number($delta, $pos);
                if ($pos >= $end || $delta[$pos] !== ',') {
                    throw new DeltaException("fossil delta: copy not terminated by ',' at byte $pos");
                }
                $pos++;
                if ($count > $declared - $outLen) {
                    throw new DeltaException("fossil delta: output longer than the declared $declared bytes");
                }
                if ($offset + $count > $sourceLen) {
                    throw new DeltaException("fossil delta: copy of $count bytes at $offset is outside the source ($sourceLen bytes)");
                }
                $out .= substr($source, $offset, $count);
                $outLen += $count;
            } elseif ($op === ':') {
                if ($count > $declared - $outLen) {
                    throw new DeltaException("fossil delta: output longer than the declared $declared bytes");
                }
                if ($pos + $count > $end) {
                    throw new DeltaException("fossil delta: insert of $count bytes at byte $pos runs past the end");
                }
                $out .= substr($delta, $pos, $count);
                $outLen += $count;
                $pos += $count;
            } elseif ($op === ';') {
                if ($outLen !== $declared) {
                    throw new DeltaException("fossil delta: produced $outLen bytes, declared $declared");
                }
                $actual = self::checksum($out);
                if ($actual !== $count) {
                    throw new DeltaException("fossil delta: checksum mismatch (expected $count, got $actual)");
                }
                if ($pos !== $end) {
                    throw new DeltaException('fossil delta: ' . ($end - $pos) . ' bytes after the checksum');
                }
                return $out;
            } else {
                throw new DeltaException(sprintf("fossil delta: unknown operator '%s' at byte %d", $op, $pos - 1));
            }
        }
    }

    /** The sum of the data read as big-endian 32-bit words (the last one zero-padded), mod 2^32. */
    public static function checksum(string $data): int
    {
        $pad = (4 - strlen($data) % 4) % 4;
        $sum = 0;
        // Chunks keep unpack's array small for large documents.
        $padded = $data . str_repeat("\0", $pad);
        $len = strlen($padded);
        for ($at = 0; $at < $len; $at += 65536) {
            foreach (unpack('N*', substr($padded, $at, 65536)) as $word) {
                $sum += $word;
            }
            $sum &= 0xFFFFFFFF;
        }
        return $sum;
    }

    private static function number(string $delta, int &$pos): int
    {
        $start = $pos;
        $value = 0;
        $end = strlen($delta);
        while ($pos < $end) {
            $digit = strpos(self::DIGITS, $delta[$pos]);
            if ($digit === false) {
                break;
            }
            $value = $value * 64 + $digit;
            if ($value > 0xFFFFFFFF) {
                throw new DeltaException("fossil delta: number at byte $start does not fit 32 bits");
            }
            $pos++;
        }
        if ($pos === $start) {
            throw new DeltaException("fossil delta: no number at byte $start");
        }
        return $value;
    }
}
