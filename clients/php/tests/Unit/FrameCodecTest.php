<?php

declare(strict_types=1);

namespace Tickwire\Tests\Unit;

use PHPUnit\Framework\TestCase;
use Tickwire\Exception\ProtocolException;
use Tickwire\WebSocket\Connection;
use Tickwire\WebSocket\Frame;
use Tickwire\WebSocket\FrameCodec;

final class FrameCodecTest extends TestCase
{
    /** Server frames (unmasked) of every length class decode back, fed whole or byte by byte. */
    public function testDecodesEveryLengthEncodingWholeAndInPieces(): void
    {
        foreach ([0, 1, 125, 126, 65535, 65536, 200_000] as $len) {
            $payload = $len === 0 ? "" : random_bytes($len);
            $wire = FrameCodec::encode(Frame::BINARY, $payload);
            $header = $len < 126 ? 2 : ($len < 65536 ? 4 : 10);
            $this->assertSame($header + $len, strlen($wire), "length $len");

            $codec = new FrameCodec();
            $codec->feed($wire . FrameCodec::encode(Frame::PING, 'p'));
            $frame = $codec->next();
            $this->assertSame(Frame::BINARY, $frame->opcode);
            $this->assertSame($payload, $frame->payload);
            $this->assertTrue($frame->fin);
            $this->assertSame('p', $codec->next()->payload);
            $this->assertNull($codec->next());
        }
        $codec = new FrameCodec();
        $wire = FrameCodec::encode(Frame::TEXT, str_repeat('ab', 100), false);
        for ($i = 0; $i < strlen($wire) - 1; $i++) {
            $codec->feed($wire[$i]);
            $this->assertNull($codec->next(), "incomplete after byte $i");
        }
        $codec->feed($wire[strlen($wire) - 1]);
        $frame = $codec->next();
        $this->assertFalse($frame->fin);
        $this->assertSame(str_repeat('ab', 100), $frame->payload);
        $this->assertSame(0, $codec->buffered());
    }

    /** A client frame carries the mask bit and key, and the payload XORed with the key (RFC 6455 §5.3). */
    public function testMasksClientFrames(): void
    {
        $key = "\x37\xfa\x21\x3d";
        // RFC 6455 §5.7: a masked "Hello".
        $this->assertSame("\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", FrameCodec::encode(Frame::TEXT, 'Hello', true, $key));
        $payload = random_bytes(70_001);
        $wire = FrameCodec::encode(Frame::BINARY, $payload, true, $key);
        $this->assertSame(0x80 | 127, ord($wire[1]));
        $this->assertSame($key, substr($wire, 10, 4));
        $this->assertSame($payload, FrameCodec::mask(substr($wire, 14), $key));
    }

    /** @return iterable<string, array{string, int, string}> */
    public static function badFrames(): iterable
    {
        yield 'reserved opcode' => ["\x83\x00", 1002, 'reserved opcode'];
        yield 'reserved control opcode' => ["\x8B\x00", 1002, 'reserved opcode'];
        yield 'rsv2' => ["\xA1\x00", 1002, 'reserved bits'];
        yield 'rsv1 without extension' => ["\xC1\x00", 1002, 'reserved bits'];
        yield 'masked server frame' => ["\x81\x81abcdx", 1002, 'masked'];
        yield 'fragmented ping' => ["\x09\x00", 1002, 'fragmented control'];
        yield 'long ping' => ["\x89\x7E\x00\x7E" . str_repeat('x', 126), 1002, 'over 125'];
        yield '64-bit length with top bit' => ["\x82\x7F\x80\x00\x00\x00\x00\x00\x00\x01", 1002, 'most significant'];
        yield 'over the size cap' => ["\x82\x7F\x00\x00\x00\x00\x00\x10\x00\x01", 1009, 'over the limit'];
    }

    /** @dataProvider badFrames */
    public function testRefusesWhatTheRfcForbids(string $wire, int $code, string $why): void
    {
        $codec = new FrameCodec(1 << 20);
        $codec->feed($wire);
        try {
            $codec->next();
            $this->fail('accepted');
        } catch (ProtocolException $e) {
            $this->assertSame($code, $e->closeCode);
            $this->assertStringContainsString($why, $e->getMessage());
        }
    }

    public function testRsv1IsAcceptedOnlyOnceNegotiated(): void
    {
        $codec = new FrameCodec(1 << 20, true);
        $codec->feed("\xC1\x02ab");
        $this->assertTrue($codec->next()->rsv1);
    }

    /** A fragment that cannot begin valid UTF-8 is caught at once; a character split across fragments is fine. */
    public function testUtf8PrefixCheckOfFragments(): void
    {
        $tail = null;
        $this->assertTrue(Connection::utf8Prefix("ab\xCE", $tail));
        $this->assertSame("\xCE", $tail);
        $this->assertTrue(Connection::utf8Prefix($tail . "\xBAx", $tail));
        $this->assertSame('', $tail);
        $this->assertTrue(Connection::utf8Prefix("\xF0", $tail), 'F0 can start U+10000');
        $this->assertTrue(Connection::utf8Prefix("\xE0", $tail), 'E0 can start U+0800');
        $this->assertTrue(Connection::utf8Prefix("\xF4\x8F", $tail));
        $this->assertFalse(Connection::utf8Prefix("\xF4\x90", $tail), 'over U+10FFFF whatever follows');
        $this->assertFalse(Connection::utf8Prefix("\xED\xA0", $tail), 'a surrogate');
        $this->assertFalse(Connection::utf8Prefix("\xC0", $tail), 'overlong');
        $this->assertFalse(Connection::utf8Prefix("a\x80b", $tail), 'a stray continuation byte');
        $this->assertFalse(Connection::utf8Prefix("\xF5", $tail));
    }
}
