// Small DOM helpers shared by the page's modules.

// An element with attributes and, optionally, its text.
export function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Saves `blob` as the file `name` (a download).
export function download(blob, name) {
  const link = el('a', { href: URL.createObjectURL(blob), download: name });
  document.body.append(link);
  link.click();
  link.remove();
}

// A probability for display: tenths of a percent, and "<0.1%" below that.
export function percent(p) {
  return p >= 0.001 ? `${(p * 100).toFixed(1)}%` : '<0.1%';
}
