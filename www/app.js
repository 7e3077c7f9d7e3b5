// The page: inputs (file, drop, paste, camera, samples), the model picker, and drawing the results.
// The model itself runs in a Web Worker (worker.js), so the page never freezes.

import { download, el, percent } from './dom.js';
import { ModelThread } from './model-thread.js';
import { keepOffline, registerServiceWorker, reloadForIsolation } from './offline.js';
import { containRect, drawMap, fitCanvas } from './overlay.js';
import { cardName, resultCard } from './result-card.js';
import { cachedModels, forgetModel } from './model-cache.js';
import { collectImages, evaluate, filesOfEntries, renderReport, reportCsv, reportJson } from './evaluate.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const TOP_K = 5;
const DEFAULT_BUNDLE = new URL('models/default/', import.meta.url).href;
const SAMPLES = [
  { file: 'samples/tench.jpg', name: 'tench.jpg' },
  { file: 'samples/church.jpg', name: 'church.jpg' },
  { file: 'samples/parachute.jpg', name: 'parachute.jpg' },
];
const FILE_TYPES = /^image\/(png|jpeg|webp|gif|bmp)$/;

// Timings for docs/browser.md: milliseconds since navigation start.
const stats = { scriptStart: performance.now() };
window.vitrineStats = stats;

const state = {
  backend: null, // { kind, adapter, fallback, wanted }
  source: null, // the model bundle in use: { kind: 'url', base, label } or { kind: 'files', ... }
  model: null, // ModelInfo from the worker
  loading: null, // the promise of the model load under way (boot or switch), else null
  input: null, // what is on the stage: { kind: 'blob', blob, name } | { kind: 'pixels', bitmap, name }
  bitmap: null, // the image drawn on the stage (ImageBitmap), or null while the camera preview shows
  prediction: null,
  token: 0, // the latest classification asked for; older answers are dropped
  evaluation: null, // the folder evaluation under way or shown: { cancelled, report, name }
  persistAsked: false, // navigator.storage.persist() is asked for once, when a model is kept
  picked: null, // the class index whose relevance the map shows (null: the top class)
};

// The camera, while it is on.
const camera = {
  stream: null, // MediaStream
  deviceId: null, // of the camera in use (or picked last)
  live: false, // classifying every frame
  run: 0, // which live loop is current: an older one, still waiting for a frame, stops
  frozen: false, // a snapshot is on the stage instead of the preview
};

// ---------------------------------------------------------------- worker

const thread = new ModelThread({
  onProgress: (data) => showProgress(data),
  onFailure: (reason) => showMessage(`The model thread failed to start: ${reason}.`),
});
const call = (message, transfer) => thread.call(message, transfer);

function startWorker(wanted) {
  const threads = Number.parseInt(params.get('threads') ?? '', 10);
  // ?simd=128 keeps the CPU path off relaxed SIMD (to compare the threaded builds).
  return thread.start({ backend: wanted, threads: threads > 0 ? threads : 0, relaxed: params.get('simd') !== '128' });
}

async function boot() {
  if (await reloadForIsolation()) return;
  registerServiceWorker($('offline-state'));
  renderSamples();
  bindInputs();
  const loaded = await whileLoading(startModel);
  if (loaded && !state.input) await classifySample(SAMPLES[0], { keepMessage: true });
}

// The backend, then the asked-for model (or the bundled one): true once a model is in.
async function startModel() {
  const wanted = ['cpu', 'webgpu'].includes(params.get('backend')) ? params.get('backend') : 'auto';
  try {
    await initBackend(wanted);
  } catch (err) {
    showMessage(`The model could not start: ${err.message}`);
    return false;
  }
  const requested = params.get('model');
  let loaded = false;
  try {
    loaded = await loadModel(requested ? sourceFromText(requested) : defaultSource());
  } catch (err) {
    showMessage(`“${requested}” is neither a Hugging Face repository (org/name) nor a URL.`);
  }
  // A model that fails to load leaves its message up while the bundled one stands in.
  if (!loaded && requested) loaded = await loadModel(defaultSource(), { keepMessage: true });
  return loaded;
}

// Runs a model load that inputs arriving meanwhile wait for (see untilModelReady).
async function whileLoading(load) {
  const run = load();
  state.loading = run;
  try {
    return await run;
  } finally {
    if (state.loading === run) state.loading = null;
  }
}

// Resolves once no model load is under way (it may have failed).
async function loadsSettled() {
  while (state.loading) await state.loading.catch(() => {});
}

// An input that arrives while a model loads (a first visit, a switch) is kept, shown as waiting,
// and classified once the model is in. False when no model came in, or a newer input replaced it.
async function untilModelReady(input) {
  if (!state.loading) return true;
  showWaiting(input.name);
  await loadsSettled();
  if (state.input !== input) return false;
  setBusy(false);
  const note = $('predictions-empty');
  delete note.dataset.waiting;
  if (state.model !== null) return true;
  note.textContent = `No model could be loaded: “${input.name}” is classified once one is (choose one above).`;
  return false;
}

function showWaiting(name) {
  clearPredictions(`Waiting for the model to load: “${name}” is classified as soon as it is in.`);
  $('predictions-empty').dataset.waiting = 'true';
  setBusy(true);
}

