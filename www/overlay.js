// Drawing the attention maps over the photo: the canvas geometry and the colour map.

// `canvas` at the stage's size in device pixels (resized only when that changed).
export function fitCanvas(canvas, stage) {
  const dpr = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(stage.clientWidth * dpr));
  const height = Math.max(1, Math.round(stage.clientHeight * dpr));
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  return { width, height };
}

// Where an `sw` x `sh` image lies, fitted whole and centred, in a `width` x `height` box.
export function containRect(sw, sh, width, height) {
  const scale = Math.min(width / sw, height / sh);
  const w = sw * scale;
  const h = sh * scale;
  return { x: (width - w) / 2, y: (height - h) / 2, w, h };
}

// Draws `values` (a `rows` x `cols` map over the model input's `region` of the image, as
// fractions [left, top, right, bottom]) onto `ctx`, over an `sw` x `sh` image fitted into
// `width` x `height`. Returns the map's range.
export function drawMap(ctx, { values, rows, cols, region, sw, sh, width, height, opacity }) {
  const small = new OffscreenCanvas(cols, rows);
  const sctx = small.getContext('2d');
  const image = sctx.createImageData(cols, rows);
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  // Stretched to the map's own range, so that nearly flat maps (rollout) still show their shape.
  const span = max - min > 1e-6 ? max - min : 1;
  values.forEach((v, i) => {
    const t = (v - min) / span;
    const [r, g, b] = colormap(t);
    image.data.set([r, g, b, Math.round(255 * (0.6 + 0.4 * t))], i * 4);
  });
  sctx.putImageData(image, 0, 0);

  const img = containRect(sw, sh, width, height);
  const [left, top, right, bottom] = region;
  ctx.save();
  ctx.beginPath();
  ctx.rect(img.x, img.y, img.w, img.h);
  ctx.clip();
  ctx.globalAlpha = opacity;
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(small, img.x + left * img.w, img.y + top * img.h, (right - left) * img.w, (bottom - top) * img.h);
  ctx.restore();
  return { min, max };
}

// "inferno"-like: black-purple, red, orange, pale yellow.
const STOPS = [
  [0.0, [20, 11, 52]],
  [0.3, [120, 28, 109]],
  [0.55, [212, 72, 66]],
  [0.8, [250, 153, 22]],
  [1.0, [252, 255, 164]],
];

function colormap(v) {
  const x = Math.min(1, Math.max(0, v));
  for (let i = 1; i < STOPS.length; i++) {
    const [x1, c1] = STOPS[i];
    if (x <= x1) {
      const [x0, c0] = STOPS[i - 1];
      const t = (x - x0) / (x1 - x0);
      return c0.map((c, k) => Math.round(c + t * (c1[k] - c)));
    }
  }
  return STOPS[STOPS.length - 1][1];
}
