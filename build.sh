#!/usr/bin/env bash
# Builds the browser app into dist/ (a folder that a Hugging Face static Space serves as it is).
#
#   ./build.sh            build the three wasm builds (release) and lay out the site in dist/
#   ./build.sh serve      the same, then serve dist/ on http://127.0.0.1:8080 (PORT=... to change),
#                         cross-origin isolated as the Space is (wasm threads)
#   ./build.sh tools      only install the build tools (wasm32 target, wasm-pack, wasm-bindgen-cli)
#   ./build.sh site       only lay out dist/ again from www/ (the wasm in dist/www/pkg is kept)
#
# Tools are installed with `cargo install` when missing: wasm-pack, and wasm-bindgen-cli at exactly
# the wasm-bindgen version of Cargo.lock (wasm-pack is told never to download its own); rust-src and
# the wasm32 target with rustup.
# The wasm's debug sections are always stripped (25 MB, 4.1 MB gzipped). wasm-opt runs only with
# VITRINE_WASM_OPT=1 and a current binaryen from npm (`npm install binaryen`): binaryen 132's -O2 took
# 7 minutes here for 19.6 MB raw but 4.2 MB gzipped, no gain where it counts (docs/browser.md).
# Debian's binaryen 108 corrupts this module (externref tables), so it is never used.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
DIST=$ROOT/dist
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vitrine/target}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

wasm_bindgen_version() {
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock"
}

ensure_tools() {
  rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
  # The threaded build compiles the standard library itself (-Z build-std).
  rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
  if ! command -v wasm-pack >/dev/null; then
    log "installing wasm-pack"
    cargo install wasm-pack --locked
  fi
  local want have
  want=$(wasm_bindgen_version)
  have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
  if [ "$have" != "$want" ]; then
    log "installing wasm-bindgen-cli $want (found: ${have:-none})"
    # Not --locked: one of its locked dependencies is no longer on crates.io.
    cargo install wasm-bindgen-cli --version "=$want" --force
  fi
}

# One build of crates/web into dist/www/$1 (log name $2); extra cargo arguments after `--`.
wasm_pack_build() {
  local out=$DIST/www/$1 name=$2
  shift 2
  rm -rf "$out"
  # --mode no-install: use the wasm-bindgen installed above, never download one.
  wasm-pack --log-level warn build crates/web --release --target web --mode no-install \
    --no-typescript --no-pack --out-dir "$out" "$@"
  rm -f "$out/.gitignore" "$out/package.json" "$out/README.md"
  local wasm=$out/vitrine_web_bg.wasm
  node "$ROOT/crates/web/tools/strip-names.mjs" "$wasm"
  if [ "${VITRINE_WASM_OPT:-0}" = 1 ]; then
    [ -x "$ROOT/node_modules/.bin/wasm-opt" ] || { echo "VITRINE_WASM_OPT=1 needs npm binaryen: npm install binaryen" >&2; exit 1; }
    log "wasm-opt -O2 (npm binaryen $("$ROOT/node_modules/.bin/wasm-opt" --version | awk '{ print $3 }'))"
    "$ROOT/node_modules/.bin/wasm-opt" -O2 --all-features "$wasm" -o "$wasm.opt" && mv "$wasm.opt" "$wasm"
  fi
  log "$name: $(du -h "$wasm" | cut -f1) wasm, $(gzip -9c "$wasm" | wc -c | awk '{ printf "%.1f MB", $1 / 1e6 }') gzipped"
}

# The three builds the page chooses from (www/worker.js):
# - pkg/: WebGPU, and the CPU path on one thread;
# - pkg-threads/: the CPU path on wasm threads (rayon on Web Workers);
# - pkg-relaxed/: the same, with the matrix products compiled for relaxed SIMD (fused multiply-add in
#   gemm's microkernel, crates/vendor/gemm-f32/PATCH.md, and the int8 dot), for the browsers that
#   have it: a module with one relaxed instruction does not load elsewhere. Only the products, through
#   the crates' relaxed-simd feature: with +relaxed-simd for the whole build, burn-flex's macerator
#   0.5.2 does not compile.
# Threads need the standard library built with atomics: -Z build-std on the stable toolchain
# (RUSTC_BOOTSTRAP), with rust-src. Atomics no longer imply a shared memory (rust-lang/rust#147225):
# the linker is asked for one (imported, so that every worker gets the same), up to the 4 GiB that
# wasm32 can address, with the thread-local storage symbols wasm-bindgen's thread support needs.
# Each threaded build has its own target folder, as its flags or features differ from the others'.
THREADS_RUSTFLAGS="-C target-feature=+atomics,+bulk-memory,+simd128
  -C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296
  -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size
  -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base"