async function initBackend(wanted) {
  const backend = await startWorker(wanted);
  state.backend = backend;
  stats.backendReady = performance.now();
  keepOffline(backend.files);
  const badge = $('backend');
  badge.dataset.backend = backend.kind;
  badge.dataset.threads = backend.threads ?? '';
  badge.dataset.simd = backend.simd ?? '';
  const threads = backend.threads > 1 ? `${backend.threads} threads` : '1 thread';
  const simd = backend.simd === 'relaxed' ? 'relaxed SIMD' : 'SIMD';
  $('backend-text').textContent = backend.kind === 'webgpu' ? `WebGPU · ${backend.adapter}` : `CPU · WebAssembly ${simd} · ${threads}`;
  badge.title = backend.kind === 'webgpu' ? `Runs on the GPU through WebGPU (${backend.adapter})` : `Runs on the CPU (${backend.adapter})`;
  const oneThread = backend.single ? ` on one thread, since ${backend.single}` : '';
  if (backend.fallback) {
    const slower = /software emulation/.test(backend.fallback) ? '' : ', which is slower';
    showNotice(`WebGPU is not used here (${backend.fallback}), so the model runs on the CPU${slower}${oneThread}.`);
  } else if (wanted === 'cpu') {
    showNotice(`Running on the CPU, as the page address asks (backend=cpu)${oneThread}.`);
  } else {
    hideNotice();
  }
}

// ---------------------------------------------------------------- models

function defaultSource() {
  return { kind: 'url', base: DEFAULT_BUNDLE, label: 'Bundled model' };
}

// `org/name`, `hf:org/name`, either pinned to a revision with `@revision` (a branch, tag or commit),
// a huggingface.co repository URL (`.../tree/<revision>` too), or the URL of a bundle folder
// (relative ones start with `./` or `/`).
function sourceFromText(text) {
  const trimmed = text.trim();
  const hub = trimmed.match(/^(?:hf:|https:\/\/huggingface\.co\/)?([\w-][\w.-]*\/[\w.-]+?)(?:@([\w.-]+)|\/(?:tree|resolve|blob)\/([\w.-]+))?\/?$/);
  if (hub && (!/^https?:/.test(trimmed) || trimmed.startsWith('https://huggingface.co/'))) {
    const [, repo, pinned, inUrl] = hub;
    const revision = pinned ?? inUrl ?? 'main';
    return hubSource(repo, revision);
  }
  const url = new URL(trimmed, location.href);
  url.pathname = url.pathname.replace(/(config\.json|model\.safetensors)$/, '');
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  return { kind: 'url', base: url.href, label: url.href };
}

function hubSource(repo, revision = 'main') {
  const label = revision === 'main' ? repo : `${repo}@${revision}`;
  return { kind: 'url', base: `https://huggingface.co/${repo}/resolve/${encodeURIComponent(revision)}/`, label };
}

async function loadModel(source, { keepMessage = false } = {}) {
  setBusy(true);
  $('progress-row').hidden = source.kind !== 'url';
  $('progress').value = 0;
  $('progress-text').textContent = `Loading ${source.label}…`;
  try {
    const transfer = source.kind === 'files' ? [source.files.weights] : [];
    const loaded = await call({ type: 'load', source, tome: tokenMerging() }, transfer);
    state.source = source.kind === 'files' ? { kind: 'files', label: source.label } : source;
    state.model = loaded.info;
    stats.modelReady = performance.now();
    renderModelInfo(loaded);
    $('progress-row').hidden = true;
    if (!keepMessage) hideMessage();
    syncTokenMerging(loaded);
    syncModelSelect();
    if (source.kind === 'url') keepModels();
    renderCachedModels();
    return true;
  } catch (err) {
    $('progress-row').hidden = true;
    showMessage(`Could not load the model ${source.label}: ${err.message}`);
    syncModelSelect();
    if (err.fatal || err.lost) await recoverOnCpu(err);
    return false;
  } finally {
    setBusy(false);
  }
}

// Token pairs merged per block (ToMe): the page's control, first set from ?tome=R.
function tokenMerging() {
  return Number($('tome').value) || 0;
}

// A setting the model refuses (more pairs than its patches allow) is reported, and the control goes
// back to the one in effect.
async function setTokenMerging() {
  const select = $('tome');
  try {
    await call({ type: 'tome', r: tokenMerging() });
  } catch (err) {
    select.value = select.dataset.inEffect ?? '0';
    throw err;
  }
  select.dataset.inEffect = select.value;
  await reclassify();
}

// After a load: the control shows the merging in effect, and why the one asked for was refused.
function syncTokenMerging({ tome, tomeError }) {
  const select = $('tome');
  select.value = select.dataset.inEffect = String(tome);
  if (tomeError) showMessage(`Token merging is off for this model: ${tomeError}.`);
}

function showProgress({ label, loaded, total, cached }) {
  $('progress-row').hidden = false;
  const progress = $('progress');
  if (total > 0) {
    progress.max = total;
    progress.value = loaded;
  } else {
    progress.removeAttribute('value');
  }
  const size = total > 0 ? `${mb(loaded)} of ${mb(total)}` : mb(loaded);
  $('progress-text').textContent = cached ? `${label}: ${mb(total)} from the offline cache` : `Downloading ${label}: ${size}`;
}

