// vitrine's service worker: keeps the site's files so that the page works offline after the first visit.
// Pages and code go to the network first (a new deployment shows at once) and fall back to the cache;
// model files are cached by the page's worker itself (www/worker.js), with download progress.
// It also makes the site cross-origin isolated where the host sends no such headers (wasm threads need
// it): every response it serves carries COOP, COEP and CORP, as the Space's README front matter sets them.
const SHELL = 'vitrine-shell-v5';
const ISOLATION = {
  'cross-origin-embedder-policy': 'require-corp',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'cross-origin',
};
const CORE = [
  './',
  'index.html',
  'www/app.js',
  'www/dom.js',
  'www/model-thread.js',
  'www/offline.js',
  'www/overlay.js',
  'www/result-card.js',
  'www/worker.js',
  'www/relaxed-simd.js',
  'www/model-cache.js',
  'www/evaluate.js',
  'www/style.css',
  'www/icon.svg',
  'www/manifest.webmanifest',
  'www/samples/tench.jpg',
  'www/samples/church.jpg',
  'www/samples/parachute.jpg',
];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(SHELL).then((cache) => cache.addAll(CORE)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith('vitrine-shell-') && k !== SHELL).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

// Of the two wasm builds, the page's worker fetched one; the page names its files here once it runs.
self.addEventListener('message', (event) => {
  if (event.data?.type !== 'keep') return;
  const files = event.data.files.filter((url) => new URL(url).origin === self.location.origin);
  event.waitUntil(
    caches.open(SHELL).then((cache) =>
      Promise.all(files.map(async (url) => (await cache.match(url)) ?? cache.add(url).catch(() => {}))),
    ),
  );
});

self.addEventListener('fetch', (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== 'GET' || url.origin !== self.location.origin || url.pathname.includes('/models/')) return;
  event.respondWith(networkFirst(request));
});

async function networkFirst(request) {
  const cache = await caches.open(SHELL);
  try {
    const response = await fetch(request);
    if (response.ok) cache.put(request, response.clone()).catch(() => {});
    return isolated(response);
  } catch (err) {
    const hit = (await cache.match(request, { ignoreSearch: true })) ?? (request.mode === 'navigate' ? await cache.match('index.html') : undefined);
    if (hit) return isolated(hit);
    throw err;
  }
}

// The response with the isolation headers (opaque and redirected responses cannot be rebuilt).
function isolated(response) {
  if (response.status === 0 || response.type === 'opaqueredirect') return response;
  const headers = new Headers(response.headers);
  for (const [name, value] of Object.entries(ISOLATION)) headers.set(name, value);
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}
