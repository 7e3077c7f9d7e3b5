# Slice an existing cache to the first `take` images per class (and chosen views) without recomputation.
import sys, torch
src, take, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
views = None if len(sys.argv) < 5 else [int(v) for v in sys.argv[4].split(',')]
d = torch.load(src); cnt = {}; idx = []
for i, y in enumerate(d['labels'].tolist()):
    if cnt.get(y, 0) < take: idx.append(i); cnt[y] = cnt.get(y, 0) + 1
idx = torch.tensor(idx)
feats = {k: (v[views] if views else v)[:, idx].clone() for k, v in d['feats'].items()}
torch.save({'feats': feats, 'labels': d['labels'][idx], 'res': d['res'], 'files': [d['files'][i] for i in idx]}, out)