function renderModelInfo({ info, label, bytes }) {
  const heads = info.heads;
  const uniform = heads.every((h) => h === heads[0]);
  const rows = [
    ['Model', label],
    ['Architecture', `${info.model_type.toUpperCase()} · ${heads.length} layers · ${uniform ? heads[0] : heads.join('/')} heads · width ${info.hidden_size}`],
    ['Input', `${info.input_size[1]}×${info.input_size[0]} px, ${info.patch_size}-px patches`],
    ['Classes', info.num_labels ? info.num_labels.toLocaleString() : 'none (a backbone: attention maps only)'],
    ['Parameters', `${(info.parameters / 1e6).toFixed(info.parameters < 1e6 ? 3 : 1)} M · ${mb(bytes)}`],
  ];
  const dl = $('model-info');
  dl.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
  dl.dataset.modelType = info.model_type;

  const layer = $('layer');
  layer.replaceChildren(...heads.map((_, i) => el('option', { value: i }, String(i + 1))));
  layer.value = String(heads.length - 1);
  fillHeads();
  syncMapControls();
}

function fillHeads() {
  const heads = state.model?.heads ?? [];
  const count = heads[Number($('layer').value)] ?? 0;
  const head = $('head');
  const previous = Number(head.value) || 0;
  head.replaceChildren(...Array.from({ length: count }, (_, i) => el('option', { value: i }, String(i + 1))));
  head.value = String(Math.min(previous, Math.max(count - 1, 0)));
}

// ---------------------------------------------------------------- models on this device

// A downloaded model is kept: ask the browser (once) not to clear the store when space runs low.
async function keepModels() {
  if (state.persistAsked || !navigator.storage?.persist) return;
  state.persistAsked = true;
  if (!(await navigator.storage.persisted())) await navigator.storage.persist().catch(() => false);
  renderCachedModels();
}

// Listed while the panel is open (opening it lists them): nothing read at start-up.
async function renderCachedModels() {
  if (!$('cache-panel').open) return;
  let models;
  try {
    models = await cachedModels();
  } catch {
    $('cache-list').replaceChildren(el('li', {}, 'This browser keeps no models here (no Cache API).'));
    return;
  }
  const list = $('cache-list');
  list.replaceChildren(
    ...models.map(({ base, bytes }) => {
      const { label, origin } = describeBase(base);
      const inUse = state.source?.kind === 'url' && state.source.base === base;
      const li = el('li', { 'data-base': base, 'data-bytes': String(bytes) });
      const name = el('span', { class: 'name' }, label);
      name.append(el('span', { class: 'meta' }, `${mb(bytes)} · ${origin}${inUse ? ' · in use' : ''}`));
      const use = el('button', { class: 'button ghost', type: 'button', 'data-action': 'use' }, 'Use');
      use.disabled = inUse;
      use.addEventListener('click', () => switchModel({ kind: 'url', base, label }));
      const remove = el('button', { class: 'button ghost', type: 'button', 'data-action': 'delete', title: `Delete ${label} from this device` }, 'Delete');
      remove.addEventListener('click', async () => {
        await forgetModel(base);
        await renderCachedModels();
      });
      li.append(name, use, remove);
      return li;
    }),
  );
  if (!models.length) list.append(el('li', {}, 'None yet: models are kept here once downloaded.'));
  const storage = navigator.storage;
  const [estimate, persisted] = await Promise.all([storage?.estimate?.().catch(() => null), storage?.persisted?.().catch(() => false)]);
  const used = estimate?.usage ? `${mb(estimate.usage)} used of ${mb(estimate.quota)} this browser allows. ` : '';
  $('storage-state').textContent = used + (persisted ? 'Kept until you delete them.' : 'The browser may clear them when space runs low.');
}

// A bundle folder as a person names it: the repository (and pinned revision), or the page's own.
function describeBase(base) {
  if (base === DEFAULT_BUNDLE) return { label: 'Bundled model', origin: 'this site' };
  const hub = base.match(/^https:\/\/huggingface\.co\/(.+?)\/resolve\/([^/]+)\/$/);
  if (hub) return { label: hubSource(hub[1], decodeURIComponent(hub[2])).label, origin: 'huggingface.co' };
  const url = new URL(base);
  return { label: url.origin === location.origin ? url.pathname : base, origin: url.origin === location.origin ? 'this site' : url.host };
}

function syncModelSelect() {
  const select = $('model-select');
  const source = state.source;
  if (!source) return;
  if (source.kind === 'url' && source.base === DEFAULT_BUNDLE) select.value = 'default';
  else if (source.kind === 'url' && [...select.options].some((o) => o.value === `hf:${source.label}`)) select.value = `hf:${source.label}`;
  else select.value = 'custom';
  $('custom-row').hidden = select.value !== 'custom';
  if (select.value === 'custom' && source.kind === 'url') $('model-repo').value = source.label;
}

async function switchModel(source) {
  const ok = await whileLoading(() => loadModel(source));
  if (ok) await reclassify();
}

// ---------------------------------------------------------------- inputs

