#!/usr/bin/env bash
# All of vitrine's tests: native (cargo), the wasm crate in headless Chromium (WebGPU and CPU), and
# the built page end to end in headless Chromium. Needs the tools that .ci/run installs.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vitrine/target}"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "cargo test --workspace --release"
cargo test --workspace --release

step "the GPU path (--device wgpu) against the CPU, on a software Vulkan driver (Mesa's lavapipe)"
cargo test --release -p vitrine --features wgpu --test gpu

step "wasm-pack test: crates/web in headless Chromium, on WebGPU (SwiftShader) and on the CPU"
# webdriver.json in crates/web passes --enable-unsafe-webgpu to Chromium.
# SwiftShader compiles each WebGPU shader on the CPU: the first tests take minutes, not seconds.
WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-900}" CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}" \
  wasm-pack --log-level warn test --release --headless --chrome --mode no-install crates/web

step "build the site (dist/), reusing the wasm build above"
./build.sh build

step "end-to-end tests of the page (playwright-core, /usr/bin/chromium)"
cargo build --release -p vitrine # the native reference the page is compared with
node --test --test-concurrency=1 tests/e2e/page.test.mjs
