// The model's thread: loads the wasm, picks the backend, fetches and caches model bundles, classifies.
// The page talks to it with messages (see app.js); nothing here touches the DOM.
import { MODEL_CACHE, forgetModel } from './model-cache.js';
import { relaxedSimd } from './relaxed-simd.js';

// The build of crates/web this worker runs (build.sh makes three): `pkg/` has WebGPU and a CPU path on
// one thread; `pkg-threads/` is the CPU path alone, on a pool of Web Workers (wasm threads, which need
// cross-origin isolation); `pkg-relaxed/` is the same with relaxed SIMD (fused multiply-add), for the
// browsers that have it. Only the one in use is downloaded.
const BUILDS = { webgpu: './pkg/vitrine_web.js', threads: './pkg-threads/vitrine_web.js', relaxed: './pkg-relaxed/vitrine_web.js' };

let wasm = null; // the module of the build in use
let backend = null;
let classifier = null;

const post = (message, transfer = []) => self.postMessage(message, transfer);

self.onmessage = async ({ data }) => {
  try {
    await handlers[data.type](data);
  } catch (err) {
    // A Rust panic surfaces as a WebAssembly RuntimeError: the module may be unusable after it.
    const fatal = err instanceof WebAssembly.RuntimeError;
    const lost = classifier?.lostReason?.() ?? backend?.lostReason?.() ?? null;
    // `kind`: the Rust error's name where it has one (ImageError, UnsupportedImage: see bindings.rs).
    post({ type: 'error', id: data.id, stage: data.type, message: messageOf(err), kind: err?.name, fatal, lost });
  }
};

const handlers = {
  // `wanted`: 'auto', 'webgpu' or 'cpu'; `threads`: the CPU threads asked for (0: every core);
  // `relaxed`: false keeps the CPU path off relaxed SIMD even where the browser has it.
  async init({ id, backend: wanted, threads: asked = 0, relaxed = true }) {
    let fallback = null; // why WebGPU is not used
    if (wanted !== 'cpu') {
      const adapter = 'gpu' in navigator ? await navigator.gpu.requestAdapter().catch(() => null) : null;
      if (!('gpu' in navigator)) {
        fallback = 'this browser has no WebGPU';
      } else if (!adapter) {
        fallback = 'the browser offers no WebGPU adapter';
      } else if (adapter.info?.isFallbackAdapter && wanted === 'auto') {
        // A software rasterizer (SwiftShader, WARP) runs the model far slower than the wasm CPU path:
        // 92 s against 0.63 s per image for a ViT-S here (docs/browser.md). ?backend=webgpu forces it.
        fallback = `its only WebGPU adapter, ${adapterName(adapter.info, false)}, is a software emulation, slower than the CPU path`;
      } else {
        try {
          wasm = await start('webgpu');
          backend = await wasm.Backend.webgpu();
        } catch (err) {
          fallback = messageOf(err);
        }
      }
    }
    let single = null; // why the CPU path runs on one thread
    if (!backend) {
      const plan = cpuThreads(asked);
      single = plan.single;
      // Relaxed SIMD's build runs on the pool whatever its size; the other threaded build only on two
      // threads or more (one thread is the one-thread build's, which needs no isolation).
      const threaded = plan.isolated && relaxed && relaxedSimd() ? 'relaxed' : plan.threads > 1 ? 'threads' : null;
      if (threaded) {
        try {
          wasm = await start(threaded, plan.threads);
        } catch (err) {
          single = `the threaded build did not start (${messageOf(err)})`;
        }
      }
      if (wasm?.build() !== threaded) wasm = await start('webgpu');
      backend = wasm.Backend.cpu();
    }
    const adapter = backend.kind === 'webgpu' ? await describeAdapter(backend.adapter) : backend.adapter;
    post({
      type: 'backend', id, kind: backend.kind, adapter, fallback: wanted === 'cpu' ? null : fallback, wanted,
      threads: backend.kind === 'cpu' ? wasm.threads() : null, single: backend.kind === 'cpu' ? single : null,
      simd: backend.kind === 'cpu' ? (wasm.build() === 'relaxed' ? 'relaxed' : 'simd128') : null,
      files: loadedFiles(),
    });
  },

  // `tome`: token pairs merged per block; one the model cannot take is reported and left off.
  async load({ id, source, tome = 0 }) {
    let files = source.kind === 'files' ? source.files : await fetchBundle(source.base);
    const started = performance.now();
    const build = () => wasm.Classifier.load(backend, new Uint8Array(files.weights), files.config, files.preprocessor ?? undefined);
    let next;
    try {
      next = build();
    } catch (err) {
      if (!files.fromCache) throw err;
      // A stored copy that no longer loads (stored by an older page, or damaged): fetch it again.
      await forgetModel(source.base);
      files = await fetchBundle(source.base);
      next = build();
    }
    await files.keep?.(); // only a bundle that loaded is stored
    classifier?.free();
    classifier = next;
    let tomeError = null;
    try {
      classifier.setTokenMerging(tome);
    } catch (err) {
      tomeError = messageOf(err);
    }
    post({
      type: 'model', id, info: JSON.parse(classifier.info), label: source.label, ms: performance.now() - started,
      bytes: files.weights.byteLength, tome: tomeError ? 0 : tome, tomeError,
    });
  },

  async labels({ id, classes }) {
    if (!classifier) throw new Error('no model is loaded yet');
    post({ type: 'labels', id, columns: [...classifier.matchLabels(classes)] });
  },

  // Replies with the merging in effect; a setting the model cannot take is refused, with why.
  async tome({ id, r }) {
    if (!classifier) throw new Error('no model is loaded yet');
    classifier.setTokenMerging(r);
    post({ type: 'tome', id, r });
  },

  // `columns` (a labelled folder's classes, from `labels`): also the probabilities over them alone.
  async classify({ id, file, rgba, width, height, topK, columns }) {
    if (!classifier) throw new Error('no model is loaded yet');
    const started = performance.now();
    const prediction = file
      ? await classifier.classifyFile(new Uint8Array(file), topK)
      : await classifier.classify(new Uint8Array(rgba), width, height, topK);
    const ms = performance.now() - started;
    const probs = prediction.probs;
    const indices = prediction.indices;
    const names = prediction.labels;
    const top = Array.from(indices, (index, i) => ({ index, label: prettyLabel(names[i]), rawLabel: names[i], prob: probs[i] }));
    const maps = prediction.maps;
    const result = {
      type: 'result', id, ms, top, maps, rows: prediction.rows, cols: prediction.cols,
      region: Array.from(prediction.region), width: prediction.width, height: prediction.height,
      over: columns ? Array.from(prediction.probsOver(columns)) : undefined,
    };
    prediction.free();
    post(result, [maps.buffer]);
  },

  // The relevance map of class `index` for an image given as `classify` takes it (rows x cols, peak 1).
  async relevance({ id, index, file, rgba, width, height }) {
    if (!classifier) throw new Error('no model is loaded yet');
    const started = performance.now();
    const map = file
      ? await classifier.relevanceFile(new Uint8Array(file), index)
      : await classifier.relevance(new Uint8Array(rgba), width, height, index);
    post({ type: 'relevance', id, index, map, ms: performance.now() - started }, [map.buffer]);
  },
};