function bindInputs() {
  const tome = $('tome');
  const asked = Number.parseInt(params.get('tome') ?? '', 10);
  if (asked > 0) {
    if (![...tome.options].some((o) => Number(o.value) === asked)) tome.append(el('option', { value: asked }, `${asked} pairs per block`));
    tome.value = String(asked);
  }
  tome.addEventListener('change', () => setTokenMerging().catch((err) => showMessage(err.message)));

  $('file').addEventListener('change', (e) => {
    const file = e.target.files[0];
    if (file) classifyBlob(file, file.name);
    e.target.value = '';
  });

  const drop = $('drop');
  window.addEventListener('dragover', (e) => {
    e.preventDefault();
    drop.classList.add('dragging');
  });
  window.addEventListener('dragleave', (e) => {
    if (!e.relatedTarget) drop.classList.remove('dragging');
  });
  window.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('dragging');
    // A dropped folder, or several files at once, is evaluated; one file is classified.
    const entries = [...(e.dataTransfer?.items ?? [])].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
    const files = [...(e.dataTransfer?.files ?? [])];
    if (entries.some((entry) => entry.isDirectory)) {
      filesOfEntries(entries).then((found) => evaluateFiles(found, entries.find((entry) => entry.isDirectory).name));
    } else if (files.length > 1) {
      evaluateFiles(files.map((file) => ({ file, path: `dropped/${file.name}` })), `${files.length} photos`);
    } else if (files[0]) {
      classifyBlob(files[0], files[0].name);
    }
  });

  $('folder').addEventListener('change', (e) => {
    const files = [...e.target.files].map((file) => ({ file, path: file.webkitRelativePath || file.name }));
    e.target.value = '';
    if (files.length) evaluateFiles(files, files[0].path.split('/')[0]);
  });
  $('eval-stop').addEventListener('click', () => {
    if (state.evaluation) state.evaluation.cancelled = true;
  });
  $('share').addEventListener('click', () => shareResult().catch((err) => showMessage(`Could not share the result: ${err.message}`)));
  $('copy').addEventListener('click', () => copyResult().catch((err) => showMessage(`Could not copy the result: ${err.message}`)));
  $('eval-csv').addEventListener('click', () => downloadReport('csv'));
  $('eval-json').addEventListener('click', () => downloadReport('json'));

  document.addEventListener('paste', (e) => {
    if (e.target instanceof HTMLInputElement && e.target.type === 'text') return;
    const item = [...(e.clipboardData?.items ?? [])].find((i) => i.kind === 'file' && i.type.startsWith('image/'));
    if (!item) return;
    e.preventDefault();
    const file = item.getAsFile();
    if (file) classifyBlob(file, file.name && file.name !== 'image.png' ? file.name : 'Pasted image');
  });

  $('camera').addEventListener('click', () => (camera.stream ? stopCamera() : startCamera()));
  $('camera-device').addEventListener('change', (e) => switchCamera(e.target.value));
  $('snapshot').addEventListener('click', snapshot);
  $('live').addEventListener('click', () => setLive(!camera.live));

  $('map').addEventListener('change', () => {
    syncMapControls();
    drawOverlay();
  });
  $('layer').addEventListener('change', () => {
    fillHeads();
    drawOverlay();
  });
  $('head').addEventListener('change', drawOverlay);
  $('opacity').addEventListener('input', drawOverlay);
  syncMapControls();

  $('model-select').addEventListener('change', (e) => {
    const value = e.target.value;
    $('custom-row').hidden = value !== 'custom';
    if (value === 'default') switchModel(defaultSource());
    else if (value.startsWith('hf:')) switchModel(sourceFromText(value));
    else $('model-repo').focus();
  });
  $('model-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('model-repo').value;
    if (!text.trim()) return;
    try {
      switchModel(sourceFromText(text));
    } catch (err) {
      showMessage(`“${text}” is neither a Hugging Face repository (org/name) nor a URL.`);
    }
  });
  $('bundle-files').addEventListener('change', async (e) => {
    const files = [...e.target.files];
    e.target.value = '';
    const find = (name) => files.find((f) => f.name === name);
    const weights = find('model.safetensors') ?? files.find((f) => f.name.endsWith('.safetensors'));
    const config = find('config.json');
    if (!weights || !config) {
      showMessage('A model bundle needs config.json and model.safetensors (and optionally preprocessor_config.json): select them together.');
      return;
    }
    const preprocessor = find('preprocessor_config.json');
    const label = `${weights.name} from disk`;
    await switchModel({
      kind: 'files',
      label,
      files: { config: await config.text(), preprocessor: preprocessor ? await preprocessor.text() : null, weights: await weights.arrayBuffer() },
    });
  });

  $('message-close').addEventListener('click', hideMessage);
  $('cache-panel').addEventListener('toggle', () => $('cache-panel').open && renderCachedModels());
  new ResizeObserver(() => redraw()).observe($('stage'));
}

function renderSamples() {
  $('samples').replaceChildren(
    ...SAMPLES.map((sample) => {
      const button = el('button', { type: 'button', class: 'sample', title: `Classify ${sample.name}` });
      button.append(el('img', { src: new URL(sample.file, import.meta.url).href, alt: sample.name.replace(/\.\w+$/, ''), loading: 'lazy' }));
      button.addEventListener('click', () => classifySample(sample));
      return button;
    }),
  );
}

async function classifySample(sample, options) {
  try {
    const response = await fetch(new URL(sample.file, import.meta.url));
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    await classifyBlob(await response.blob(), sample.name, options);
  } catch (err) {
    showMessage(`Could not open the sample ${sample.name}: ${err.message}`);
  }
}

// An image file from the picker, a drop, the clipboard or a sample.
async function classifyBlob(blob, name, { keepMessage = false } = {}) {
  let bitmap;
  try {
    bitmap = await decodeForDisplay(blob);
  } catch (err) {
    showMessage(`Could not read “${name}”: it is not an image this browser can decode.`);
    return;
  }
  if (camera.stream) stopCamera();
  if (!keepMessage) hideMessage();
  const input = { kind: 'blob', blob, name };
  state.input = input;
  showBitmap(bitmap, name);
  if (!keepMessage) bringStageIntoView();
  if (await untilModelReady(input)) await classifyInput();
}

// On a phone the inputs sit below the results: show the photo just picked, and its answer below it.
function bringStageIntoView() {
  const card = $('stage').closest('section');
  if (matchMedia('(max-width: 700px)').matches && card.getBoundingClientRect().top < 0) {
    card.scrollIntoView({ behavior: 'smooth', block: 'start' });
  }
}

