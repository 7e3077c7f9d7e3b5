// Folder evaluation, all in the page: a folder whose subfolders are class names (as `vitrine eval`
// reads one; with train/ val/ test/ inside, its val/), or a set of photos, classified one by one in
// the model's thread. Nothing is uploaded.
import { el } from './dom.js';

const IMAGE = /\.(jpe?g|png|webp|gif|bmp)$/i;
const WORST_SHOWN = 8;

// `files`: [{ file, path }] with `path` relative to the picked or dropped folder ("root/class/a.jpg").
// Returns { classes, items: [{ file, path, label }] }: `classes` sorted, `label` an index into
// them; `classes` is null for photos without class folders.
export function collectImages(files) {
  let images = files.filter(({ path }) => IMAGE.test(path));
  const parts = (path) => path.split('/').filter(Boolean);
  // Split folders: the validation split, as `vitrine eval` reads them by default.
  const splitOf = (path) => parts(path)[1];
  if (images.some(({ path }) => parts(path).length >= 4 && splitOf(path) === 'val')) {
    images = images.filter(({ path }) => splitOf(path) === 'val');
  }
  const classOf = (path) => {
    const p = parts(path);
    return p.length >= 3 ? p[p.length - 2] : null;
  };
  const labelled = images.filter(({ path }) => classOf(path) !== null);
  if (!labelled.length) return { classes: null, items: images.map(({ file, path }) => ({ file, path, label: null })) };
  const classes = [...new Set(labelled.map(({ path }) => classOf(path)))].sort();
  const items = labelled
    .map(({ file, path }) => ({ file, path, label: classes.indexOf(classOf(path)) }))
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return { classes, items };
}

// Every file under the dropped directory entries (DataTransferItem.webkitGetAsEntry), with paths.
export async function filesOfEntries(entries) {
  const out = [];
  const walk = async (entry, prefix) => {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ file, path: prefix + entry.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child, `${prefix}${entry.name}/`);
      }
    }
  };
  for (const entry of entries) await walk(entry, '');
  return out;
}

// Classifies `items` in turn: `classify(bytes, columns)` answers one file (top-k, and with
// `columns` the probabilities over the folder's classes alone, as `vitrine eval` computes them);
// `columns` comes from `matchLabels(classes)`. Returns the report `renderReport` shows.
export async function evaluate({ classes, items }, { classify, matchLabels, onProgress, isCancelled }) {
  const columns = classes ? await matchLabels(classes) : null;
  const k = classes?.length ?? 0;
  const report = {
    classes, n: 0, top1: 0, top5: 0,
    confusion: Array.from({ length: k }, () => new Array(k).fill(0)),
    images: [], misses: [], unreadable: [],
  };
  let right1 = 0;
  let right5 = 0;
  for (const [i, item] of items.entries()) {
    if (isCancelled()) break;
    let result;
    try {
      result = await classify(await item.file.arrayBuffer(), columns);
    } catch (err) {
      report.unreadable.push({ path: item.path, error: err.message });
      onProgress(i + 1, items.length);
      continue;
    }
    const top = result.top.map(({ rawLabel, index, prob }) => ({ label: rawLabel, index, prob }));
    const entry = { path: item.path, top };
    if (columns) {
      const probs = result.over;
      const truth = probs[item.label];
      const rank = probs.filter((p) => p > truth).length;
      const predicted = probs.reduce((best, p, c) => (p > probs[best] ? c : best), 0);
      right1 += predicted === item.label && rank === 0 ? 1 : 0;
      right5 += rank < 5 ? 1 : 0;
      report.confusion[item.label][predicted] += 1;
      Object.assign(entry, { class: classes[item.label], predicted: classes[predicted], trueProb: truth });
      if (predicted !== item.label) report.misses.push({ ...entry, file: item.file });
    }
    report.images.push(entry);
    report.n += 1;
    onProgress(i + 1, items.length);
  }
  if (columns && report.n) [report.top1, report.top5] = [right1 / report.n, right5 / report.n];
  report.misses.sort((a, b) => a.trueProb - b.trueProb);
  return report;
}

