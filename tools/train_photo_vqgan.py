#!/usr/bin/env python3
"""Train assets/models/photo-vqgan: a taming-transformers VQGAN (Encoder/Decoder/VectorQuantizer,
VQModel layout, x4 downsampling, fully convolutional) on random crops of the photographs bundled
in scikit-image / scikit-learn / matplotlib (tools/datasets.py), holding out chelsea for evaluation.

    nice -n 10 /work/venv/bin/python tools/train_photo_vqgan.py --out /tmp/photo-vqgan-1 --steps 2000 --seed 0
    nice -n 10 /work/venv/bin/python tools/train_photo_vqgan.py --init /tmp/photo-vqgan-1 --out assets/models/photo-vqgan \
        --steps 400 --lr 2e-4 --colour-weight 1 --seed 0

Loss: L1 + L2 reconstruction + taming's VectorQuantizer loss (beta 0.25) + a structural term
(1 - SSIM); no GAN. Augmentation: random crops at four scales, flips, and colour jitter.

ch is 64, not 32: taming's Normalize is GroupNorm(32 groups), so with 32 channels the decoder's
norm_out normalises every channel on its own over the image and conv_out never sees the mean
colour: the 32-channel model shifted the held-out crop's mean by +24.9 / -6.4 / -8.4 levels (R/G/B).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from datasets import (HELDOUT_PHOTO, VQGAN_TRAIN_PHOTOS, center_crop, load_photo, psnr_pm1,  # noqa: E402
                      seed_everything)
from train_vqgan_common import (TamingVQ, dump_json, load_model, save_model, ssim, train_vq,  # noqa: E402
                                write_config)

N_EMBED, EMBED_DIM = 512, 64
SCALES = [1.0, 0.75, 0.5, 0.35]
MAX_SIDE = 640  # larger pictures (retina, hubble) are first shrunk so that no photo dominates
SSIM_WEIGHT = 0.2


def ddconfig(ch, ch_mult):
    return dict(double_z=False, z_channels=64, resolution=32, in_channels=3, out_ch=3, ch=ch,
                ch_mult=ch_mult, num_res_blocks=1, attn_resolutions=[], dropout=0.0)


def colour_error(rec, x):
    """Per-channel mean difference rec - x, in 8-bit levels (both in [-1, 1])."""
    d = (rec.clamp(-1, 1) - x.clamp(-1, 1)) * 127.5
    return [round(float(v), 2) for v in d.mean(dim=(0, 2, 3))]


def jitter(crop, gen):
    """Colour augmentation: brightness, per-channel gain and saturation, each within +-15%."""
    r = torch.rand(5, generator=gen) * 0.3 + 0.85
    y = (crop + 1) * 0.5
    grey = y.mean(0, keepdim=True)
    y = grey + r[0] * (y - grey)
    y = y * r[1] * r[2:5, None, None]
    return (y.clamp(0, 1) * 2 - 1)


def to_pm1(im):
    """uint8 [H,W,3] -> float [1,3,H,W] in [-1,1]."""
    return torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def photo_sampler(steps, batch, c, seed):
    """sample_batch(step) -> crops [n, 3, s, s] in [-1, 1] of the training photos (step < 0: a
    large batch of small crops without jitter, for initialising codebooks)."""
    # Multi-scale pyramid of every training photo (PIL bicubic), float in [-1, 1].
    pyr = []
    for name in VQGAN_TRAIN_PHOTOS:
        im = load_photo(name)
        f = min(1.0, MAX_SIDE / max(im.shape[:2]))
        if f < 1.0:
            im = np.asarray(Image.fromarray(im).resize((round(im.shape[1] * f), round(im.shape[0] * f)), Image.BICUBIC))
        for s in SCALES:
            h, w = int(im.shape[0] * s), int(im.shape[1] * s)
            ims = np.asarray(Image.fromarray(im).resize((w, h), Image.BICUBIC)) if s != 1.0 else im
            pyr.append(to_pm1(ims)[0])
    weights = torch.tensor([p.shape[1] * p.shape[2] for p in pyr], dtype=torch.float)
    print(f"{len(VQGAN_TRAIN_PHOTOS)} training photos x {len(SCALES)} scales; held out: {HELDOUT_PHOTO}", flush=True)
    gen = torch.Generator().manual_seed(seed)

    # Crop-size schedule: 32 px only for the first 30% of the steps (fast codebook learning), then
    # cycling 32/64/128/256 px at a roughly constant pixel budget per batch, so that GroupNorm statistics
    # and the mid-block attention also see whole-image sizes (trained on 32 px crops only, a 256x256
    # image came out colour-shifted: 16.4 dB vs 26.7 dB when coded as 32x32 tiles).
    sizes = [(c, batch), (2 * c, max(1, batch // 4)), (4 * c, max(1, batch // 16)),
             (8 * c, max(1, batch // 32))]

    def sample_batch(step):
        if step < 0:
            cs, n = c, 512
        elif step < 0.3 * steps:
            cs, n = sizes[0]
        else:
            cs, n = sizes[step % len(sizes)]
        w = torch.tensor([float(p.shape[1] >= cs and p.shape[2] >= cs) for p in pyr]) * weights
        which = torch.multinomial(w, n, replacement=True, generator=gen)
        out = []
        for k in which.tolist():
            p = pyr[k]
            t = int(torch.randint(0, p.shape[1] - cs + 1, (1,), generator=gen))
            l = int(torch.randint(0, p.shape[2] - cs + 1, (1,), generator=gen))
            crop = p[:, t:t + cs, l:l + cs]
            if torch.rand(1, generator=gen) < 0.5:
                crop = crop.flip(2)
            if step >= 0:
                crop = jitter(crop, gen)
            out.append(crop)
        return torch.stack(out)

    return sample_batch


@torch.no_grad()
def recon_psnr(model, x):
    model.eval()
    quant, _, (_, _, idx) = model.encode(x)
    rec = model.decode(quant)
    return psnr_pm1(rec, x), rec, idx


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="assets/models/photo-vqgan")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=32, help="smallest crop side; also 2x, 4x, 8x after 30%% of the steps")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-budget", type=float, default=None)
    ap.add_argument("--ch", type=int, default=64)
    ap.add_argument("--ch-mult", default="1,1,1")
    ap.add_argument("--colour-weight", type=float, default=0.0,
                    help="weight of |mean colour of the reconstruction - of the crop| (per image and channel, L1)")
    ap.add_argument("--init", default=None, help="continue from this folder's model (its config wins over --ch/--ch-mult)")
    args = ap.parse_args()
    DDCONFIG = ddconfig(args.ch, [int(v) for v in args.ch_mult.split(",")])
    seed_everything(args.seed, args.threads)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()

    sample_batch = photo_sampler(args.steps, args.batch, args.crop, args.seed)
    c = args.crop

    if args.init:
        model = load_model(args.init).train()
        DDCONFIG = model.ddconfig
    else:
        model = TamingVQ(DDCONFIG, N_EMBED, EMBED_DIM)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params:,}", flush=True)
    train_s = train_vq(model, sample_batch, args.steps, args.lr, time_budget_s=args.time_budget,
                       extra_loss=lambda xrec, x: SSIM_WEIGHT * (1 - ssim(xrec, x))
                       + args.colour_weight * (xrec.mean(dim=(2, 3)) - x.mean(dim=(2, 3))).abs().mean(),
                       init_codes=args.init is None)

    held = load_photo(HELDOUT_PHOTO)
    x_crop = to_pm1(center_crop(held, 256))
    hh, ww = held.shape[0] // 4 * 4, held.shape[1] // 4 * 4
    x_full = to_pm1(held[:hh, :ww])
    psnr_crop, rec_crop, idx_crop = recon_psnr(model, x_crop)
    psnr_full, _, idx_full = recon_psnr(model, x_full)
    used_full = int(torch.unique(idx_full).numel())
    colour_crop = colour_error(rec_crop, x_crop)
    with torch.no_grad():
        ssim_crop = float(ssim(rec_crop, x_crop))
    # Codebook usage over training-photo crops at 256x256 (or the whole image where smaller).
    tr_ids = []
    with torch.no_grad():
        for name in VQGAN_TRAIN_PHOTOS:
            im = load_photo(name)
            s = min(256, im.shape[0] // 4 * 4, im.shape[1] // 4 * 4)
            _, _, (_, _, idx) = model.encode(to_pm1(center_crop(im, s)))
            tr_ids.append(idx.flatten())
    tr_ids = torch.cat(tr_ids)
    used_train = int(torch.unique(tr_ids).numel())
    used_all = int(torch.unique(torch.cat([tr_ids, idx_full.flatten()])).numel())
    print(f"held-out {HELDOUT_PHOTO}: PSNR {psnr_crop:.2f} dB (256x256 center crop), {psnr_full:.2f} dB "
          f"(full {hh}x{ww}); codes used: {used_full} on it, {used_train} on the training photos, "
          f"{used_all}/{N_EMBED} together; mean colour error (R, G, B levels) {colour_crop}, SSIM {ssim_crop:.4f}",
          flush=True)

    write_config(args.out, DDCONFIG, N_EMBED, EMBED_DIM)
    save_model(model, args.out)
    rec_u8 = ((rec_crop[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    side = np.concatenate([center_crop(held, 256), rec_u8], 1)
    Image.fromarray(side).save(os.path.join(args.out, f"recon_{HELDOUT_PHOTO}_256.png"))

    m2 = load_model(args.out)
    psnr2, _, _ = recon_psnr(m2, x_crop)
    assert abs(psnr2 - psnr_crop) < 1e-3, (psnr2, psnr_crop)
    print(f"reloaded strictly from {args.out}: PSNR {psnr2:.2f} dB (matches)", flush=True)

    metrics = {"heldout": HELDOUT_PHOTO, "heldout_psnr_db_center256": round(psnr_crop, 3),
               "heldout_psnr_db_full": round(psnr_full, 3),
               "heldout_mean_colour_error_rgb_levels": colour_crop, "heldout_ssim_center256": round(ssim_crop, 4), "heldout_full_size": [hh, ww],
               "codes_used_heldout_full": used_full, "codes_used_train_photos": used_train,
               "codes_used_all": used_all, "n_embed": N_EMBED, "params": n_params,
               "train_seconds": round(train_s, 1), "steps": args.steps, "batch": args.batch, "crop": c,
               "seed": args.seed, "init": args.init, "lr": args.lr, "colour_weight": args.colour_weight, "ch": DDCONFIG["ch"], "ch_mult": DDCONFIG["ch_mult"], "total_seconds": round(time.time() - t_start, 1),
               "file_bytes": os.path.getsize(os.path.join(args.out, "model.safetensors"))}
    if args.init and os.path.exists(os.path.join(args.init, "metrics.json")):
        with open(os.path.join(args.init, "metrics.json")) as f:
            metrics["stage1"] = json.load(f)
    dump_json(os.path.join(args.out, "metrics.json"), metrics)
    print(metrics, flush=True)


if __name__ == "__main__":
    main()