// Decodes upright (EXIF orientation applied), as the model's decoder does, so the overlay lines up.
function decodeForDisplay(blob) {
  return createImageBitmap(blob, { imageOrientation: 'from-image' });
}

async function classifyInput() {
  const input = state.input;
  if (!input) return;
  const token = ++state.token;
  setBusy(true);
  try {
    let result;
    let via = 'file';
    try {
      result = await call(...(await imageMessage({ type: 'classify', topK: TOP_K }, input, via)));
    } catch (err) {
      // The browser reads formats the Rust decoder does not; a file it refuses for anything else
      // (cut short, too large) is refused here too.
      if (err.kind !== 'UnsupportedImage') throw err;
      via = 'pixels';
      result = await call(...(await imageMessage({ type: 'classify', topK: TOP_K }, input, via)));
    }
    if (token !== state.token) return;
    result.via = via;
    showResult(result, input.name);
  } catch (err) {
    if (token !== state.token) return;
    await handleClassifyError(err, input.name);
  } finally {
    if (token === state.token) setBusy(false);
  }
}

// `message` with `input`'s image, and what to transfer: the file's own bytes (decoded by the same
// Rust code as the native `vitrine predict`), or with `via` 'pixels' (or an input that is no file
// the decoder reads) the browser's pixels of it.
async function imageMessage(message, input, via) {
  if (via === 'file' && input.kind === 'blob' && FILE_TYPES.test(input.blob.type || 'image/jpeg')) {
    const file = await input.blob.arrayBuffer();
    return [{ ...message, file }, [file]];
  }
  return pixelsMessage(message, input.bitmap ?? state.bitmap);
}

function classifyPixels(source, maxSide = Infinity) {
  return call(...pixelsMessage({ type: 'classify', topK: TOP_K }, source, maxSide));
}

function pixelsMessage(message, source, maxSide = Infinity) {
  const width = source.videoWidth ?? source.width;
  const height = source.videoHeight ?? source.height;
  const scale = Math.min(1, maxSide / Math.max(width, height));
  const w = Math.max(1, Math.round(width * scale));
  const h = Math.max(1, Math.round(height * scale));
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(source, 0, 0, w, h);
  const rgba = ctx.getImageData(0, 0, w, h).data.buffer;
  return [{ ...message, rgba, width: w, height: h }, [rgba]];
}

// The class whose relevance the map shows: the row the user picked, else the top class.
function pickedClass() {
  const top = state.prediction?.top ?? [];
  return top.find((t) => t.index === state.picked) ?? top[0] ?? null;
}

function pickClass(index) {
  state.picked = index;
  $('map').value = 'relevance';
  syncMapControls();
  drawOverlay();
}

// Asks the worker for the picked class's relevance on the image of the prediction shown; the map
// is drawn when it comes. Kept on the prediction, one map per class.
async function requestRelevance() {
  const p = state.prediction;
  const picked = pickedClass();
  if (!p || !picked || !state.input || p.relevance.has(picked.index) || p.relevancePending.has(picked.index)) return;
  p.relevancePending.add(picked.index);
  const token = state.token;
  setBusy(true);
  try {
    const message = await imageMessage({ type: 'relevance', index: picked.index }, state.input, p.via);
    const { map, ms } = await call(...message);
    p.relevance.set(picked.index, map);
    stats.relevanceMs = ms;
    if (state.prediction === p) drawOverlay();
  } catch (err) {
    if (state.prediction === p) showMessage(`The relevance map could not be computed: ${err.message}`);
  } finally {
    p.relevancePending.delete(picked.index);
    if (token === state.token) setBusy(false);
  }
}

async function handleClassifyError(err, name) {
  if (err.fatal || err.lost) {
    await recoverOnCpu(err);
    return;
  }
  const what = ['ImageError', 'UnsupportedImage'].includes(err.kind) ? `Could not read “${name}”` : `Could not classify “${name}”`;
  showMessage(`${what}: ${err.message}`);
  clearPredictions(`No answer for “${name}”: see the message above.`);
}

// Empties the top classes and the overlay (an answer for another image must not stay beside this one).
function clearPredictions(note) {
  state.prediction = null;
  $('predictions').replaceChildren();
  $('timing').textContent = '';
  const empty = $('predictions-empty');
  empty.hidden = false;
  empty.textContent = note;
  redraw();
}

// WebGPU died (device lost, or a crash in the model thread): start again on the CPU.
async function recoverOnCpu(err) {
  const wasGpu = state.backend?.kind === 'webgpu';
  setLive(false);
  showMessage(wasGpu ? `WebGPU stopped working (${err.lost ?? err.message}); switched to the CPU.` : `The model thread crashed (${err.message}); it was restarted.`);
  try {
    await initBackend('cpu');
    if (wasGpu) showNotice(`WebGPU stopped working (${err.lost ?? err.message}), so the model now runs on the CPU.`);
    if (state.source?.kind === 'url' && (await loadModel(state.source))) await classifyInput();
    else if (await loadModel(defaultSource())) await classifyInput();
  } catch (again) {
    showMessage(`The model could not restart: ${again.message}`);
  }
}

async function reclassify() {
  if (camera.live) return; // the next frame uses the new model
  if (state.input) await classifyInput();
}

// ---------------------------------------------------------------- folder evaluation

