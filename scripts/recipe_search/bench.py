# Microbenchmark: per-block forward and forward+backward cost at 112/168/224 px, 1 thread.
import os, time, torch
from transformers import Dinov2Model
torch.set_num_threads(1)
M = Dinov2Model.from_pretrained(os.path.join(os.path.dirname(os.path.abspath(__file__)), '../../../shared/models/dinov2-small-imgfocus')).eval()
print('attn impl', M.config._attn_implementation)
blk = M.encoder.layer[0]
for res in (112, 168, 224):
    n = (res // 14) ** 2 + 1
    B = 32
    x = torch.randn(B, n, 384)
    with torch.no_grad():
        blk(x); t = time.perf_counter(); blk(x); blk(x); f = (time.perf_counter() - t) / 2 / B
    blk.train()
    xr = x.clone().requires_grad_(False)
    out = blk(xr)[0] if isinstance(blk(xr), tuple) else blk(xr)
    t = time.perf_counter()
    for _ in range(2):
        o = blk(xr); o = o[0] if isinstance(o, tuple) else o
        o.float().pow(2).mean().backward()
    fb = (time.perf_counter() - t) / 2 / B
    blk.eval()
    # embeddings+ full model forward
    img = torch.randn(B, 3, res, res)
    with torch.no_grad():
        M(pixel_values=img[:4]); t = time.perf_counter(); M(pixel_values=img); full = (time.perf_counter() - t) / B
    print(f'res {res} tokens {n}: block fwd {f*1e3:.2f} ms/img, block fwd+bwd(param grads) {fb*1e3:.2f} ms/img, full 12-block fwd {full*1e3:.1f} ms/img')
