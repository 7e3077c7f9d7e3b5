// The site offline and cross-origin isolated: sw.js, registered from here.

// The service worker keeps the site for offline use, and gives the page cross-origin isolation
// (wasm threads) where the host sends no such headers: it adds them, which takes one reload on the
// first visit. Inside another site's frame isolation cannot come from here, so there is no reload.
export async function registerServiceWorker(stateLine) {
  if (!('serviceWorker' in navigator)) return;
  try {
    await registerSiteWorker();
    await navigator.serviceWorker.ready;
    stateLine.textContent = 'Works offline after this visit.';
  } catch {
    stateLine.textContent = '';
  }
}

// sw.js, over the whole site (it lives above www/).
function registerSiteWorker() {
  return navigator.serviceWorker.register(new URL('../sw.js', import.meta.url), { scope: new URL('../', import.meta.url).pathname });
}

// True when the page reloads itself to come back isolated under its service worker.
export async function reloadForIsolation() {
  const once = 'vitrine-isolation-reload';
  if (self.crossOriginIsolated || !('serviceWorker' in navigator) || window.top !== window || sessionStorage.getItem(once)) return false;
  if (!navigator.serviceWorker.controller) {
    await registerSiteWorker().catch(() => null);
    const claimed = new Promise((resolve) => navigator.serviceWorker.addEventListener('controllerchange', resolve, { once: true }));
    const timeout = new Promise((resolve) => setTimeout(resolve, 3000));
    await Promise.race([claimed, timeout]);
    if (!navigator.serviceWorker.controller) return false;
  }
  sessionStorage.setItem(once, '1');
  location.reload();
  return true;
}

// Asks the service worker to keep the build the model thread fetched (only that one of the two).
export function keepOffline(files) {
  if (files?.length) navigator.serviceWorker?.ready.then((registration) => registration.active?.postMessage({ type: 'keep', files })).catch(() => {});
}