threaded_build() { # folder, log name, cargo arguments
  local out=$1 name=$2
  shift 2
  RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$CARGO_TARGET_DIR/wasm-${out#pkg-}" RUSTFLAGS="$(echo $THREADS_RUSTFLAGS)" \
    wasm_pack_build "$out" "$name" -- -Z build-std=panic_abort,std "$@"
}
build_wasm() {
  log "building crates/web for wasm32 (release): WebGPU + one-thread CPU"
  wasm_pack_build pkg "pkg (WebGPU)"
  log "building crates/web for wasm32 (release): the CPU on wasm threads"
  threaded_build pkg-threads "pkg-threads (CPU threads)"
  log "building crates/web for wasm32 (release): the CPU on wasm threads, with relaxed SIMD"
  threaded_build pkg-relaxed "pkg-relaxed (CPU threads, relaxed SIMD)" --features relaxed-simd
}

layout_site() {
  log "laying out the site in dist/"
  mkdir -p "$DIST/www"
  # Start clean, except for the wasm builds.
  find "$DIST" -mindepth 1 -maxdepth 1 ! -name www -exec rm -rf {} +
  find "$DIST/www" -mindepth 1 -maxdepth 1 ! -name pkg ! -name pkg-threads ! -name pkg-relaxed -exec rm -rf {} +
  cp index.html sw.js "$DIST/"
  # www/ without the wasm build output, which lives only in dist/.
  (cd www && find . -type f ! -path './pkg/*' -print0 | while IFS= read -r -d '' f; do
    mkdir -p "$DIST/www/$(dirname "$f")"
    cp "$f" "$DIST/www/$f"
  done)
  cat > "$DIST/README.md" <<'EOF'
---
title: vitrine
emoji: 🔎
colorFrom: indigo
colorTo: pink
sdk: static
app_file: index.html
pinned: false
# Cross-origin isolation, for wasm threads (lowercase: the only form Spaces accept).
custom_headers:
  cross-origin-embedder-policy: require-corp
  cross-origin-opener-policy: same-origin
  cross-origin-resource-policy: cross-origin
short_description: Vision Transformers in your browser on WebGPU
---

# vitrine

Image classification with a Vision Transformer (ViT, DeiT, DINOv2) written in Rust on
[burn](https://burn.dev) and running in your browser on WebGPU, with a CPU fallback, attention maps,
webcam and offline use. Images never leave the browser.

This folder is built by `./build.sh` in the vitrine repository.
EOF
  # Hugging Face keeps files over 10 MB in Git LFS.
  cat > "$DIST/.gitattributes" <<'EOF'
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.wasm filter=lfs diff=lfs merge=lfs -text
EOF
  for pkg in pkg pkg-threads pkg-relaxed; do
    [ -f "$DIST/www/$pkg/vitrine_web_bg.wasm" ] || { echo "dist/www/$pkg has no wasm: run ./build.sh first" >&2; exit 1; }
  done
}

serve() {
  local port=${PORT:-8080}
  log "serving dist/ on http://127.0.0.1:$port/ (Ctrl+C stops)"
  # With the headers a Space sends (see layout_site), so that the page has wasm threads at once.
  exec python3 - "$port" "$DIST" <<'EOF'
import functools, http.server, sys
class Isolated(http.server.SimpleHTTPRequestHandler):
    def end_headers(self):
        self.send_header("cross-origin-embedder-policy", "require-corp")
        self.send_header("cross-origin-opener-policy", "same-origin")
        self.send_header("cross-origin-resource-policy", "cross-origin")
        super().end_headers()
handler = functools.partial(Isolated, directory=sys.argv[2])
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()
EOF
}

case "${1:-build}" in
  tools) ensure_tools ;;
  site) layout_site ;;
  build) ensure_tools; build_wasm; layout_site ;;
  serve) ensure_tools; build_wasm; layout_site; serve ;;
  *) echo "usage: $0 [build|serve|tools|site]" >&2; exit 2 ;;
esac
