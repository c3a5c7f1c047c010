#!/usr/bin/env python3
"""Train assets/models/digits-vit: a timm VisionTransformer (class token, global_pool='token')
classifying the 32x32 RGB digits of tools/datasets.py.

    nice -n 10 /work/venv/bin/python tools/train_digits_vit.py --out assets/models/digits-vit --seed 0

Augmentation: random affine per image (rotation, scale, translation) via affine_grid/grid_sample.
AdamW, linear warmup + cosine LR, label smoothing 0.1. Evaluated on the 1,000 held-out digits.
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

from datasets import digits_split, seed_everything  # noqa: E402

ARCH = "vit_tiny_patch16_224"
LABELS = [str(i) for i in range(10)]


def normalize(x_uint8):
    """uint8 [B,3,32,32] -> (x/255 - 0.5)/0.5, exactly the config's mean/std."""
    return (torch.as_tensor(x_uint8).float() / 255.0 - 0.5) / 0.5


def augment(x, gen, max_rot=12.0, scale=(0.88, 1.12), max_shift=0.1):
    """x normalized [B,3,H,W] (background -1). Random rotation/scale/shift per image."""
    b = x.shape[0]
    ang = (torch.rand(b, generator=gen) * 2 - 1) * max_rot * math.pi / 180
    s = scale[0] + torch.rand(b, generator=gen) * (scale[1] - scale[0])
    t = (torch.rand(b, 2, generator=gen) * 2 - 1) * max_shift * 2  # grid units span 2
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Shift to [0, 2] so zero padding corresponds to the black background.
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


@torch.no_grad()
def evaluate(model, x, y, bs=250):
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        correct += int((model(x[i:i + bs]).argmax(-1) == y[i:i + bs]).sum())
    return correct / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="assets/models/digits-vit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=45)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--embed-dim", type=int, default=96)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None, help="smoke tests: stop after N steps")
    args = ap.parse_args()
    seed_everything(args.seed, args.threads)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()

    xtr, ytr, xte, yte = digits_split()
    xtr, xte = normalize(xtr), normalize(xte)
    ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)

    model_args = {"img_size": 32, "patch_size": 4, "embed_dim": args.embed_dim, "depth": args.depth,
                  "num_heads": args.heads, "mlp_ratio": 4.0, "qkv_bias": True}
    model = timm.create_model(ARCH, pretrained=False, num_classes=10, **model_args)
    assert isinstance(model, timm.models.vision_transformer.VisionTransformer)
    assert model.global_pool == "token" and model.cls_token is not None and model.num_reg_tokens == 0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params:,}", flush=True)

    gen = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = len(xtr) // args.batch
    total = args.epochs * steps_per_epoch
    warm = steps_per_epoch
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or n in ("pos_embed", "cls_token") else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    t0 = time.time()
    step = 0
    acc = 0.0
    for ep in tqdm(range(args.epochs), desc="training digits-vit", unit="epoch", mininterval=2):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        tl = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch:(i + 1) * args.batch]
            xb = augment(xtr[idx], gen)
            loss = F.cross_entropy(model(xb), ytr[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tl += loss.item()
            step += 1
            if args.max_steps and step >= args.max_steps:
                break
        el = time.time() - t0
        if ep % 5 == 4 or ep == args.epochs - 1 or args.max_steps:
            acc = evaluate(model, xte, yte)
            tqdm.write(f"epoch {ep + 1}/{args.epochs} loss {tl / (i + 1):.4f} held-out top-1 {acc * 100:.2f}% "
                  f"{el:.0f}s (eta {el / (ep + 1) * (args.epochs - ep - 1):.0f}s)")
        else:
            tqdm.write(f"epoch {ep + 1}/{args.epochs} loss {tl / (i + 1):.4f} {el:.0f}s")
        if args.max_steps and step >= args.max_steps:
            break
    train_s = time.time() - t0
    acc = evaluate(model, xte, yte)
    tr_acc = evaluate(model, xtr, ytr)
    print(f"held-out top-1 {acc * 100:.2f}% (train {tr_acc * 100:.2f}%)", flush=True)

    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(args.out, "model.safetensors"))
    cfg = {"architecture": ARCH, "num_classes": 10, "model_args": model_args,
           "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                              "crop_pct": 1.0, "interpolation": "bicubic"},
           "label_names": LABELS}
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(args.out, "labels.txt"), "w") as f:
        f.write("\n".join(LABELS) + "\n")

    # Reload exactly as the config says and load strictly; re-check the held-out accuracy.
    with open(os.path.join(args.out, "config.json")) as f:
        c2 = json.load(f)
    m2 = timm.create_model(c2["architecture"], pretrained=False, num_classes=c2["num_classes"], **c2["model_args"])
    m2.load_state_dict(load_file(os.path.join(args.out, "model.safetensors")), strict=True)
    acc2 = evaluate(m2, xte, yte)
    assert abs(acc2 - acc) < 1e-9, (acc2, acc)
    print(f"reloaded strictly via timm.create_model: held-out top-1 {acc2 * 100:.2f}% (matches)", flush=True)

    # Per-class accuracy for the card.
    with torch.no_grad():
        pred = torch.cat([m2(xte[i:i + 250]).argmax(-1) for i in range(0, len(xte), 250)])
    per_class = {str(c): round(float((pred[yte == c] == c).float().mean()) * 100, 1) for c in range(10)}
    metrics = {"heldout_top1": round(acc * 100, 2), "train_top1": round(tr_acc * 100, 2),
               "heldout_per_class_top1": per_class, "params": n_params, "train_seconds": round(train_s, 1),
               "total_seconds": round(time.time() - t_start, 1), "epochs": args.epochs, "batch": args.batch,
               "steps": step, "seed": args.seed,
               "file_bytes": os.path.getsize(os.path.join(args.out, "model.safetensors"))}
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(metrics, flush=True)


if __name__ == "__main__":
    main()