async function evaluateFiles(files, name) {
  const set = collectImages(files);
  if (!set.items.length) {
    showMessage(`“${name}” has no photos (JPEG, PNG, WebP, GIF or BMP) to evaluate.`);
    return;
  }
  if (state.evaluation && !state.evaluation.report) state.evaluation.cancelled = true;
  const run = { cancelled: false, report: null, name };
  state.evaluation = run;
  const card = $('eval-card');
  card.hidden = false;
  $('eval-name').textContent = set.classes ? `${name}: ${set.classes.length} class folders` : name;
  $('eval-report').replaceChildren();
  $('eval-csv').disabled = $('eval-json').disabled = true;
  $('eval-stop').hidden = false;
  const progress = $('eval-progress');
  const onProgress = (done, total) => {
    progress.max = total;
    progress.value = done;
    $('eval-progress-text').textContent = `${done} of ${total} photos`;
  };
  onProgress(0, set.items.length);
  card.scrollIntoView({ behavior: 'smooth', block: 'start' });
  await loadsSettled();
  try {
    const report = await evaluate(set, {
      classify: (file, columns) => call({ type: 'classify', file, topK: TOP_K, columns }, [file]),
      matchLabels: async (classes) => (await call({ type: 'labels', classes })).columns,
      onProgress,
      isCancelled: () => run.cancelled || state.evaluation !== run,
    });
    if (state.evaluation !== run) return;
    run.report = report;
    renderReport(report, $('eval-report'));
    $('eval-progress-text').textContent = run.cancelled ? `stopped after ${report.n} of ${set.items.length} photos` : `${report.n} photos`;
    $('eval-csv').disabled = $('eval-json').disabled = false;
  } catch (err) {
    if (state.evaluation === run) $('eval-report').replaceChildren(el('p', { class: 'subtle' }, `Could not evaluate “${name}”: ${err.message}`));
  } finally {
    if (state.evaluation === run) $('eval-stop').hidden = true;
  }
}

function downloadReport(kind) {
  const run = state.evaluation;
  if (!run?.report) return;
  const [text, type] = kind === 'csv' ? [reportCsv(run.report), 'text/csv'] : [reportJson(run.report), 'application/json'];
  download(new Blob([text], { type }), `vitrine-eval-${run.name.replace(/[^\w.-]+/g, '_')}.${kind}`);
}

// ---------------------------------------------------------------- camera

async function startCamera() {
  if (!navigator.mediaDevices?.getUserMedia) {
    showMessage('This browser offers no camera access here (it needs a secure page: https or localhost).');
    return;
  }
  const stream = await openCamera(camera.deviceId);
  if (!stream) return;
  hideMessage();
  await showCamera(stream);
  camera.frozen = false;
  state.input = null;
  state.bitmap = null;
  state.prediction = null;
  showVideo(true);
  $('camera').setAttribute('aria-pressed', 'true');
  $('snapshot').disabled = false;
  $('live').disabled = false;
  $('snapshot').textContent = 'Snapshot';
  $('image-name').textContent = 'Camera';
  await listCameras();
}

// A stream from the camera `deviceId` (or the default one), or null with the reason shown.
async function openCamera(deviceId) {
  const video = { width: { ideal: 1280 }, height: { ideal: 720 }, ...(deviceId ? { deviceId: { exact: deviceId } } : {}) };
  try {
    return await navigator.mediaDevices.getUserMedia({ video, audio: false });
  } catch (err) {
    const reason = {
      NotAllowedError: 'Camera permission was refused. Allow the camera for this site in the browser settings, then try again.',
      NotFoundError: 'No camera was found on this device.',
      NotReadableError: 'The camera is in use by another application.',
      OverconstrainedError: 'That camera is no longer available.',
    }[err.name] ?? `The camera could not be opened: ${err.message}`;
    showMessage(reason);
    return null;
  }
}

async function showCamera(stream) {
  camera.stream = stream;
  camera.deviceId = stream.getVideoTracks()[0]?.getSettings().deviceId ?? null;
  const video = $('video');
  video.srcObject = stream;
  await video.play().catch(() => {});
}

// The camera picker, once the permission gives the cameras' names: shown when there is a choice.
async function listCameras() {
  const cameras = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'videoinput');
  const select = $('camera-device');
  select.replaceChildren(...cameras.map((c, i) => el('option', { value: c.deviceId }, c.label || `Camera ${i + 1}`)));
  if (camera.deviceId) select.value = camera.deviceId;
  $('camera-choice').hidden = cameras.length < 2;
}

// Another camera, in place: live mode carries on with its frames.
async function switchCamera(deviceId) {
  if (!camera.stream || deviceId === camera.deviceId) return;
  const stream = await openCamera(deviceId);
  if (!stream) return;
  camera.stream.getTracks().forEach((t) => t.stop());
  await showCamera(stream);
  if (camera.frozen) snapshot(); // back to the preview of the new camera
}

function stopCamera() {
  setLive(false);
  camera.stream?.getTracks().forEach((t) => t.stop());
  camera.stream = null;
  $('video').srcObject = null;
  showVideo(false);
  $('camera').setAttribute('aria-pressed', 'false');
  $('snapshot').disabled = true;
  $('live').disabled = true;
  $('camera-choice').hidden = true;
}

