// Measures the built page in headless Chromium: wasm size, time to the first prediction after a cold
// load, and time per image on WebGPU and on the CPU. Writes a Markdown table to stdout.
//
//   node tests/e2e/measure.mjs [--runs N] [--backends webgpu,cpu] [--tome 0,8] [--model DIR]...
//
// VITRINE_DIST=folder measures another build of the site (default: dist/).
//
// Each --model DIR (a bundle folder) is measured besides the bundled one; it is served from the
// same origin. --tome measures each model at each token-merging setting (?tome=R). "Cold" is a fresh browser profile (empty HTTP cache, no service worker); the time is
// from navigation start to the first answer on screen (the page classifies a sample on load), and
// includes downloading and compiling the wasm, starting the backend and loading the model.
// Per-image times are the worker's: decode, preprocess, forward pass and read-back, for
// tests/fixtures/images/church.jpg after one warm-up, as the median of N runs.
import { readFileSync, statSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { dirname, join, resolve, basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from './server.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const DIST = process.env.VITRINE_DIST ?? join(ROOT, 'dist');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const PHOTO = join(ROOT, 'tests/fixtures/images/church.jpg');

const args = process.argv.slice(2);
let runs = 10;
let only = null;
let tomes = [0];
const models = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--runs') runs = Number(args[++i]);
  else if (args[i] === '--model') models.push(resolve(args[++i]));
  else if (args[i] === '--backends') only = args[++i].split(',');
  else if (args[i] === '--tome') tomes = args[++i].split(',').map(Number);
}

const BACKENDS = {
  webgpu: ['--no-sandbox', '--enable-unsafe-webgpu'],
  cpu: ['--no-sandbox', '--disable-features=WebGPU'],
};

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

async function waitResult(page, seq) {
  await page.waitForFunction((seq) => Number(document.querySelector('#predictions').dataset.seq || 0) > seq, seq, { timeout: 600_000 });
  return page.evaluate(() => ({ seq: Number(document.querySelector('#predictions').dataset.seq), ms: Number(document.querySelector('#timing').dataset.ms) }));
}

async function measure(url, backend) {
  // Force the adapter: by default the page prefers the CPU over a software one such as SwiftShader.
  url += `${url.includes('?') ? '&' : '?'}backend=${backend}`;
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: BACKENDS[backend] });
  try {
    const context = await browser.newContext({ viewport: { width: 1360, height: 860 } });
    const page = await context.newPage();
    await page.goto(url);
    let { seq } = await waitResult(page, 0);
    const cold = await page.evaluate(() => ({ ...window.vitrineStats }));
    const kind = await page.getAttribute('#backend', 'data-backend');
    const adapter = await page.textContent('#backend-text');
    const times = [];
    for (let i = 0; i <= runs; i++) {
      await page.setInputFiles('#file', PHOTO);
      const result = await waitResult(page, seq);
      seq = result.seq;
      if (i > 0) times.push(result.ms);
    }
    await page.reload();
    await waitResult(page, 0);
    const warm = await page.evaluate(() => ({ ...window.vitrineStats }));
    return { kind, adapter, cold, warm, perImage: median(times), min: Math.min(...times), max: Math.max(...times) };
  } finally {
    await browser.close();
  }
}

const wasm = join(DIST, 'www/pkg/vitrine_web_bg.wasm');
const bytes = readFileSync(wasm);
const glue = readFileSync(join(DIST, 'www/pkg/vitrine_web.js'));
const server = await serve(DIST);
// Extra bundles are copied into the served tree under /measure-models/<name>/.
const extra = [];
if (models.length) {
  const { cpSync, rmSync } = await import('node:fs');
  rmSync(join(DIST, 'measure-models'), { recursive: true, force: true });
  for (const dir of models) {
    cpSync(dir, join(DIST, 'measure-models', basename(dir)), { recursive: true });
    extra.push({ name: basename(dir), url: `${server.url}?model=./measure-models/${basename(dir)}/`, size: statSync(join(dir, 'model.safetensors')).size });
  }
}

const lines = [];
const out = (s = '') => lines.push(s);
out(`wasm: ${(bytes.length / 1e6).toFixed(1)} MB, ${(gzipSync(bytes, { level: 9 }).length / 1e6).toFixed(2)} MB gzip -9; JS glue ${(glue.length / 1e3).toFixed(0)} kB`);
out();
out(`| model | backend (adapter) | cold load to first prediction | of which: wasm + backend ready | model loaded | warm reload to first prediction | per image (median of ${runs}, min-max) |`);
out('|---|---|---|---|---|---|---|');
const withTome = (t, r) => (r ? { name: `${t.name}, ToMe r=${r}`, url: `${t.url}${t.url.includes('?') ? '&' : '?'}tome=${r}` } : t);
const targets = [{ name: 'bundled (www/models/default)', url: server.url }, ...extra].flatMap((t) => tomes.map((r) => withTome(t, r)));
try {
  for (const target of targets) {
    for (const backend of Object.keys(BACKENDS).filter((b) => !only || only.includes(b))) {
      const r = await measure(target.url, backend);
      const ms = (v) => `${Math.round(v)} ms`;
      out(`| ${target.name} | ${r.kind} (${r.adapter}) | ${ms(r.cold.firstResult)} | ${ms(r.cold.backendReady)} | ${ms(r.cold.modelReady)} | ${ms(r.warm.firstResult)} | ${r.perImage.toFixed(1)} ms (${r.min.toFixed(1)}-${r.max.toFixed(1)}) |`);
      console.error(lines[lines.length - 1]);
    }
  }
} finally {
  await server.close();
  if (models.length) (await import('node:fs')).rmSync(join(DIST, 'measure-models'), { recursive: true, force: true });
}
console.log(lines.join('\n'));
