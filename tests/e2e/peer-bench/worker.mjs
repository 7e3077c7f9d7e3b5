// One engine on one model in this Web Worker, for tests/e2e/peer-bench.mjs. Messages:
//   { type: 'load', engine: 'vitrine' | 'vitrine-simd128' | 'ort', model, threads }  ->  { loadMs, threads, build }
//   { type: 'forward', runs }  ->  { times, output }   (the bare forward pass, `runs` times)
//   { type: 'page', runs, photo }  ->  { times }      (vitrine only: the site's whole path per photo)
// 'vitrine' runs the build the site would (www/worker.js): relaxed SIMD's threaded build (pkg-relaxed/)
// on any number of threads where the browser has relaxed SIMD; 'vitrine-simd128' the builds without:
// the one-thread build (pkg/) on 1 thread, the threaded one (pkg-threads/) on more. onnxruntime-web
// (its files at /ort/) runs its own wasm threads. All get the same pixel values.

import { relaxedSimd } from '/www/relaxed-simd.js';

const SIZE = 224;

let engine = null; // { forward(), page?(bytes), threads }

self.onmessage = async ({ data }) => {
  try {
    self.postMessage(await handle(data));
  } catch (err) {
    self.postMessage({ error: err?.message ?? String(err) });
  }
};

async function handle(message) {
  if (message.type === 'load') {
    const started = performance.now();
    engine = await (message.engine === 'ort' ? ort : vitrine)(message);
    return { loadMs: performance.now() - started, threads: engine.threads, build: engine.build };
  }
  if (message.type === 'forward') return timed(message.runs, () => engine.forward());
  if (message.type === 'page') {
    const bytes = new Uint8Array(await fetch(message.photo).then((r) => r.arrayBuffer()));
    return { times: (await timed(message.runs, () => engine.page(bytes))).times };
  }
  throw new Error(`unknown message ${message.type}`);
}

// The same `[1, 3, 224, 224]` pixel values for both engines: uniform in [-2, 2), seeded.
function pixels() {
  let state = 1;
  const next = () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return Float32Array.from({ length: 3 * SIZE * SIZE }, () => next() * 4 - 2);
}

async function timed(runs, run) {
  let output;
  const times = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    output = await run();
    times.push(performance.now() - started);
  }
  return { times, output: output && Array.from(output) };
}

async function vitrine({ engine, model, threads }) {
  const relaxed = engine === 'vitrine' && relaxedSimd();
  const pkg = relaxed ? 'pkg-relaxed' : threads > 1 ? 'pkg-threads' : 'pkg';
  const wasm = await import(`/www/${pkg}/vitrine_web.js`);
  await wasm.default();
  if (pkg !== 'pkg') await wasm.initThreadPool(threads);
  const base = `/bench-models/${model}/`;
  const [config, weights] = await Promise.all([
    fetch(base + 'config.json').then((r) => r.text()),
    fetch(base + 'model.safetensors').then((r) => r.arrayBuffer()),
  ]);
  const classifier = wasm.Classifier.load(wasm.Backend.cpu(), new Uint8Array(weights), config, undefined);
  const input = pixels();
  return {
    threads: wasm.threads(),
    build: pkg,
    forward: () => classifier.forward(input, SIZE, SIZE),
    // The site's path: decode the photo, preprocess, forward pass with every attention map, top-5.
    page: async (bytes) => (await classifier.classifyFile(bytes, 5)).free(),
  };
}

async function ort({ model, threads }) {
  const ort = await import('/ort/ort.wasm.min.mjs');
  ort.env.wasm.wasmPaths = '/ort/';
  ort.env.wasm.numThreads = threads;
  const session = await ort.InferenceSession.create(`/bench-models/${model}/model.onnx`, {
    executionProviders: ['wasm'],
    graphOptimizationLevel: 'all',
  });
  const feeds = { pixel_values: new ort.Tensor('float32', pixels(), [1, 3, SIZE, SIZE]) };
  const name = session.outputNames[0];
  return { threads, forward: async () => (await session.run(feeds))[name].data };
}
