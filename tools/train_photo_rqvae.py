#!/usr/bin/env python3
"""Train assets/models/photo-rqvae: a residual-VQ tokenizer in RQ-VAE's layout
(kakaobrain/rq-vae-transformer `RQVAE`: taming Encoder/Decoder, quant_conv, an RQBottleneck with
D codebooks `quantizer.codebooks.{i}.weight` [n_embed + 1, embed_dim] whose last row is RQ-VAE's
padding entry, post_quant_conv), on the photographs photo-vqgan trains on.

    nice -n 10 /work/venv/bin/python tools/train_photo_rqvae.py --init assets/models/photo-vqgan \
        --out assets/models/photo-rqvae --steps 600 --batch 16 --lr 5e-4 --train-encoder --seed 0

Warm start: encoder, decoder and both 1x1 convs are photo-vqgan's, and stage 0's codebook is its
codebook, so one stage reproduces photo-vqgan; stage 1 starts on random residuals of training
crops. Then the codes and the decoder are fine-tuned (the encoder stays photo-vqgan's unless
--train-encoder: the decoder fine-tuning of "Extreme image compression using fine-tuned VQGANs")
with the reconstruction loss of photo-vqgan (L1 + L2 +
0.2 (1 - SSIM)), RQ-VAE's commitment loss (the mean over stages of |z - sg(partial sum)|^2, beta
0.25) and a codebook loss per stage (|sg(residual) - code|^2; RQ-VAE updates codes by EMA
instead, which is a detail of training, not of the model lowbit runs).

Each token costs log2(n_embed) bits per stage: with 2 stages of 512 codes and 4x4 pixels per token,
18 bits per 16 pixels before entropy coding (photo-vqgan: 9).
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
from safetensors.torch import load_file, save_file  # noqa: E402
from taming.modules.diffusionmodules.model import Decoder, Encoder  # noqa: E402
from tqdm import tqdm  # noqa: E402

from datasets import HELDOUT_PHOTO, center_crop, load_photo, psnr_pm1, seed_everything  # noqa: E402
from train_photo_vqgan import SSIM_WEIGHT, colour_error, photo_sampler, to_pm1  # noqa: E402
from train_vqgan_common import dump_json, ssim  # noqa: E402

BETA = 0.25


class RQBottleneck(torch.nn.Module):
    """RQ-VAE's quantizer at code_shape == latent_shape (no spatial folding): D nearest-code
    searches, each on what the previous stages left."""

    def __init__(self, n_embed, embed_dim, depth):
        super().__init__()
        self.n_embed = n_embed
        self.codebooks = torch.nn.ModuleList(torch.nn.Embedding(n_embed + 1, embed_dim) for _ in range(depth))
        for cb in self.codebooks:
            torch.nn.init.zeros_(cb.weight[-1:].data)

    def forward(self, z, depth=None):
        """z [B, C, h, w] -> (quantized [B, C, h, w] (straight-through), loss, ids [B, D, h, w])."""
        b, c, h, w = z.shape
        zf = z.permute(0, 2, 3, 1).reshape(-1, c)
        r, q = zf, torch.zeros_like(zf)
        ids, loss = [], 0.0
        books = self.codebooks[:depth] if depth else self.codebooks
        for cb in books:
            e = cb.weight[:-1]
            d = r.detach().pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * r.detach() @ e.t()
            t = d.argmin(1)
            code = e[t]
            loss = loss + (r.detach() - code).pow(2).mean()
            q = q + code.detach()
            loss = loss + BETA * (zf - q).pow(2).mean() / len(books)
            r = r - code.detach()
            ids.append(t.view(b, h, w))
        quant = zf + (q - zf).detach()
        # The codebook gradient above is per stage; the straight-through estimate feeds the decoder.
        return quant.view(b, h, w, c).permute(0, 3, 1, 2), loss, torch.stack(ids, 1)

    def lookup(self, ids):
        """ids [B, D, h, w] -> the sum of each stage's code, [B, C, h, w]."""
        q = sum(cb.weight[:-1][ids[:, i]] for i, cb in enumerate(self.codebooks))
        return q.permute(0, 3, 1, 2)


