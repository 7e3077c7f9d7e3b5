// The models kept on this device: the Cache API store that the model's thread fills as it downloads
// bundles (worker.js) and that the page lists, so that a person sees what is stored and can delete it.
export const MODEL_CACHE = 'vitrine-models-v1';

// One entry per bundle folder, `{ base, bytes }`, largest first.
export async function cachedModels() {
  const cache = await caches.open(MODEL_CACHE);
  const bundles = new Map();
  for (const request of await cache.keys()) {
    const base = folderOf(request.url);
    const response = await cache.match(request);
    const bytes = Number(response?.headers.get('content-length')) || 0;
    const bundle = bundles.get(base) ?? { base, bytes: 0 };
    bundle.bytes += bytes;
    bundles.set(base, bundle);
  }
  return [...bundles.values()].sort((a, b) => b.bytes - a.bytes);
}

// Deletes every file of the bundle at `base`.
export async function forgetModel(base) {
  const cache = await caches.open(MODEL_CACHE);
  const files = (await cache.keys()).filter((request) => folderOf(request.url) === base);
  await Promise.all(files.map((request) => cache.delete(request)));
}

function folderOf(url) {
  return url.slice(0, url.lastIndexOf('/') + 1);
}
