// vitrine's CPU path against onnxruntime-web (the engine of transformers.js), side by side in one
// headless Chromium, on the same models, inputs and thread counts. Writes a Markdown report to stdout.
//
//   node tests/e2e/peer-bench.mjs [--runs 10] [--rounds 2] [--models dinov2-s14,vit-b16] [--threads 1,2] [--simd128]
//
// Needs the built site (./build.sh) and the benchmark's models: `python3 scripts/export_onnx.py`
// writes them to ~/.cache/vitrine/peer-bench (VITRINE_PEER_MODELS=folder for another place): the
// same Hugging Face model as a vitrine bundle and as ONNX. onnxruntime-web comes from npm (pinned in
// package.json) and is served from this machine.
//
// Per-image time: the median of --rounds x --runs images per engine. Each engine runs alone in its own
// Web Worker (an idle engine's threads may spin and slow the other), warmed up twice, --runs images,
// then the other engine; which goes first alternates by round.
// - "forward": vitrine's bare forward pass (`Classifier.forward`) and onnxruntime-web's
//   `session.run`, on the same [1, 3, 224, 224] pixel values (their outputs are compared);
// - "page path": what the site does per photo (decode, preprocess, forward with every attention map,
//   top-5), which the peer does not do at all.
// vitrine runs the build the site runs here (www/worker.js): the threaded build with relaxed SIMD on
// every thread count where the browser has relaxed SIMD, else the one-thread build on 1 thread and the
// threaded one on more. --simd128 also times those builds without relaxed SIMD, in the same rounds.
// Cold start: a fresh browser context (empty cache), navigation to the first output on all threads;
// for vitrine also the site itself (navigation to the first answer on screen, its sample photo).
import { existsSync, readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { gzipSync } from 'node:zlib';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from './server.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const DIST = process.env.VITRINE_DIST ?? join(ROOT, 'dist');
const MODELS = process.env.VITRINE_PEER_MODELS ?? join(process.env.HOME, '.cache/vitrine/peer-bench');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const ORT = join(ROOT, 'node_modules/onnxruntime-web');
// Outputs agree within this fraction of their largest magnitude: float32, different summation
// orders; the int8 models (`-int8`), two different quantizations of one model: each engine's own
// int8 (vitrine's per-channel weights and per-token activations, onnxruntime's quantize_dynamic),
// and vitrine's relaxed-SIMD build halves the weights to 7 bits (seen: 5.0e-2 on DINOv2-S and 7.5e-2
// on the random ViT-B/16, where its 8-bit builds are at 3.6e-2 and 4.5e-2).
const TOLERANCE = 1e-5;
const TOLERANCE_INT8 = 1e-1;

const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const runs = Number(option('--runs', 10));
const rounds = Number(option('--rounds', 2));
const models = option('--models', 'dinov2-s14,vit-b16,dinov2-s14-int8,vit-b16-int8').split(',');

for (const model of models) {
  if (!existsSync(join(MODELS, model, 'model.onnx'))) {
    console.error(`${join(MODELS, model)} is missing: python3 scripts/export_onnx.py`);
    process.exit(1);
  }
}
const PKGS = ['pkg', 'pkg-threads', 'pkg-relaxed'];
const engines = ['ort', 'vitrine', ...(args.includes('--simd128') ? ['vitrine-simd128'] : [])];
for (const pkg of PKGS) {
  if (!existsSync(join(DIST, 'www', pkg, 'vitrine_web_bg.wasm'))) {
    console.error(`dist/www/${pkg} is missing: ./build.sh`);
    process.exit(1);
  }
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};
const ms = (v) => `${Math.round(v).toLocaleString('en')} ms`;

// max |a - b| as a fraction of max |b|.
function disagreement(a, b) {
  if (a.length !== b.length) return Infinity;
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return diff / scale;
}

const server = await serve(DIST, 0, {
  '/ort/': join(ORT, 'dist'),
  '/bench-models/': MODELS,
  '/bench/': join(ROOT, 'tests/e2e/peer-bench'),
  '/photos/': join(ROOT, 'tests/fixtures/images'),
});
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-features=WebGPU'] });
const lines = [];
const out = (line = '') => {
  lines.push(line);
  console.error(line);
};

try {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${server.url}bench/index.html`);
  const cores = await page.evaluate(() => navigator.hardwareConcurrency);
  if (!(await page.evaluate(() => self.crossOriginIsolated))) throw new Error('the benchmark page is not cross-origin isolated');
  const threadCounts = option('--threads', `1,${cores}`).split(',').map(Number);
  const call = (name, message) => page.evaluate(([name, message]) => window.call(name, message), [name, message]);

  // Both engines on `model` with `threads`: { times, output } of each, and vitrine's page path. One
  // engine is alive at a time (an idle engine's threads may still spin and slow the other): each
  // round loads one, warms it up twice and times --runs images, then the other; which goes first
  // alternates by round.
  async function sideBySide(model, threads) {
    const times = Object.fromEntries(engines.map((engine) => [engine, []]));
    const output = {};
    const builds = {};
    let pagePath = [];
    for (let round = 0; round < rounds; round++) {
      for (const engine of round % 2 ? [...engines].reverse() : engines) {
        await page.evaluate((name) => window.start(name), engine);
        const loaded = await call(engine, { type: 'load', engine, model, threads });
        if (loaded.threads !== threads) throw new Error(`${engine} runs on ${loaded.threads} threads, not ${threads}`);
        builds[engine] = loaded.build;
        await call(engine, { type: 'forward', runs: 2 });
        const result = await call(engine, { type: 'forward', runs });
        times[engine].push(...result.times);
        output[engine] = result.output;
        if (engine === 'vitrine') pagePath.push(...(await call(engine, { type: 'page', runs, photo: '/photos/church.jpg' })).times);
        await page.evaluate((name) => window.stop(name), engine);
      }
    }
    return { times, output, pagePath, builds };
  }

  const version = JSON.parse(readFileSync(join(ORT, 'package.json'), 'utf8')).version;
  const browserVersion = browser.version();
  out(`CPU: ${cpus()[0].model}, ${cores} threads reported by the browser; Chromium ${browserVersion}; onnxruntime-web ${version}.`);
  for (const pkg of PKGS) {
    const wasm = readFileSync(join(DIST, 'www', pkg, 'vitrine_web_bg.wasm'));
    out(`vitrine ${pkg}/: ${(wasm.length / 1e6).toFixed(1)} MB wasm, ${(gzipSync(wasm, { level: 9 }).length / 1e6).toFixed(2)} MB gzip -9.`);
  }
  out();
  const simd128 = engines.includes('vitrine-simd128');
  out(`| model | threads | onnxruntime-web \`session.run\` | vitrine forward (build) | vitrine / onnxruntime-web | ${simd128 ? 'vitrine without relaxed SIMD (build) | ' : ''}vitrine page path | outputs differ by |`);
  out(`|---|---:|---:|---:|---:|${simd128 ? '---:|' : ''}---:|---:|`);
  for (const model of models) {
    for (const threads of threadCounts) {
      const { times, output, pagePath, builds } = await sideBySide(model, threads);
      const tolerance = model.endsWith('-int8') ? TOLERANCE_INT8 : TOLERANCE;
      const differ = Math.max(...engines.filter((e) => e !== 'ort').map((e) => disagreement(output[e], output.ort)));
      if (!(differ <= tolerance)) throw new Error(`${model}: vitrine and onnxruntime-web disagree: ${differ.toExponential(2)} > ${tolerance}`);
      const [o, v] = [median(times.ort), median(times.vitrine)];
      const plain = simd128 ? `${ms(median(times['vitrine-simd128']))} (${builds['vitrine-simd128']}) | ` : '';
      out(`| ${model} | ${threads} | ${ms(o)} | ${ms(v)} (${builds.vitrine}) | ${(v / o).toFixed(2)}x | ${plain}${ms(median(pagePath))} | ${differ.toExponential(1)} |`);
    }
  }
  await context.close();

  out();
  out(`Cold start, all ${cores} threads, a fresh browser context: navigation to the first output.`);
  out();
  out('| model | onnxruntime-web | vitrine | vitrine / onnxruntime-web | the vitrine site, to its first answer on screen |');
  out('|---|---:|---:|---:|---:|');
  for (const model of models) {
    const cold = {};
    for (const engine of ['ort', 'vitrine']) {
      const fresh = await browser.newContext();
      const tab = await fresh.newPage();
      const load = { type: 'load', engine, model, threads: cores };
      await tab.goto(`${server.url}bench/index.html?cold=${encodeURIComponent(JSON.stringify(load))}`);
      cold[engine] = await tab.evaluate(() => window.cold);
      await fresh.close();
    }
    const fresh = await browser.newContext();
    const tab = await fresh.newPage();
    await tab.goto(`${server.url}?backend=cpu&model=/bench-models/${model}/`);
    await tab.waitForFunction(() => Number(document.querySelector('#predictions').dataset.seq || 0) > 0, null, { timeout: 600_000 });
    const site = await tab.evaluate(() => window.vitrineStats.firstResult);
    await fresh.close();
    out(`| ${model} | ${ms(cold.ort)} | ${ms(cold.vitrine)} | ${(cold.vitrine / cold.ort).toFixed(2)}x | ${ms(site)} |`);
  }
} finally {
  await browser.close();
  await server.close();
}
console.log(lines.join('\n'));
