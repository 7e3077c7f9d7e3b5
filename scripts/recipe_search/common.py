import glob, os, random, torch
from PIL import Image
import math, numpy as np
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '../../../shared/data/imagenette')
MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), '../../../shared/models/dinov2-small-imgfocus')
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

def file_list(split, per_class=None, seed=0):
    classes = sorted(os.listdir(f'{ROOT}/{split}'))
    out = []
    rng = random.Random(seed)
    for ci, c in enumerate(classes):
        fs = sorted(glob.glob(f'{ROOT}/{split}/{c}/*.JPEG'))
        if per_class and per_class < len(fs):
            fs = rng.sample(fs, per_class)
        out += [(f, ci) for f in fs]
    return out, classes

def _to_tensor(img):
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]

def center_tf(res):
    # resize shortest edge to res*256/224 (bicubic), centre crop res (HF Dinov2 processor ratio)
    s = round(res * 256 / 224)
    def f(img):
        w, h = img.size; r = s / min(w, h)
        img = img.resize((max(s, round(w * r)), max(s, round(h * r))), Image.BICUBIC)
        w, h = img.size; l, t = (w - res) // 2, (h - res) // 2
        return _to_tensor(img.crop((l, t, l + res, t + res)))
    return f

def aug_tf(res, scale_min=0.35, ratio=(3 / 4, 4 / 3)):
    # torchvision-style RandomResizedCrop + horizontal flip
    def f(img):
        w, h = img.size; area = w * h
        for _ in range(10):
            ta = area * random.uniform(scale_min, 1.0)
            ar = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
            cw, ch = round(math.sqrt(ta * ar)), round(math.sqrt(ta / ar))
            if 0 < cw <= w and 0 < ch <= h:
                l, t = random.randint(0, w - cw), random.randint(0, h - ch); break
        else:
            cw, ch, l, t = w, h, 0, 0
        img = img.resize((res, res), Image.BICUBIC, box=(l, t, l + cw, t + ch))
        if random.random() < 0.5: img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return _to_tensor(img)
    return f