async function snapshot() {
  const video = $('video');
  if (camera.frozen) {
    // Back to the preview.
    camera.frozen = false;
    state.prediction = null;
    showVideo(true);
    $('snapshot').textContent = 'Snapshot';
    return;
  }
  if (!video.videoWidth) return;
  setLive(false);
  const bitmap = await createImageBitmap(video);
  camera.frozen = true;
  const input = { kind: 'pixels', bitmap, name: 'Camera snapshot' };
  state.input = input;
  showVideo(false);
  showBitmap(bitmap, 'Camera snapshot');
  $('snapshot').textContent = 'Back to camera';
  if (await untilModelReady(input)) await classifyInput();
}

async function setLive(on) {
  if (on === camera.live) return;
  camera.live = on;
  $('live').setAttribute('aria-pressed', String(on));
  if (!on) return;
  if (camera.frozen) {
    camera.frozen = false;
    showVideo(true);
    $('snapshot').textContent = 'Snapshot';
  }
  state.input = null;
  $('image-name').textContent = 'Camera (live)';
  const video = $('video');
  let fps = 0;
  let last = performance.now();
  // One frame at a time: the next is the first new frame after this one's answer arrives, so
  // frames never queue and the rate is whatever the device sustains.
  const run = ++camera.run;
  const current = () => camera.live && camera.stream && run === camera.run;
  while (current()) {
    await nextVideoFrame(video);
    if (!current()) break;
    if (!video.videoWidth) {
      await new Promise((r) => setTimeout(r, 50));
      continue;
    }
    if (state.loading) {
      showWaiting('Camera (live)');
      await loadsSettled();
      continue;
    }
    const token = ++state.token;
    try {
      const result = await classifyPixels(video, 640);
      if (!current() || token !== state.token) break;
      const now = performance.now();
      const rate = 1000 / Math.max(now - last, 1);
      fps = fps ? 0.8 * fps + 0.2 * rate : rate; // smoothed over the last few frames
      last = now;
      showResult(result, 'Camera (live)', fps);
    } catch (err) {
      camera.live = false;
      $('live').setAttribute('aria-pressed', 'false');
      await handleClassifyError(err, 'the camera frame');
      break;
    }
  }
}

// Resolves on the next frame the video presents (requestVideoFrameCallback), or after 250 ms at
// most (a stalled or paused camera presents none).
function nextVideoFrame(video) {
  return new Promise((resolve) => {
    video.requestVideoFrameCallback?.(() => resolve());
    setTimeout(resolve, video.requestVideoFrameCallback ? 250 : 16);
  });
}

function showVideo(on) {
  $('video').hidden = !on;
  $('image').hidden = on;
  $('stage').dataset.empty = 'false';
  if (on) state.bitmap = null;
  redraw();
}

// ---------------------------------------------------------------- drawing

function showBitmap(bitmap, name) {
  state.bitmap = bitmap;
  state.prediction = null;
  $('share').disabled = $('copy').disabled = true;
  $('stage').dataset.empty = 'false';
  $('image').hidden = false;
  $('image-name').textContent = name;
  redraw();
}

function showResult(result, name, fps = null) {
  result.relevance = new Map(); // class index -> map, computed when asked for
  result.relevancePending = new Set();
  if (!result.top.some((t) => t.index === state.picked)) state.picked = null;
  state.prediction = result;
  $('share').disabled = $('copy').disabled = !result.top.length;
  if (!stats.firstResult) {
    stats.firstResult = performance.now();
    stats.firstResultMs = result.ms;
  }
  stats.lastMs = result.ms;
  const list = $('predictions');
  list.dataset.image = name;
  list.dataset.seq = String((Number(list.dataset.seq) || 0) + 1);
  list.replaceChildren(
    ...result.top.map(({ label, rawLabel, index, prob }) => {
      const li = el('li', {
        class: 'prediction', 'data-label': rawLabel, 'data-prob': String(prob), 'data-index': String(index),
        tabindex: '0', role: 'button', title: `Where the model sees ${label}: its relevance map`,
      });
      li.addEventListener('click', () => pickClass(index));
      li.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' || e.key === ' ') {
          e.preventDefault();
          pickClass(index);
        }
      });
      li.append(el('span', { class: 'label', title: rawLabel }, label), el('span', { class: 'prob' }, percent(prob)));
      const bar = el('span', { class: 'bar', role: 'presentation' });
      const fill = el('span');
      fill.style.width = `${Math.max(prob * 100, 0.5)}%`;
      bar.append(fill);
      li.append(bar);
      li.setAttribute('aria-label', `${label}: ${percent(prob)}`);
      return li;
    }),
  );
  const note = $('predictions-empty');
  delete note.dataset.waiting;
  note.hidden = result.top.length > 0;
  if (!result.top.length) note.textContent = 'This model has no classifier: only its attention is shown.';
  const where = state.backend?.kind === 'webgpu' ? 'WebGPU' : 'CPU';
  const timing = $('timing');
  timing.dataset.ms = String(result.ms);
  const ms = result.ms < 100 ? result.ms.toFixed(1) : Math.round(result.ms);
  timing.textContent = fps ? `${ms} ms/image · ${fps.toFixed(1)} fps · ${where}` : `${ms} ms/image · ${where}`;
  syncMapControls();
  drawOverlay();
}

// ---------------------------------------------------------------- sharing a result

// The Web Share API where the browser offers it for files (phones), a download otherwise.
// The card of the result on the stage.
function stageCard() {
  const title = $('predictions').dataset.image ?? '';
  const card = resultCard({
    image: $('image'),
    video: $('video'),
    overlay: $('overlay'),
    showsBitmap: Boolean(state.bitmap),
    title,
    subtitle: `${state.source?.label ?? ''} · vitrine`,
    top: state.prediction.top,
  });
  return { card, name: cardName(title) };
}

