#!/usr/bin/env bash
# All of vitrine's tests: native (cargo), the GPU path on a software Vulkan driver, the wasm crate in
# headless Chromium (WebGPU and CPU), and the built page end to end in headless Chromium.
# It first installs what they need, where missing (so a second run installs nothing): Chromium and
# ChromeDriver, Mesa's lavapipe, Node.js (Debian packages, with sudo unless run as root), the wasm
# tools (./build.sh tools) and playwright-core (npm ci). Rust itself (rustup) must be there.
set -euo pipefail
cd "$(dirname "$0")"
# Builds live outside the checkout so that later runs reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vitrine/target}"
mkdir -p "$CARGO_TARGET_DIR"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  step "installing $* (Debian)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# Headless Chromium and ChromeDriver from Debian (the browser tests never download a browser).
command -v chromium >/dev/null && command -v chromedriver >/dev/null || apt_install chromium chromium-driver
# Mesa's lavapipe, a software Vulkan driver: the GPU path (--device wgpu) is tested on it.
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || [ -e /usr/share/vulkan/icd.d/lvp_icd.aarch64.json ] ||
  apt_install mesa-vulkan-drivers libvulkan1
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
# wasm32 target, wasm-pack, and wasm-bindgen-cli at Cargo.lock's exact wasm-bindgen version.
./build.sh tools
# playwright-core, from the committed lock (again only when the lock is newer than the install).
if [ ! node_modules/.package-lock.json -nt package-lock.json ]; then
  step "npm ci"
  npm ci --no-audit --no-fund
fi

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

step "the model crate builds for the browser on its own (wasm32)"
cargo check -p vitrine-model --target wasm32-unknown-unknown
