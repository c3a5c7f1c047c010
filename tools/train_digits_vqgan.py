#!/usr/bin/env python3
"""Train assets/models/digits-vqgan: a taming-transformers VQGAN (Encoder/Decoder/VectorQuantizer,
VQModel layout) on the 4,000 training digits of tools/datasets.py (32x32 RGB -> 8x8 tokens).

    nice -n 10 /work/venv/bin/python tools/train_digits_vqgan.py --out assets/models/digits-vqgan --seed 0

Loss: L1 + L2 reconstruction + taming's VectorQuantizer loss (beta 0.25); no GAN / perceptual loss.
Dead codes are re-initialised from encoder outputs every 100 steps for the first 80% of training.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from datasets import digits_split, seed_everything  # noqa: E402
from train_vqgan_common import (TamingVQ, evaluate, load_model, save_model, train_vq,  # noqa: E402
                                write_config, dump_json)

DDCONFIG = dict(double_z=False, z_channels=32, resolution=32, in_channels=3, out_ch=3, ch=32,
                ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
N_EMBED, EMBED_DIM = 256, 32


def to_pm1(x_uint8):
    return torch.from_numpy(x_uint8).float() / 127.5 - 1.0


def shift_batch(x, max_shift, gen):
    """Random integer translation per image with zero (= -1 after scaling) fill. x: [B,3,32,32] in [-1,1]."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    p = max_shift
    xp = torch.nn.functional.pad(x, (p, p, p, p), value=-1.0)
    d = torch.randint(0, 2 * p + 1, (b, 2), generator=gen)
    return torch.stack([xp[i, :, d[i, 0]:d[i, 0] + h, d[i, 1]:d[i, 1] + w] for i in range(b)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="assets/models/digits-vqgan")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-budget", type=float, default=None, help="stop training after this many seconds")
    args = ap.parse_args()
    seed_everything(args.seed, args.threads)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()

    xtr, ytr, xte, yte = digits_split()
    xtr, xte = to_pm1(xtr), to_pm1(xte)
    gen = torch.Generator().manual_seed(args.seed)

    def sample_batch(step):
        if step < 0:
            return xtr[torch.randperm(len(xtr), generator=gen)[:512]]
        idx = torch.randint(0, len(xtr), (args.batch,), generator=gen)
        return shift_batch(xtr[idx], 1, gen)

    model = TamingVQ(DDCONFIG, N_EMBED, EMBED_DIM)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params:,}", flush=True)
    train_s = train_vq(model, sample_batch, args.steps, args.lr, time_budget_s=args.time_budget)

    psnr, used, hist = evaluate(model, xte)
    psnr_tr, used_tr, _ = evaluate(model, xtr[:1000])
    p = hist.float() / hist.sum()
    perp = float(torch.exp(-(p * torch.log(p + 1e-12)).sum()))
    print(f"held-out PSNR {psnr:.2f} dB, codes used on held-out {used}/{N_EMBED} (perplexity {perp:.1f}); "
          f"train PSNR {psnr_tr:.2f} dB", flush=True)

    write_config(args.out, DDCONFIG, N_EMBED, EMBED_DIM)
    save_model(model, args.out)

    # Reload through taming's classes (strict) and re-check the held-out PSNR.
    m2 = load_model(args.out)
    psnr2, used2, _ = evaluate(m2, xte)
    assert abs(psnr2 - psnr) < 1e-3 and used2 == used, (psnr2, psnr, used2, used)
    print(f"reloaded strictly from {args.out}: PSNR {psnr2:.2f} dB (matches)", flush=True)
    metrics = {"heldout_psnr_db": round(psnr, 3), "train_subset_psnr_db": round(psnr_tr, 3),
               "codes_used_heldout": used, "n_embed": N_EMBED, "token_perplexity_heldout": round(perp, 2),
               "params": n_params, "train_seconds": round(train_s, 1),
               "total_seconds": round(time.time() - t_start, 1), "steps": args.steps, "batch": args.batch,
               "seed": args.seed, "file_bytes": os.path.getsize(os.path.join(args.out, "model.safetensors"))}
    dump_json(os.path.join(args.out, "metrics.json"), metrics)
    print(metrics, flush=True)


if __name__ == "__main__":
    main()
