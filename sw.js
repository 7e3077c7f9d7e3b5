// vitrine's service worker: keeps the site's files so that the page works offline after the first visit.
// Pages and code go to the network first (a new deployment shows at once) and fall back to the cache;
// model files are cached by the page's worker itself (www/worker.js), with download progress.
const SHELL = 'vitrine-shell-v2';
const CORE = [
  './',
  'index.html',
  'www/app.js',
  'www/dom.js',
  'www/worker.js',
  'www/model-cache.js',
  'www/evaluate.js',
  'www/style.css',
  'www/icon.svg',
  'www/manifest.webmanifest',
  'www/pkg/vitrine_web.js',
  'www/pkg/vitrine_web_bg.wasm',
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
    return response;
  } catch (err) {
    const hit = (await cache.match(request, { ignoreSearch: true })) ?? (request.mode === 'navigate' ? await cache.match('index.html') : undefined);
    if (hit) return hit;
    throw err;
  }
}