class RQVAE(torch.nn.Module):
    """RQ-VAE's attribute names (encoder, decoder, quant_conv, quantizer, post_quant_conv)."""

    def __init__(self, ddconfig, n_embed, embed_dim, depth):
        super().__init__()
        self.ddconfig = dict(ddconfig)
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.quantizer = RQBottleneck(n_embed, embed_dim, depth)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def forward(self, x, depth=None):
        z = self.quant_conv(self.encoder(x))
        quant, loss, ids = self.quantizer(z, depth)
        return self.decoder(self.post_quant_conv(quant)), loss, ids, z


def config_json(ddconfig, n_embed, embed_dim, depth, side):
    """lowbit's config.json for RQ-VAE (tools/convert_ckpt.py writes the same for upstream
    checkpoints): the taming ddconfig and RQ-VAE's latent/code shapes at `side` pixels."""
    h = side // 2 ** (len(ddconfig["ch_mult"]) - 1)
    return {"architecture": "rvq", "upstream": "rq-vae", "ddconfig": ddconfig, "embed_dim": embed_dim,
            "n_embed": n_embed, "latent_shape": [h, h, embed_dim], "code_shape": [h, h, depth],
            "shared_codebook": False}


def warm_start(model, init_dir, sample_batch):
    """photo-vqgan's weights; stage 0 = its codebook, later stages = random residuals."""
    state = load_file(os.path.join(init_dir, "model.safetensors"))
    codes = state.pop("quantize.embedding.weight")
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("quantizer.") for k in missing), (missing, unexpected)
    with torch.no_grad():
        model.quantizer.codebooks[0].weight[:-1].copy_(codes)
        z = model.quant_conv(model.encoder(sample_batch(-1)))
        zf = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        r = zf
        for cb in model.quantizer.codebooks:
            e = cb.weight[:-1]
            if cb is not model.quantizer.codebooks[0]:
                pick = torch.randint(0, r.shape[0], (e.shape[0],))
                e.copy_(r[pick])
            t = (r.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * r @ e.t()).argmin(1)
            r = r - e[t]


@torch.no_grad()
def restart_dead(cb, usage, residual):
    dead = (usage == 0).nonzero().flatten()
    if len(dead):
        pick = torch.randint(0, residual.shape[0], (len(dead),))
        cb.weight[dead] = residual[pick] + 1e-3 * torch.randn(len(dead), residual.shape[1])
    return len(dead)


