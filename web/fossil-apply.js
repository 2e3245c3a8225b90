// fossil-apply.js: applies a Fossil delta, the `delta` of an update on a `"delta":"fossil"`
// subscription, to the previous update's data. The browser's copy of `apply` in
// proto/src/fossil.rs (its header describes the format), with the same checks, so that a
// damaged delta or a wrong base is an Error, never a wrong document.
//
// Both strings are JSON text; the delta counts UTF-8 bytes, hence the TextEncoder. The server
// keeps inserts on character boundaries, so the delta arrives as a plain JSON string.

const DIGITS = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~';
const VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < DIGITS.length; i++) VALUE[DIGITS.charCodeAt(i)] = i;

/**
 * The target of `deltaString` applied to `baseString`.
 * @param {string} baseString  the previous data, as received (JSON text)
 * @param {string} deltaString the update's `delta`
 * @param {number} [maxLen=67108864] largest target accepted, in UTF-8 bytes
 * @returns {string}
 * @throws {Error} on any fault in the delta, or a delta meant for another base
 */
export function fossilApply(baseString, deltaString, maxLen = 64 * 1024 * 1024) {
  const enc = new TextEncoder();
  const base = enc.encode(baseString);
  const delta = enc.encode(deltaString);
  let pos = 0;
  const fail = (why) => {
    throw new Error(`fossil delta: ${why} (byte ${pos})`);
  };
  const number = () => {
    const start = pos;
    let v = 0;
    while (pos < delta.length && delta[pos] < 128 && VALUE[delta[pos]] >= 0) {
      v = v * 64 + VALUE[delta[pos++]];
      if (v > 0xffffffff) fail('number over 32 bits');
    }
    if (pos === start) fail('number expected');
    return v;
  };
  const declared = number();
  if (delta[pos++] !== 0x0a) fail('header not ended by a newline');
  if (declared > maxLen) fail(`declares ${declared} bytes, over ${maxLen}`);
  // Slices, joined at the end: nothing is allocated on the strength of the header alone.
  const parts = [];
  let produced = 0;
  while (pos < delta.length) {
    const count = number();
    const op = delta[pos++];
    if (op === 0x3b) { // ';'
      if (produced !== declared) fail(`produces ${produced} bytes, declares ${declared}`);
      const out = new Uint8Array(produced);
      let at = 0;
      for (const p of parts) { out.set(p, at); at += p.length; }
      if (checksum(out) !== count) fail('checksum mismatch: a damaged delta or another base');
      if (pos !== delta.length) fail('data after the checksum');
      try {
        return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(out);
      } catch {
        fail('target is not UTF-8');
      }
    }
    if (op !== 0x40 && op !== 0x3a) fail('unknown operator');
    if (count > declared - produced) fail('output longer than declared');
    if (op === 0x40) { // '@': copy from the base
      const offset = number();
      if (delta[pos++] !== 0x2c) fail("copy not ended by ','");
      if (offset + count > base.length) fail('copy outside the base');
      parts.push(base.subarray(offset, offset + count));
    } else { // ':': insert from the delta
      if (count > delta.length - pos) fail('insert past the end of the delta');
      parts.push(delta.subarray(pos, pos + count));
      pos += count;
    }
    produced += count;
  }
  fail('ends before its checksum');
}

// The sum of the bytes read as big-endian 32-bit words, the last padded with zeros, mod 2^32.
function checksum(b) {
  let sum = 0;
  const whole = b.length & ~3;
  for (let i = 0; i < whole; i += 4) {
    sum = (sum + ((b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3])) >>> 0;
  }
  let last = 0;
  for (let i = whole; i < b.length; i++) last |= b[i] << (24 - 8 * (i - whole));
  return (sum + last) >>> 0;
}
