// One engine on one model in this Web Worker, for tests/e2e/peer-bench.mjs: loads it, runs the same
// input `runs` times after `warmup` runs, and answers with the times and the output.
//   { engine: 'vitrine' | 'ort', model, threads, runs, warmup }  ->  { times, output, page?, loadMs }
// vitrine on 1 thread is the site's one-thread build (pkg/), on more the threaded one (pkg-threads/);
// onnxruntime-web (its files at /ort/) runs its own wasm threads. Both get the same pixel values.

const SIZE = 224;

self.onmessage = async ({ data }) => {
  try {
    self.postMessage(await (data.engine === 'ort' ? ort : vitrine)(data));
  } catch (err) {
    self.postMessage({ error: err?.message ?? String(err) });
  }
};

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

async function timed(runs, warmup, run) {
  let output;
  for (let i = 0; i < warmup; i++) output = await run();
  const times = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    output = await run();
    times.push(performance.now() - started);
  }
  return { times, output };
}

async function vitrine({ model, threads, runs, warmup, photo }) {
  const started = performance.now();
  const wasm = await import(threads > 1 ? '/www/pkg-threads/vitrine_web.js' : '/www/pkg/vitrine_web.js');
  await wasm.default();
  if (threads > 1) await wasm.initThreadPool(threads);
  const base = `/bench-models/${model}/`;
  const [config, weights] = await Promise.all([
    fetch(base + 'config.json').then((r) => r.text()),
    fetch(base + 'model.safetensors').then((r) => r.arrayBuffer()),
  ]);
  const classifier = wasm.Classifier.load(wasm.Backend.cpu(), new Uint8Array(weights), config, undefined);
  const loadMs = performance.now() - started;
  const input = pixels();
  const bare = await timed(runs, warmup, () => classifier.forward(input, SIZE, SIZE));
  // The page's path: decode the photo, preprocess, forward pass with every attention map, top-5.
  const bytes = new Uint8Array(await fetch(photo).then((r) => r.arrayBuffer()));
  const page = await timed(runs, warmup, async () => (await classifier.classifyFile(bytes, 5)).free());
  return { times: bare.times, output: Array.from(bare.output), page: page.times, loadMs, threads: wasm.threads() };
}

async function ort({ model, threads, runs, warmup }) {
  const started = performance.now();
  const ort = await import('/ort/ort.wasm.min.mjs');
  ort.env.wasm.wasmPaths = '/ort/';
  ort.env.wasm.numThreads = threads;
  const session = await ort.InferenceSession.create(`/bench-models/${model}/model.onnx`, {
    executionProviders: ['wasm'],
    graphOptimizationLevel: 'all',
  });
  const loadMs = performance.now() - started;
  const feeds = { pixel_values: new ort.Tensor('float32', pixels(), [1, 3, SIZE, SIZE]) };
  const name = session.outputNames[0];
  const bare = await timed(runs, warmup, async () => (await session.run(feeds))[name].data);
  return { times: bare.times, output: Array.from(bare.output), loadMs, threads };
}