def train(model, sample_batch, steps, lr, restart_every=100):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.5, 0.9))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / steps))))
    n = model.quantizer.n_embed
    usage = torch.zeros(len(model.quantizer.codebooks), n, dtype=torch.long)
    t0 = time.time()
    model.train()
    for step in tqdm(range(steps), desc="training photo-rqvae", unit="step", mininterval=5):
        x = sample_batch(step)
        rec, qloss, ids, z = model(x)
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + qloss + SSIM_WEIGHT * (1 - ssim(rec, x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        for i in range(ids.shape[1]):
            usage[i] += torch.bincount(ids[:, i].flatten(), minlength=n)
        if (step + 1) % restart_every == 0:
            if step < 0.8 * steps:
                # Later stages only: stage 0 is photo-vqgan's trained codebook.
                with torch.no_grad():
                    zf = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                    r = zf - model.quantizer.codebooks[0].weight[:-1][ids[:, 0].flatten()]
                    for i in range(1, ids.shape[1]):
                        restart_dead(model.quantizer.codebooks[i], usage[i], r)
                        r = r - model.quantizer.codebooks[i].weight[:-1][ids[:, i].flatten()]
            tqdm.write(f"step {step + 1}: loss {loss.item():.4f}, codes used per stage {[(u > 0).sum().item() for u in usage]}, {time.time() - t0:.0f} s")
            usage.zero_()
    return time.time() - t0


@torch.no_grad()
def psnr_at_depth(model, x, depth):
    model.eval()
    rec, _, ids, _ = model(x, depth)
    return psnr_pm1(rec, x), rec, ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", default="assets/models/photo-vqgan")
    ap.add_argument("--out", default="assets/models/photo-rqvae")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-encoder", action="store_true",
                    help="also fine-tune the encoder and quant_conv (default: frozen, as photo-vqgan's: only the codes and the decoder learn)")
    args = ap.parse_args()
    seed_everything(args.seed, args.threads)
    os.makedirs(args.out, exist_ok=True)
    import yaml
    with open(os.path.join(args.init, "config.yaml")) as f:
        p = yaml.safe_load(f)["model"]["params"]
    model = RQVAE(p["ddconfig"], p["n_embed"], p["embed_dim"], args.depth)
    sample_batch = photo_sampler(args.steps, args.batch, args.crop, args.seed)
    warm_start(model, args.init, sample_batch)
    held = load_photo(HELDOUT_PHOTO)
    x_crop = to_pm1(center_crop(held, 256))
    before = [psnr_at_depth(model, x_crop, d)[0] for d in range(1, args.depth + 1)]
    print(f"warm start: held-out PSNR per depth {[round(v, 2) for v in before]}", flush=True)
    if not args.train_encoder:
        for m in (model.encoder, model.quant_conv):
            m.requires_grad_(False)
    train_s = train(model, sample_batch, args.steps, args.lr)

    after = [psnr_at_depth(model, x_crop, d) for d in range(1, args.depth + 1)]
    psnr, rec, ids = after[-1]
    colour = colour_error(rec, x_crop)
    ssim_crop = float(ssim(rec, x_crop))
    print(f"held-out {HELDOUT_PHOTO} 256x256: PSNR per depth {[round(a[0], 2) for a in after]}, SSIM {ssim_crop:.4f}, colour {colour}", flush=True)

    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(args.out, "model.safetensors"))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config_json(p["ddconfig"], p["n_embed"], p["embed_dim"], args.depth, 128), f, indent=1)
    rec_u8 = ((rec[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(np.concatenate([center_crop(held, 256), rec_u8], 1)).save(os.path.join(args.out, f"recon_{HELDOUT_PHOTO}_256.png"))
    # Reload strictly: the file holds exactly the model.
    m2 = RQVAE(p["ddconfig"], p["n_embed"], p["embed_dim"], args.depth)
    m2.load_state_dict(load_file(os.path.join(args.out, "model.safetensors")), strict=True)
    assert abs(psnr_at_depth(m2, x_crop, None)[0] - psnr) < 1e-3
    dump_json(os.path.join(args.out, "metrics.json"), {
        "heldout": HELDOUT_PHOTO, "heldout_psnr_db_center256": round(psnr, 3),
        "heldout_psnr_db_center256_per_depth": [round(a[0], 3) for a in after],
        "warm_start_psnr_db_per_depth": [round(v, 3) for v in before],
        "heldout_ssim_center256": round(ssim_crop, 4), "heldout_mean_colour_error_rgb_levels": colour,
        "codes_used_heldout_per_stage": [int(torch.unique(ids[:, i]).numel()) for i in range(args.depth)],
        "depth": args.depth, "n_embed": p["n_embed"], "steps": args.steps, "lr": args.lr, "seed": args.seed,
        "init": args.init, "train_encoder": args.train_encoder, "batch": args.batch, "train_seconds": round(train_s, 1),
        "params": sum(v.numel() for v in model.parameters()),
        "file_bytes": os.path.getsize(os.path.join(args.out, "model.safetensors"))})


if __name__ == "__main__":
    main()
