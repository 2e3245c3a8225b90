<?php

declare(strict_types=1);

namespace Tickwire\WebSocket;

use Tickwire\Exception\ProtocolException;

/**
 * The frame codec (RFC 6455 §5): encodes masked client frames and decodes the server's frames
 * from a byte stream, checking what the RFC requires of each frame on its own (reserved bits and
 * opcodes, control frame rules, no mask from a server, a 64-bit length's top bit) and the size cap. What
 * spans frames (fragment sequences, UTF-8, close codes) is {@see Connection}'s.
 *
 * Input is appended to one buffer read from an offset; the consumed prefix is cut off once per
 * {@see feed()}, and only when something was consumed, so a 16 MiB frame arriving in 64 KiB
 * reads costs linear time.
 */
final class FrameCodec
{
    private string $buffer = '';
    private int $offset = 0;

    /**
     * @param int  $maxPayload the largest frame payload accepted (larger: 1009 at the header)
     * @param bool $allowRsv1  true when permessage-deflate was negotiated
     */
    public function __construct(private int $maxPayload = 16 << 20, private bool $allowRsv1 = false)
    {
    }

    public function allowRsv1(bool $allow): void
    {
        $this->allowRsv1 = $allow;
    }

    /** Encodes one frame; `$mask` is the 4-byte key (a client must mask every frame). */
    public static function encode(int $opcode, string $payload, bool $fin = true, ?string $mask = null, bool $rsv1 = false): string
    {
        $len = strlen($payload);
        $head = chr(($fin ? 0x80 : 0) | ($rsv1 ? 0x40 : 0) | $opcode);
        $maskBit = $mask === null ? 0 : 0x80;
        if ($len < 126) {
            $head .= chr($maskBit | $len);
        } elseif ($len < 65536) {
            $head .= chr($maskBit | 126) . pack('n', $len);
        } else {
            $head .= chr($maskBit | 127) . pack('J', $len);
        }
        if ($mask === null) {
            return $head . $payload;
        }
        return $head . $mask . self::mask($payload, $mask);
    }

    /** XORs `$payload` with the repeated 4-byte key: PHP's string XOR does it in C. */
    public static function mask(string $payload, string $key): string
    {
        $len = strlen($payload);
        if ($len === 0) {
            return '';
        }
        return $payload ^ substr(str_repeat($key, ($len >> 2) + 1), 0, $len);
    }

    public function feed(string $bytes): void
    {
        if ($this->offset > 0) {
            $this->buffer = substr($this->buffer, $this->offset);
            $this->offset = 0;
        }
        $this->buffer .= $bytes;
    }

    /** The next complete frame, or null until more bytes arrive. */
    public function next(): ?Frame
    {
        $available = strlen($this->buffer) - $this->offset;
        if ($available < 2) {
            return null;
        }
        $b0 = ord($this->buffer[$this->offset]);
        $b1 = ord($this->buffer[$this->offset + 1]);
        $fin = ($b0 & 0x80) !== 0;
        $rsv1 = ($b0 & 0x40) !== 0;
        $opcode = $b0 & 0x0F;
        if (($b0 & 0x30) !== 0 || ($rsv1 && !$this->allowRsv1)) {
            throw new ProtocolException('reserved bits set without a negotiated extension');
        }
        if (($opcode > 0x2 && $opcode < 0x8) || $opcode > 0xA) {
            throw new ProtocolException(sprintf('reserved opcode 0x%X', $opcode));
        }
        if (($b1 & 0x80) !== 0) {
            throw new ProtocolException('masked frame from the server');
        }
        $len = $b1 & 0x7F;
        $head = 2;
        if ($opcode >= 0x8) {
            if (!$fin) {
                throw new ProtocolException('fragmented control frame');
            }
            if ($len > 125) {
                throw new ProtocolException('control frame payload over 125 bytes');
            }
            if ($rsv1) {
                throw new ProtocolException('compressed control frame');
            }
        }
        if ($len === 126) {
            if ($available < 4) {
                return null;
            }
            $len = unpack('n', $this->buffer, $this->offset + 2)[1];
            $head = 4;
        } elseif ($len === 127) {
            if ($available < 10) {
                return null;
            }
            $hi = unpack('N', $this->buffer, $this->offset + 2)[1];
            $lo = unpack('N', $this->buffer, $this->offset + 6)[1];
            if ($hi & 0x80000000) {
                throw new ProtocolException('frame length with the most significant bit set');
            }
            $len = ($hi << 32) | $lo;
            $head = 10;
        }
        if ($len > $this->maxPayload) {
            throw new ProtocolException("frame of $len bytes, over the limit of {$this->maxPayload}", 1009);
        }
        if ($available < $head + $len) {
            return null;
        }
        $payload = $len === 0 ? '' : substr($this->buffer, $this->offset + $head, $len);
        $this->offset += $head + $len;
        return new Frame($opcode, $payload, $fin, $rsv1);
    }

    /** Bytes received but not yet returned as frames. */
    public function buffered(): int
    {
        return strlen($this->buffer) - $this->offset;
    }
}
