# Train top (12-K) blocks + final LayerNorm + head (Linear on concat(CLS, mean patch)) on cached block-K tokens.
# K=12: pure linear head on cached final-LN tokens.
import argparse, math, time, copy, random, torch, torch.nn as nn, torch.nn.functional as F
from transformers import Dinov2Model
from common import MODEL
p = argparse.ArgumentParser()
p.add_argument('--train', required=True); p.add_argument('--val', required=True)
p.add_argument('--K', type=int, default=10); p.add_argument('--views', default='all')  # 'all' or e.g. '0' / '0,1'
p.add_argument('--epochs', type=float, default=3); p.add_argument('--lr', type=float, default=1e-4)
p.add_argument('--lr_head', type=float, default=1e-3); p.add_argument('--wd', type=float, default=0.05)
p.add_argument('--bs', type=int, default=32); p.add_argument('--llrd', type=float, default=1.0)
p.add_argument('--ls', type=float, default=0.0); p.add_argument('--warmup', type=float, default=0.1)
p.add_argument('--lp_init', type=int, default=1); p.add_argument('--seed', type=int, default=0)
p.add_argument('--per_class', type=int, default=0)  # use only the first n cached train images per class (0 = all)
p.add_argument('--lp_epochs', type=int, default=100); p.add_argument('--lp_lr', type=float, default=1e-2)
p.add_argument('--lp_wd', type=float, default=1e-3)
a = p.parse_args()
torch.set_num_threads(1); torch.manual_seed(a.seed); random.seed(a.seed)
tr, va = torch.load(a.train), torch.load(a.val)
ytr, yva = tr['labels'], va['labels']
if a.per_class:
    cnt = {}; keep = []
    for i, y in enumerate(ytr.tolist()):
        if cnt.get(y, 0) < a.per_class: keep.append(i); cnt[y] = cnt.get(y, 0) + 1
    keep = torch.tensor(keep); ytr = ytr[keep]
    tr['feats'] = {k: v[:, keep] for k, v in tr['feats'].items()}
V = tr['feats'][12].shape[0]
views = list(range(V)) if a.views == 'all' else [int(v) for v in a.views.split(',')]
N = len(ytr)

def pooled(t):  # final-LN tokens -> concat(CLS, mean patch)
    t = t.float(); return torch.cat([t[:, 0], t[:, 1:].mean(1)], 1)

# ---- linear probe on frozen final-LN features (also used as head init for fine-tuning: LP-FT)
c0 = time.process_time()
Xtr = torch.cat([pooled(tr['feats'][12][v]) for v in views]); Ytr = ytr.repeat(len(views))
Xva = pooled(va['feats'][12][0])
head = nn.Linear(768, 10)
nn.init.zeros_(head.weight); nn.init.zeros_(head.bias)
opt = torch.optim.AdamW(head.parameters(), lr=a.lp_lr, weight_decay=a.lp_wd)
for ep in range(a.lp_epochs):  # full-batch
    lr = a.lp_lr * 0.5 * (1 + math.cos(math.pi * ep / a.lp_epochs))
    for g in opt.param_groups: g['lr'] = lr
    loss = F.cross_entropy(head(Xtr), Ytr, label_smoothing=a.ls); opt.zero_grad(); loss.backward(); opt.step()
with torch.no_grad(): lp_acc = (head(Xva).argmax(1) == yva).float().mean().item()
print(f'linear probe (K=12) on {len(Xtr)} train views: val {lp_acc*100:.2f}% of {len(yva)} ({time.process_time()-c0:.1f}s cpu)', flush=True)
if a.K == 12: raise SystemExit

# ---- fine-tune top blocks
M = Dinov2Model.from_pretrained(MODEL)
blocks = nn.ModuleList(M.encoder.layer[a.K:]); ln = M.layernorm
del M
if not a.lp_init: head = nn.Linear(768, 10); nn.init.normal_(head.weight, std=0.01); nn.init.zeros_(head.bias)
nb = len(blocks)
groups = []
for i, b in enumerate(blocks):
    sc = a.llrd ** (nb - 1 - i)
    dec = [q for n, q in b.named_parameters() if q.ndim >= 2]; nod = [q for n, q in b.named_parameters() if q.ndim < 2]
    groups += [dict(params=dec, lr0=a.lr * sc, weight_decay=a.wd), dict(params=nod, lr0=a.lr * sc, weight_decay=0.0)]
groups += [dict(params=list(ln.parameters()), lr0=a.lr, weight_decay=0.0),
           dict(params=[head.weight], lr0=a.lr_head, weight_decay=a.wd), dict(params=[head.bias], lr0=a.lr_head, weight_decay=0.0)]
opt = torch.optim.AdamW(groups, lr=a.lr)
def fwd(x):
    for b in blocks: x = b(x)
    return head(pooled(ln(x)))
Xk = tr['feats'][a.K]
steps_per_ep = math.ceil(N / a.bs); total = int(round(a.epochs * steps_per_ep)); warm = max(1, int(a.warmup * total))
offset = torch.randint(len(views), (N,))
step = 0; c0 = time.process_time(); w0 = time.perf_counter(); seen = 0
blocks.train()
while step < total:
    ep = step // steps_per_ep
    perm = torch.randperm(N)
    for i in range(0, N, a.bs):
        if step >= total: break
        idx = perm[i:i + a.bs]
        vi = torch.tensor(views)[(offset[idx] + ep) % len(views)]
        x = Xk[vi, idx].float()
        lrs = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        for g in opt.param_groups: g['lr'] = g['lr0'] * lrs
        loss = F.cross_entropy(fwd(x), ytr[idx], label_smoothing=a.ls)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        step += 1; seen += len(idx)
        if step % 50 == 0: print(f'  step {step}/{total} loss {loss.item():.3f}', flush=True)
tcpu = time.process_time() - c0; twall = time.perf_counter() - w0
blocks.eval(); c1 = time.process_time(); correct = 0
with torch.no_grad():
    Xv = va['feats'][a.K][0]
    for i in range(0, len(yva), 100):
        correct += (fwd(Xv[i:i + 100].float()).argmax(1) == yva[i:i + 100]).sum().item()
ecpu = time.process_time() - c1
print(f'RESULT res={tr["res"]} K={a.K} views={views} N={N} epochs={a.epochs} lr={a.lr} lr_head={a.lr_head} wd={a.wd} bs={a.bs} llrd={a.llrd} ls={a.ls} lp_init={a.lp_init} '
      f'| LP {lp_acc*100:.2f}% | FT val {correct/len(yva)*100:.2f}% of {len(yva)} | train {tcpu/seen*1e3:.1f} ms/img cpu ({twall/seen*1e3:.1f} wall), {tcpu:.0f}s; eval {ecpu/len(yva)*1e3:.1f} ms/img', flush=True)
