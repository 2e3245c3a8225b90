<?php

declare(strict_types=1);

namespace Tickwire\Tests\Unit;

use PHPUnit\Framework\TestCase;
use Tickwire\Exception\DeltaException;
use Tickwire\Fossil;

final class FossilTest extends TestCase
{
    /**
     * Deltas the server produced (tests/fixtures/fossil-vectors.json, recorded from a running
     * server by tests/fixtures/make-fossil-vectors.php) rebuild their targets byte for byte.
     */
    public function testAppliesDeltasMadeByTheServer(): void
    {
        $vectors = json_decode((string) file_get_contents(__DIR__ . '/../fixtures/fossil-vectors.json'), true, 512, JSON_THROW_ON_ERROR);
        $this->assertGreaterThanOrEqual(8, count($vectors));
        foreach ($vectors as $i => $v) {
            $this->assertSame($v['target'], Fossil::apply($v['source'], $v['delta']), "vector $i ({$v['name']})");
        }
    }

    /** The example of docs/protocol.md §4.1, as the server sent it. */
    public function testTheProtocolDocumentsExample(): void
    {
        $source = '{"title":"Q3 report","status":"draft","rows":[{"region":"north","sales":1200},{"region":"south","sales":950},{"region":"east","sales":1430},{"region":"west","sales":870}]}';
        $target = '{"title":"Q3 report","status":"final","rows":[{"region":"north","sales":1200},{"region":"south","sales":950},{"region":"east","sales":1430},{"region":"west","sales":910}]}';
        $this->assertSame($target, Fossil::apply($source, "2g\nV@0,5:final21@_,6:910}]}20K1Ww;"));
    }

    public function testChecksumIsBigEndianWordsZeroPadded(): void
    {
        $this->assertSame(0, Fossil::checksum(''));
        $this->assertSame(0x61000000, Fossil::checksum('a'));
        $this->assertSame(0x61626364 + 0x65000000, Fossil::checksum('abcde'));
        $this->assertSame((0xFFFFFFFF * 2) & 0xFFFFFFFF, Fossil::checksum("\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF"));
    }

    /** @return iterable<string, array{string, string, string}> */
    public static function broken(): iterable
    {
        $src = 'hello, world';
        // "hello, there": copy 7 from 0, insert "there", checksum.
        $sum = self::b64(Fossil::checksum('hello, there'));
        yield 'valid control' => [$src, "C\n7@0,5:there{$sum};", ''];
        yield 'other source' => ['HELLO, world', "C\n7@0,5:there{$sum};", 'checksum'];
        yield 'no header newline' => [$src, "C7@0,;", 'bad header'];
        yield 'copy outside source' => [$src, "C\n7@9,5:there{$sum};", 'outside the source'];
        yield 'copy without comma' => [$src, "C\n7@05:there{$sum};", "not terminated by ','"];
        yield 'insert past end' => [$src, "C\n7@0,5:th", 'past the end'];
        yield 'too long' => [$src, "C\n7@0,6:theres{$sum};", 'longer than the declared'];
        yield 'too short' => [$src, "C\n7@0,4:ther{$sum};", 'produced 11 bytes'];
        yield 'trailing' => [$src, "C\n7@0,5:there{$sum};x", 'after the checksum'];
        yield 'unterminated' => [$src, "C\n7@0,5:there", 'no terminating'];
        yield 'unknown op' => [$src, "C\n7#0,", 'unknown operator'];
        yield 'no number' => [$src, "C\n@0,", 'no number'];
        yield 'number over 32 bits' => [$src, "C\n~~~~~~~@0,", 'does not fit'];
        yield 'over the cap' => ['1', "100000\n1@0,0;", 'over the cap'];
    }

    /** @dataProvider broken */
    public function testRefusesBrokenDeltas(string $source, string $delta, string $why): void
    {
        if ($why === '') {
            $this->assertSame('hello, there', Fossil::apply($source, $delta));
            return;
        }
        try {
            Fossil::apply($source, $delta, 64 << 20);
            $this->fail('applied');
        } catch (DeltaException $e) {
            $this->assertStringContainsString($why, $e->getMessage());
        }
    }

    private static function b64(int $n): string
    {
        $digits = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~';
        $s = '';
        do {
            $s = $digits[$n & 63] . $s;
            $n >>= 6;
        } while ($n > 0);
        return $s;
    }
}
