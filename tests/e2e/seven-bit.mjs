// The int8 bundle that the page's relaxed-SIMD build computes with: its relaxed dot product takes
// 7-bit weights, so it halves each int8 weight (ties to even, within -63..=63) and doubles its scale
// (crates/kernels/src/int8.rs). `sevenBitCopy(bundle)` writes that bundle to a temporary folder, so
// that `vitrine predict` on it is the native reference of the relaxed build on `bundle`.
//
//   node tests/e2e/seven-bit.mjs IN OUT      (the same as a command)
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const FILES = ['config.json', 'preprocessor_config.json'];

export function sevenBitCopy(bundle, out = mkdtempSync(join(tmpdir(), 'vitrine-seven-bit-'))) {
  mkdirSync(out, { recursive: true });
  for (const file of FILES) if (existsSync(join(bundle, file))) copyFileSync(join(bundle, file), join(out, file));
  const bytes = readFileSync(join(bundle, 'model.safetensors'));
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'));
  const data = 8 + headerLength;
  for (const [name, tensor] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [start, end] = tensor.data_offsets.map((offset) => data + offset);
    if (tensor.dtype === 'I8') {
      for (let i = start; i < end; i++) bytes.writeInt8(sevenBits(bytes.readInt8(i)), i);
    } else if (tensor.dtype === 'F32' && name.endsWith('_scale') && header[name.slice(0, -'_scale'.length)]?.dtype === 'I8') {
      for (let i = start; i < end; i += 4) bytes.writeFloatLE(bytes.readFloatLE(i) * 2, i);
    }
  }
  writeFileSync(join(out, 'model.safetensors'), bytes);
  return out;
}

// `round_ties_even(w / 2)` within -63..=63, as int8.rs's `seven_bits`.
function sevenBits(w) {
  const half = w / 2;
  let rounded = Math.round(half);
  if (Math.abs(half % 1) === 0.5 && rounded % 2 !== 0) rounded -= 1;
  return Math.min(63, Math.max(-63, rounded));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [input, output] = process.argv.slice(2);
  if (!input || !output) {
    console.error('usage: node tests/e2e/seven-bit.mjs IN OUT');
    process.exit(2);
  }
  console.log(sevenBitCopy(input, output));
}
