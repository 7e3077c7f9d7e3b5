# Linear probe on pooled (CLS, mean-patch) tokens of each cached layer (parameter-free LayerNorm for pre-LN layers).
import sys, math, time, torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(1); torch.manual_seed(0)
tr, va = torch.load(sys.argv[1]), torch.load(sys.argv[2])
views = [0] if len(sys.argv) < 4 else [int(v) for v in sys.argv[3].split(',')]
def pooled(t, k):
    t = t.float()
    if k != 12: t = F.layer_norm(t, (384,), eps=1e-6)
    return torch.cat([t[:, 0], t[:, 1:].mean(1)], 1)
for k in sorted(tr['feats']):
    Xtr = torch.cat([pooled(tr['feats'][k][v], k) for v in views]); Ytr = tr['labels'].repeat(len(views))
    Xva = pooled(va['feats'][k][0], k)
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6; Xtr = (Xtr - mu) / sd; Xva = (Xva - mu) / sd
    head = nn.Linear(768, 10); opt = torch.optim.AdamW(head.parameters(), lr=3e-2, weight_decay=0.05)
    for ep in range(500):
        for g in opt.param_groups: g['lr'] = 3e-2 * 0.5 * (1 + math.cos(math.pi * ep / 500))
        loss = F.cross_entropy(head(Xtr), Ytr); opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad(): acc = (head(Xva).argmax(1) == va['labels']).float().mean().item()
    print(f'layer {k}: train loss {loss.item():.3f} val {acc*100:.2f}%')