// The bundle at `base` (a folder URL ending in '/'): config.json and model.safetensors, and
// preprocessor_config.json when there is one. `keep()` stores what was downloaded, once the bundle
// has loaded: a download that fails to load (cut short, or an error page) is never stored.
async function fetchBundle(base) {
  const config = await fetchCached(base + 'config.json', { label: 'config.json' });
  // Absent (404): the family's default preprocessing applies. Any other failure is an error, not a
  // silent fall-back to a default that may not be the model's.
  const preprocessor = await fetchCached(base + 'preprocessor_config.json', { label: 'preprocessor_config.json', optional: true });
  const weights = await fetchCached(base + 'model.safetensors', { label: 'model.safetensors', progress: true });
  const files = [config, preprocessor, weights].filter(Boolean);
  return {
    config: asText(config.bytes),
    preprocessor: preprocessor ? asText(preprocessor.bytes) : null,
    weights: weights.bytes,
    fromCache: files.some((f) => f.fromCache),
    keep: () => Promise.all(files.map((f) => f.store?.())),
  };
}

// One file of a bundle: `{ bytes, fromCache, store }`, where `store()` puts a download into the Cache
// API. Same-origin files (the bundled model) go to the network first, so that a new deployment is
// picked up, and fall back to the cache offline. Other origins (Hugging Face) are served from the
// cache once stored.
async function fetchCached(url, { label, progress = false, optional = false }) {
  const absolute = new URL(url, self.location.href);
  const sameOrigin = absolute.origin === self.location.origin;
  const cache = await caches.open(MODEL_CACHE).catch(() => null);
  const cached = async () => {
    const hit = await cache?.match(absolute.href);
    return hit ? { bytes: await hit.arrayBuffer(), fromCache: true } : null;
  };
  if (!sameOrigin) {
    const hit = await cached();
    if (hit) {
      if (progress) post({ type: 'progress', label, loaded: hit.bytes.byteLength, total: hit.bytes.byteLength, cached: true });
      return hit;
    }
  }
  let response;
  const patience = new Patience(absolute.host);
  try {
    response = await fetch(absolute.href, { signal: patience.signal });
  } catch (err) {
    patience.done();
    const hit = await cached();
    if (hit) return hit;
    throw new Error(`could not download ${label} (${messageOf(err)}); the network may be off, and this model is not cached yet`);
  }
  if (!response.ok) {
    patience.done();
    if (optional && response.status === 404) return null;
    const hit = sameOrigin ? await cached() : null;
    if (hit) return hit;
    const hint = response.status === 404 && label === 'model.safetensors'
      ? ' (the repository has no model.safetensors: vitrine reads safetensors weights only)'
      : response.status === 401 || response.status === 403 ? ' (a private or gated repository?)' : '';
    throw new Error(`${label}: HTTP ${response.status} from ${absolute.href}${hint}`);
  }
  let bytes;
  try {
    bytes = await readWithProgress(response, progress ? label : null, patience);
  } catch (err) {
    throw new Error(`could not download ${label} (${messageOf(err)})`);
  } finally {
    patience.done();
  }
  const type = response.headers.get('content-type') ?? 'application/octet-stream';
  const store = () => {
    const headers = { 'content-type': type, 'content-length': String(bytes.byteLength) };
    return cache?.put(absolute.href, new Response(bytes, { headers })).catch(() => {});
  };
  return { bytes, fromCache: false, store };
}

