#!/usr/bin/env python3
"""Train assets/models/photo-vit: a timm VisionTransformer that tells what a photograph (or a
region of one) shows, among the 12 photographs and textures bundled in scikit-image and
scikit-learn (tools/datasets.py PHOTO_CLASSES: a cat, an astronaut, coffee, a rocket, ...).

    nice -n 10 /work/venv/bin/python tools/train_photo_vit.py --out assets/models/photo-vit --seed 0

It is a small model on little data: each class is one picture. To measure something honest, the
right quarter of every picture is held out: training crops come from the left three quarters
only, and the held-out top-1 is measured on crops of the right quarter (never seen). The
whole-picture views the demo classifies (assets/samples) overlap the training region, so those
are a smoke check, not an accuracy.
"""
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tqdm import tqdm  # noqa: E402

from datasets import PHOTO_CLASSES, load_class_picture, seed_everything  # noqa: E402

ARCH = "vit_tiny_patch16_224"
SIDE = 64
HELDOUT_FRACTION = 0.25


def to_tensor(im):
    """uint8 [H, W, 3] -> float [3, H, W] normalized like the config ((x/255 - 0.5) / 0.5)."""
    return (torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 - 0.5) / 0.5


def split(pic):
    """(train region, held-out region): the left 3/4 and the right 1/4 of the picture."""
    w = pic.shape[2]
    cut = int(round(w * (1 - HELDOUT_FRACTION)))
    return pic[:, :, :cut], pic[:, :, cut:]


def crop_resize(pic, top, left, size):
    c = pic[:, top:top + size, left:left + size][None]
    return F.interpolate(c, size=(SIDE, SIDE), mode="bilinear", antialias=True, align_corners=False)[0]


def random_crops(regions, n, gen):
    """n random square crops (side from 40 px to the region's short side), resized to SIDE, with
    random flips and a little brightness/contrast jitter. Returns (x [n,3,S,S], y [n])."""
    xs, ys = [], []
    labels = torch.randint(0, len(regions), (n,), generator=gen)
    for y in labels.tolist():
        r = regions[y]
        h, w = r.shape[1:]
        lo = min(40, h, w)
        size = int(lo + torch.rand(1, generator=gen) * (min(h, w) - lo))
        top = int(torch.randint(0, h - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
        c = crop_resize(r, top, left, size)
        if torch.rand(1, generator=gen) < 0.5:
            c = c.flip(2)
        gain = 1 + (torch.rand(1, generator=gen) - 0.5) * 0.3
        bias = (torch.rand(1, generator=gen) - 0.5) * 0.2
        xs.append((c * gain + bias).clamp(-1, 1))
        ys.append(y)
    return torch.stack(xs), torch.tensor(ys)


def grid_crops(regions):
    """The held-out set: every region cut into a fixed grid of crops at three sizes."""
    xs, ys = [], []
    for y, r in enumerate(regions):
        h, w = r.shape[1:]
        for size in sorted({min(h, w), min(h, w) * 2 // 3, min(h, w) // 2}):
            for top in np.linspace(0, h - size, 3).astype(int):
                for left in np.linspace(0, w - size, 2).astype(int):
                    xs.append(crop_resize(r, int(top), int(left), size))
                    ys.append(y)
    return torch.stack(xs), torch.tensor(ys)


@torch.no_grad()
def evaluate(model, x, y, bs=200):
    model.eval()
    pred = torch.cat([model(x[i:i + bs]).argmax(-1) for i in range(0, len(x), bs)])
    return float((pred == y).float().mean()), pred


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="assets/models/photo-vit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    # photo-vit itself is 4 blocks of width 96; a deeper model (e.g. --depth 12) is the stand-in
    # for a ViT-S/B's depth in the quantization tables (docs/QUANTIZATION.md, "Twelve blocks and a random head").
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--embed-dim", type=int, default=96)
    ap.add_argument("--heads", type=int, default=4)
    args = ap.parse_args()
    seed_everything(args.seed, args.threads)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()

    names = list(PHOTO_CLASSES)
    pictures = [to_tensor(load_class_picture(n)) for n in names]
    train_regions, test_regions = zip(*[split(p) for p in pictures])
    xte, yte = grid_crops(test_regions)
    print(f"{len(names)} classes; held-out: {len(xte)} crops of the right quarters", flush=True)

    model_args = {"img_size": SIDE, "patch_size": 8, "embed_dim": args.embed_dim, "depth": args.depth,
                  "num_heads": args.heads,
                  "mlp_ratio": 4.0, "qkv_bias": True}
    model = timm.create_model(ARCH, pretrained=False, num_classes=len(names), drop_rate=0.1, **model_args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params:,}", flush=True)
    gen = torch.Generator().manual_seed(args.seed)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or n in ("pos_embed", "cls_token") else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr)
    warm = 100
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    t0 = time.time()
    tl = []
    for step in tqdm(range(args.steps), desc="training photo-vit", unit="step", mininterval=2):
        model.train()
        xb, yb = random_crops(train_regions, args.batch, gen)
        loss = F.cross_entropy(model(xb), yb, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        tl.append(loss.item())
        if (step + 1) % 250 == 0:
            acc, _ = evaluate(model, xte, yte)
            el = time.time() - t0
            tqdm.write(f"step {step + 1}/{args.steps} loss {sum(tl) / len(tl):.4f} held-out top-1 {acc * 100:.1f}% "
                  f"{el:.0f}s (eta {el / (step + 1) * (args.steps - step - 1):.0f}s)")
            tl = []
    train_s = time.time() - t0

    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(args.out, "model.safetensors"))
    labels = [PHOTO_CLASSES[n][0] for n in names]
    cfg = {"architecture": ARCH, "num_classes": len(names), "model_args": model_args,
           "pretrained_cfg": {"input_size": [3, SIDE, SIDE], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                              "crop_pct": 1.0, "interpolation": "bilinear"},
           "label_names": labels}
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(args.out, "labels.txt"), "w") as f:
        f.write("\n".join(labels) + "\n")

    # Reload exactly as the config says, strictly; re-check the held-out accuracy.
    m2 = timm.create_model(cfg["architecture"], pretrained=False, num_classes=cfg["num_classes"], **cfg["model_args"])
    m2.load_state_dict(load_file(os.path.join(args.out, "model.safetensors")), strict=True)
    acc, pred = evaluate(m2, xte, yte)
    print(f"reloaded strictly via timm.create_model: held-out top-1 {acc * 100:.2f}%", flush=True)
    per_class = {labels[c]: round(float((pred[yte == c] == c).float().mean()) * 100, 1) for c in range(len(names))}
    metrics = {"heldout_top1": round(acc * 100, 2), "heldout_crops": len(xte), "heldout_per_class_top1": per_class,
               "params": n_params, "steps": args.steps, "batch": args.batch, "seed": args.seed,
               "train_seconds": round(train_s, 1), "total_seconds": round(time.time() - t_start, 1),
               "file_bytes": os.path.getsize(os.path.join(args.out, "model.safetensors"))}
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(metrics, flush=True)


if __name__ == "__main__":
    main()
