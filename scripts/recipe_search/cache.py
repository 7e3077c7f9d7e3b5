# Cache token states of the frozen backbone: output of blocks in --layers (pre-LN), plus final-LN tokens ('12').
# Views: view 0 = centre crop (if --center), then --aug random-resized-crop+flip views.
import argparse, time, torch
from PIL import Image
from transformers import Dinov2Model
from common import *
p = argparse.ArgumentParser()
p.add_argument('--split', default='train'); p.add_argument('--res', type=int, default=112)
p.add_argument('--per_class', type=int, default=0); p.add_argument('--aug', type=int, default=0)
p.add_argument('--center', type=int, default=1); p.add_argument('--layers', default='8,9,10')
p.add_argument('--bs', type=int, default=50); p.add_argument('--seed', type=int, default=0)
p.add_argument('--out', required=True)
p.add_argument('--no_final', type=int, default=0)  # 1: run only up to max(--layers), skip final-LN tokens
p.add_argument('--subset_of', default=''); p.add_argument('--take', type=int, default=0)  # first --take images per class of an existing cache's file list
a = p.parse_args()
torch.set_num_threads(1); torch.manual_seed(a.seed); random.seed(a.seed)
M = Dinov2Model.from_pretrained(MODEL).eval()
files, classes = file_list(a.split, a.per_class or None, seed=a.seed)
if a.subset_of:
    src = torch.load(a.subset_of); cnt = {}; files = []
    for f, y in zip(src['files'], src['labels'].tolist()):
        if cnt.get(y, 0) < a.take: files.append((f, y)); cnt[y] = cnt.get(y, 0) + 1
layers = [int(x) for x in a.layers.split(',') if x]
tfs = ([center_tf(a.res)] if a.center else []) + [aug_tf(a.res)] * a.aug
V = len(tfs); N = len(files); n_tok = (a.res // 14) ** 2 + 1
store = {k: torch.empty(V, N, n_tok, 384, dtype=torch.float16) for k in layers}
if not a.no_final: store[12] = torch.empty(V, N, n_tok, 384, dtype=torch.float16)  # final LayerNorm output
t_load = t_fwd = 0.0
for v, tf in enumerate(tfs):
    for i in range(0, N, a.bs):
        t0 = time.perf_counter(); c0 = time.process_time() if i == 0 and v == 0 else c0
        x = torch.stack([tf(Image.open(f).convert('RGB')) for f, _ in files[i:i + a.bs]])
        t1 = time.perf_counter()
        with torch.no_grad():
            if a.no_final:
                h = M.embeddings(x)
                for j in range(max(layers)):
                    h = M.encoder.layer[j](h)
                    if j + 1 in layers: store[j + 1][v, i:i + len(x)] = h.half()
            else:
                o = M(pixel_values=x, output_hidden_states=True)
                for k in layers: store[k][v, i:i + len(x)] = o.hidden_states[k].half()
                store[12][v, i:i + len(x)] = o.last_hidden_state.half()
        t2 = time.perf_counter(); t_load += t1 - t0; t_fwd += t2 - t1
print(f'cpu {time.process_time()-c0:.0f}s; {a.out}: {V} views x {N} imgs at {a.res}px: load {t_load/(V*N)*1e3:.1f} ms/img, fwd (12 blocks) {t_fwd/(V*N)*1e3:.1f} ms/img, total {t_load+t_fwd:.0f}s')
torch.save({'feats': store, 'labels': torch.tensor([c for _, c in files]), 'res': a.res, 'files': [f for f, _ in files]}, a.out)