// Aborts a download when its host sends nothing for STALL_MS (a host that never answers would
// otherwise leave the page loading forever); each chunk that arrives restarts the wait.
const STALL_MS = 30_000;
class Patience {
  constructor(host) {
    this.host = host;
    this.controller = new AbortController();
    this.signal = this.controller.signal;
    this.renew();
  }
  renew() {
    clearTimeout(this.timer);
    const why = new Error(`${this.host} sent nothing for ${STALL_MS / 1000} s`);
    this.timer = setTimeout(() => this.controller.abort(why), STALL_MS);
  }
  done() {
    clearTimeout(this.timer);
  }
}

async function readWithProgress(response, label, patience) {
  const total = Number(response.headers.get('content-length')) || 0;
  if (!response.body) return response.arrayBuffer();
  const reader = response.body.getReader();
  const chunks = [];
  let loaded = 0;
  let lastPost = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    patience.renew();
    chunks.push(value);
    loaded += value.byteLength;
    const now = performance.now();
    if (label && now - lastPost > 80) {
      post({ type: 'progress', label, loaded, total });
      lastPost = now;
    }
  }
  if (label) post({ type: 'progress', label, loaded, total: Math.max(total, loaded) });
  const bytes = new Uint8Array(loaded);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes.buffer;
}

// The module of one build, instantiated (and its thread pool started, for the threaded builds).
const started = {};
function start(build, threads = 1) {
  started[build] ??= (async () => {
    const module = await import(BUILDS[build]);
    await module.default();
    if (build !== 'webgpu') await module.initThreadPool(threads);
    return module;
  })();
  return started[build];
}

// How many threads the CPU path can have here, and why only one when so. Threads need shared
// memory, which browsers give only to cross-origin isolated pages (COOP and COEP headers).
function cpuThreads(asked) {
  if (!self.crossOriginIsolated || typeof SharedArrayBuffer === 'undefined') {
    return { threads: 1, isolated: false, single: 'the page is not cross-origin isolated, so the browser allows no WebAssembly threads' };
  }
  const cores = navigator.hardwareConcurrency || 1;
  if (asked === 1) return { threads: 1, isolated: true, single: 'the page address asks for one thread (threads=1)' };
  if (cores < 2 && !asked) return { threads: 1, isolated: true, single: 'the browser reports one core' };
  return { threads: asked || cores, isolated: true, single: null };
}

// The site's files this worker fetched (the build in use), for the service worker to keep offline.
function loadedFiles() {
  return performance
    .getEntriesByType('resource')
    .map((entry) => entry.name)
    .filter((url) => url.startsWith(self.location.origin) && url.includes('/pkg'));
}

// "google swiftshader (software)" where the browser gives no description.
async function describeAdapter(description) {
  if (description) return description;
  try {
    const info = (await navigator.gpu.requestAdapter())?.info;
    if (info) return adapterName(info);
  } catch {
    // fall through
  }
  return 'unnamed adapter';
}

function adapterName(info, markSoftware = true) {
  const name = info.description || [info.vendor, info.architecture, info.device].filter(Boolean).join(' ') || 'unnamed adapter';
  return info.isFallbackAdapter && markSoftware ? `${name} (software)` : name;
}

function asText(buffer) {
  return new TextDecoder().decode(buffer);
}

// ImageNet labels read "tench, Tinca tinca"; Imagenette folders read "golf_ball".
function prettyLabel(label) {
  return label.replaceAll('_', ' ');
}

function messageOf(err) {
  if (err instanceof Error) return err.message;
  return String(err);
}
