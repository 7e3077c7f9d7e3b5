// Whether this browser runs WebAssembly relaxed SIMD: a module of one relaxed instruction
// (i8x16.relaxed_swizzle) validates only where it does. The page's relaxed-SIMD build needs it.
const PROBE = [0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 15, 1, 13, 0, 65, 1, 253, 15, 65, 2, 253, 15, 253, 128, 2, 11];

export function relaxedSimd() {
  return WebAssembly.validate(new Uint8Array(PROBE));
}
