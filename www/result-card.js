// Sharing a result: the card image.

import { containRect } from './overlay.js';
import { percent } from './dom.js';

// The result as a 1200 x 630 PNG card: the stage as drawn (the photo, or the camera's frame, with
// the map over it) and the top classes.
export async function resultCard({ image, video, overlay, showsBitmap, title, subtitle, top }) {
  const [W, H, side] = [1200, 630, 570];
  const canvas = new OffscreenCanvas(W, H);
  const ctx = canvas.getContext('2d');
  const css = getComputedStyle(document.documentElement);
  const color = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  ctx.fillStyle = color('--card', '#ffffff');
  ctx.fillRect(0, 0, W, H);
  // The stage as drawn (the photo, or the camera's frame, then the map), fitted into the left square.
  const stage = new OffscreenCanvas(image.width, image.height);
  const sctx = stage.getContext('2d');
  if (showsBitmap) {
    sctx.drawImage(image, 0, 0);
  } else {
    const r = containRect(video.videoWidth, video.videoHeight, stage.width, stage.height);
    sctx.drawImage(video, r.x, r.y, r.w, r.h);
  }
  sctx.drawImage(overlay, 0, 0);
  const fit = containRect(stage.width, stage.height, side, side);
  ctx.drawImage(stage, 30 + fit.x, 30 + fit.y, fit.w, fit.h);
  const x = 30 + side + 40;
  const text = color('--text', '#111111');
  ctx.fillStyle = text;
  ctx.font = '600 34px system-ui, sans-serif';
  ctx.fillText(title, x, 84, W - x - 30);
  ctx.font = '22px system-ui, sans-serif';
  ctx.fillStyle = color('--muted', '#666666');
  ctx.fillText(subtitle, x, 120, W - x - 30);
  top.forEach(({ label, prob }, i) => {
    const y = 190 + i * 82;
    ctx.fillStyle = text;
    ctx.font = `${i === 0 ? 700 : 500} 28px system-ui, sans-serif`;
    ctx.fillText(label, x, y, W - x - 150);
    ctx.textAlign = 'right';
    ctx.fillText(percent(prob), W - 30, y);
    ctx.textAlign = 'left';
    ctx.fillStyle = color('--line', '#dddddd');
    ctx.fillRect(x, y + 16, W - x - 30, 10);
    ctx.fillStyle = color('--accent', '#5b4cf0');
    ctx.fillRect(x, y + 16, Math.max((W - x - 30) * prob, 4), 10);
  });
  return canvas.convertToBlob({ type: 'image/png' });
}

export function cardName(title) {
  const name = (title || 'result').replace(/\.\w+$/, '').replace(/[^\w.-]+/g, '_');
  return `vitrine-${name}.png`;
}