async function shareResult() {
  if (!state.prediction) return;
  const { card, name } = stageCard();
  const file = new File([await card], name, { type: 'image/png' });
  if (navigator.canShare?.({ files: [file] })) {
    const top = state.prediction.top[0];
    await navigator.share({ files: [file], title: 'vitrine', text: top ? `${top.label}: ${percent(top.prob)}` : undefined }).catch((err) => {
      if (err.name !== 'AbortError') throw err;
    });
    return;
  }
  download(file, file.name);
}

async function copyResult() {
  if (!state.prediction) return;
  if (!navigator.clipboard?.write || typeof ClipboardItem === 'undefined') throw new Error('this browser cannot copy images');
  await navigator.clipboard.write([new ClipboardItem({ 'image/png': stageCard().card })]);
  showNotice('The result is on the clipboard, as an image.');
}

function redraw() {
  const canvas = $('image');
  const { width, height } = fitCanvas(canvas, $('stage'));
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, width, height);
  if (state.bitmap) {
    const r = containRect(state.bitmap.width, state.bitmap.height, width, height);
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(state.bitmap, r.x, r.y, r.w, r.h);
  }
  drawOverlay();
}

function syncMapControls() {
  const kind = $('map').value;
  const perHead = kind === 'head' || kind === 'mask';
  $('layer-label').hidden = !perHead;
  $('head-label').hidden = !perHead;
  const picked = pickedClass();
  const relevance = $('map').querySelector('option[value="relevance"]');
  relevance.textContent = picked ? `Relevance for ${picked.label}` : 'Relevance for the top class';
  relevance.disabled = state.model ? !state.model.num_labels : false;
  if (relevance.disabled && kind === 'relevance') {
    $('map').value = 'rollout';
    return syncMapControls();
  }
  for (const li of $('predictions').children) {
    li.setAttribute('aria-pressed', String(kind === 'relevance' && Number(li.dataset.index) === picked?.index));
  }
  const [low, high] = { relevance: ['less', 'more relevant'], mask: ['outside', 'inside the mask'] }[kind] ?? ['less', 'more attention'];
  $('legend-low').textContent = low;
  $('legend-high').textContent = high;
  const note = $('map-note');
  note.textContent = mapNote(kind);
  note.hidden = !note.textContent;
}

// What the map on show needs said: relevance is computed on every token, and on a still image.
function mapNote(kind) {
  if (kind === 'relevance') {
    if (!state.input && state.prediction) return 'Relevance is computed for a photo or a camera snapshot, not for live frames.';
    if (tokenMerging() > 0) return 'Relevance is computed without token merging: it needs every token in every layer.';
    return 'Relevance: the attention of every layer weighted by its gradient for this class (Chefer et al. 2021). Click a class to see its map.';
  }
  if (kind === 'mask') return 'The fewest patches that hold 60 % of this head’s attention, as DINO draws them.';
  return '';
}

// Which row of the maps the controls select (the engine's ModelInfo.map_rows gives their order).
function selectedMap() {
  const rows = state.model?.map_rows;
  if (!rows) return 0;
  const kind = $('map').value;
  if (kind === 'rollout') return rows.rollout;
  if (kind === 'mean') return rows.last_layer_mean;
  const first = kind === 'mask' ? rows.first_mask : rows.first_head;
  return first[Number($('layer').value)] + Number($('head').value);
}

// The values of the map the controls select, or null while a relevance map is being computed.
function selectedValues(p) {
  const cells = p.rows * p.cols;
  if ($('map').value === 'relevance') {
    const picked = pickedClass();
    const map = picked && p.relevance?.get(picked.index);
    if (!map) requestRelevance();
    return map ?? null;
  }
  const row = selectedMap();
  return p.maps.subarray(row * cells, (row + 1) * cells);
}

function drawOverlay() {
  const overlay = $('overlay');
  const { width, height } = fitCanvas(overlay, $('stage'));
  const ctx = overlay.getContext('2d');
  ctx.clearRect(0, 0, width, height);
  delete overlay.dataset.map;
  delete overlay.dataset.class;
  const p = state.prediction;
  if (!p || !p.rows) return;
  const source = state.bitmap ?? (!$('video').hidden ? $('video') : null);
  const sw = source?.videoWidth ?? source?.width ?? p.width;
  const sh = source?.videoHeight ?? source?.height ?? p.height;
  if (!sw || !sh) return;
  const values = selectedValues(p);
  if (!values || values.length !== p.rows * p.cols) return;
  const opacity = Number($('opacity').value) / 100;
  const { min, max } = drawMap(ctx, { values, rows: p.rows, cols: p.cols, region: p.region, sw, sh, width, height, opacity });
  overlay.dataset.map = $('map').value;
  if ($('map').value === 'relevance') overlay.dataset.class = pickedClass()?.rawLabel ?? '';
  stats.shownMap = Array.from(values); // the values under the overlay, for the end-to-end tests
  overlay.dataset.min = String(min);
  overlay.dataset.max = String(max);
}

// ---------------------------------------------------------------- small things

function setBusy(on) {
  $('busy').hidden = !on;
}

function showMessage(text) {
  $('message-text').textContent = text;
  $('message').hidden = false;
}

function hideMessage() {
  $('message').hidden = true;
}

function showNotice(text) {
  const notice = $('notice');
  notice.textContent = text;
  notice.hidden = false;
}

function hideNotice() {
  $('notice').hidden = true;
}

function mb(bytes) {
  return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1e3))} kB`;
}

boot();