// The report as a person reads it: the summary, accuracy per class, the confusion matrix, the
// photos it got most wrong.
export function renderReport(report, root) {
  // Accuracies down to 0.0 % (the page's own `percent` shows tiny probabilities as <0.1%).
  const percent = (x) => `${(x * 100).toFixed(1)} %`;
  const parts = [];
  const summary = report.classes
    ? `Top-1 ${percent(report.top1)} · top-5 ${percent(report.top5)} · ${report.n} photos · ${report.classes.length} classes`
    : `${report.n} photos, no class folders: the answer for each photo below.`;
  parts.push(el('p', { class: 'eval-summary', 'data-top1': String(report.top1), 'data-top5': String(report.top5), 'data-n': String(report.n) }, summary));
  if (report.unreadable.length) {
    parts.push(el('p', { class: 'subtle' }, `${report.unreadable.length} files could not be read: ${report.unreadable.map((u) => u.path).join(', ')}`));
  }
  if (report.classes) {
    const table = el('table', { class: 'eval-table', id: 'eval-per-class' });
    table.append(row('th', ['Class', 'Photos', 'Accuracy']));
    report.classes.forEach((name, c) => {
      const total = report.confusion[c].reduce((a, b) => a + b, 0);
      table.append(row('td', [name, String(total), total ? percent(report.confusion[c][c] / total) : '–']));
    });
    parts.push(el('h3', {}, 'Per class'), table);

    const matrix = el('table', { class: 'eval-table confusion', id: 'eval-confusion' });
    matrix.append(row('th', ['true \\ predicted', ...report.classes]));
    report.confusion.forEach((counts, c) => {
      const tr = row('td', [report.classes[c], ...counts.map(String)]);
      counts.forEach((count, p) => {
        const cell = tr.children[p + 1];
        if (count) cell.classList.add(p === c ? 'hit' : 'miss');
      });
      matrix.append(tr);
    });
    parts.push(el('h3', {}, 'Confusion matrix'), matrix);

    if (report.misses.length) {
      const worst = el('div', { class: 'eval-worst', id: 'eval-worst' });
      for (const miss of report.misses.slice(0, WORST_SHOWN)) {
        const figure = el('figure', { 'data-path': miss.path });
        figure.append(el('img', { src: URL.createObjectURL(miss.file), alt: miss.path }));
        figure.append(el('figcaption', {}, `${miss.class} → ${miss.predicted} (${percent(miss.trueProb)} for ${miss.class})`));
        worst.append(figure);
      }
      parts.push(el('h3', {}, 'Most wrong'), worst);
    }
  } else {
    const table = el('table', { class: 'eval-table', id: 'eval-images' });
    table.append(row('th', ['Photo', 'Top class', 'Probability']));
    for (const image of report.images) table.append(row('td', [image.path, image.top[0]?.label ?? '–', image.top[0] ? percent(image.top[0].prob) : '–']));
    parts.push(table);
  }
  root.replaceChildren(...parts);

  function row(cell, values) {
    const tr = el('tr');
    for (const value of values) tr.append(el(cell, {}, value));
    return tr;
  }
}

// One row per photo: its path, its class (when labelled), then the top-5 labels and probabilities.
export function reportCsv(report) {
  const quote = (v) => (/[",\n]/.test(String(v)) ? `"${String(v).replace(/"/g, '""')}"` : String(v));
  const head = ['path', 'class', 'predicted', ...[1, 2, 3, 4, 5].flatMap((i) => [`top${i}_label`, `top${i}_prob`])];
  const lines = report.images.map((image) => [
    image.path, image.class ?? '', image.predicted ?? '',
    ...[0, 1, 2, 3, 4].flatMap((i) => [image.top[i]?.label ?? '', image.top[i]?.prob ?? '']),
  ]);
  return [head, ...lines].map((line) => line.map(quote).join(',')).join('\n') + '\n';
}

export function reportJson(report) {
  const { misses, ...rest } = report;
  const worst = misses.map(({ file, ...miss }) => miss);
  return JSON.stringify({ ...rest, worst }, null, 2);
}
