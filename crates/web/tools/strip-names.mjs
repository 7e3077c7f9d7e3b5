// Removes the custom sections that only debuggers read ("name", "producers") from a .wasm file,
// in place. About a third of the gzip size of an unoptimised release build, and no effect on what runs.
// Usage: node strip-names.mjs FILE.wasm
import { readFileSync, writeFileSync } from 'node:fs';

const DROP = new Set(['name', 'producers']);
const file = process.argv[2];
const bytes = readFileSync(file);
if (bytes.readUInt32LE(0) !== 0x6d736100) throw new Error(`${file} is not a WebAssembly module`);

function leb(offset) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const byte = bytes[offset++];
    value += (byte & 0x7f) * 2 ** shift;
    shift += 7;
    if (byte < 0x80) return [value, offset];
  }
}

const kept = [bytes.subarray(0, 8)];
let offset = 8;
let dropped = 0;
while (offset < bytes.length) {
  const start = offset;
  const id = bytes[offset];
  const [size, body] = leb(offset + 1);
  const end = body + size;
  let drop = false;
  if (id === 0) {
    const [length, nameStart] = leb(body);
    drop = DROP.has(bytes.subarray(nameStart, nameStart + length).toString('utf8'));
  }
  if (drop) dropped += end - start;
  else kept.push(bytes.subarray(start, end));
  offset = end;
}
writeFileSync(file, Buffer.concat(kept));
console.error(`strip-names: removed ${(dropped / 1e6).toFixed(2)} MB of debug sections from ${file}`);
