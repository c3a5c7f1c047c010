"""Shared pieces of tools/train_digits_vqgan.py and tools/train_photo_vqgan.py.

TamingVQ assembles taming-transformers' own modules with the attribute names of
taming.models.vqgan.VQModel (encoder, decoder, quantize, quant_conv, post_quant_conv), so its
state_dict has exactly VQModel's keys (VQModel itself needs pytorch_lightning, which is not
installed; its loss/discriminator keys are not part of what we ship anyway).
"""
import json
import os
import time

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import VectorQuantizer


class TamingVQ(torch.nn.Module):
    def __init__(self, ddconfig, n_embed, embed_dim, beta=0.25):
        super().__init__()
        self.ddconfig = dict(ddconfig)
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=beta)
        self.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    # Same methods as taming's VQModel.
    def encode_pre(self, x):
        return self.quant_conv(self.encoder(x))

    def encode(self, x):
        h = self.encode_pre(x)
        quant, emb_loss, info = self.quantize(h)
        return quant, emb_loss, info

    def decode(self, quant):
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, ids):
        """ids: int64 [B, h, w] -> image [B, 3, 4h or 8h, ...] in ~[-1, 1]."""
        b, h, w = ids.shape
        zq = self.quantize.embedding(ids).permute(0, 3, 1, 2).contiguous()
        return self.decode(zq)

    def tokens(self, x):
        """x in [-1, 1] -> int64 [B, h, w] (raster order, as VectorQuantizer returns them)."""
        h = self.encode_pre(x)
        _, _, (_, _, idx) = self.quantize(h)
        return idx.view(h.shape[0], h.shape[2], h.shape[3])

    def forward(self, x):
        quant, diff, info = self.encode(x)
        return self.decode(quant), diff, info


def write_config(out, ddconfig, n_embed, embed_dim):
    cfg = {"model": {"target": "taming.models.vqgan.VQModel",
                     "params": {"embed_dim": embed_dim, "n_embed": n_embed, "ddconfig": ddconfig}}}
    with open(os.path.join(out, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False, default_flow_style=None)


def save_model(model, out):
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out, "model.safetensors"))


def load_model(out):
    """Rebuild from config.yaml with taming's classes and load model.safetensors strictly."""
    with open(os.path.join(out, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    p = cfg["model"]["params"]
    m = TamingVQ(p["ddconfig"], p["n_embed"], p["embed_dim"])
    m.load_state_dict(load_file(os.path.join(out, "model.safetensors")), strict=True)
    return m.eval()


@torch.no_grad()
def init_codebook(model, batch):
    """Initialise the codebook with random encoder outputs."""
    h = model.encode_pre(batch).permute(0, 2, 3, 1).reshape(-1, model.quantize.e_dim)
    n = model.quantize.n_e
    idx = torch.randint(0, h.shape[0], (n,))
    model.quantize.embedding.weight.copy_(h[idx] + 1e-3 * torch.randn(n, h.shape[1]))


@torch.no_grad()
def restart_dead_codes(model, usage, h_flat):
    """Codes unused since the last restart are moved onto random encoder outputs."""
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0:
        return 0
    idx = torch.randint(0, h_flat.shape[0], (len(dead),))
    model.quantize.embedding.weight[dead] = h_flat[idx] + 1e-3 * torch.randn(len(dead), h_flat.shape[1])
    return len(dead)


def train_vq(model, sample_batch, steps, lr, log_every=50, restart_every=100, restart_until=0.8,
             time_budget_s=None, log=tqdm.write, extra_loss=None, init_codes=True):
    """Generic loop. sample_batch(step) -> x in [-1, 1]. Loss: L1 + L2 + taming's VQ loss, plus
    extra_loss(xrec, x) when given."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.9))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + __import__("math").cos(__import__("math").pi * min(1.0, s / steps))))
    n_e = model.quantize.n_e
    usage = torch.zeros(n_e, dtype=torch.long)
    model.train()
    if init_codes:
        init_codebook(model, sample_batch(-1))
    t0 = time.time()
    hist = []
    for step in tqdm(range(steps), desc="training the VQGAN", unit="step", mininterval=2):
        x = sample_batch(step)
        h = model.encode_pre(x)
        quant, qloss, (perp, _, idx) = model.quantize(h)
        xrec = model.decode(quant)
        l1 = (xrec - x).abs().mean()
        l2 = ((xrec - x) ** 2).mean()
        loss = l1 + l2 + qloss
        if extra_loss is not None:
            loss = loss + extra_loss(xrec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        usage += torch.bincount(idx.flatten(), minlength=n_e)
        if (step + 1) % restart_every == 0:
            if step < restart_until * steps:
                hf = h.detach().permute(0, 2, 3, 1).reshape(-1, model.quantize.e_dim)
                nd = restart_dead_codes(model, usage, hf)
            else:
                nd = 0
            used = int((usage > 0).sum())
            usage.zero_()
        hist.append((l1.item(), l2.item(), qloss.item(), perp.item()))
        if (step + 1) % log_every == 0 or step == 0:
            a = [sum(v) / len(v) for v in zip(*hist)]
            hist = []
            el = time.time() - t0
            log(f"step {step + 1}/{steps} l1 {a[0]:.4f} l2 {a[1]:.4f} q {a[2]:.4f} perp {a[3]:.1f} "
                f"lr {sched.get_last_lr()[0]:.2e} {el:.0f}s (eta {el / (step + 1) * (steps - step - 1):.0f}s)")
        if (step + 1) % restart_every == 0 and (step + 1) % (restart_every * 5) == 0:
            log(f"  codes used in last {restart_every} steps: {used}/{n_e}, restarted {nd}")
        if time_budget_s is not None and time.time() - t0 > time_budget_s:
            log(f"time budget reached at step {step + 1}")
            break
    return time.time() - t0


def ssim(a, b, window=11, sigma=1.5):
    """Mean SSIM (Wang et al. 2004, Gaussian window, per channel) of images in [-1, 1],
    differentiable: 1 - ssim is the structural part of photo-vqgan's loss."""
    a = (a.clamp(-1, 1) + 1) / 2
    b = (b.clamp(-1, 1) + 1) / 2
    c = a.shape[1]
    t = torch.arange(window, dtype=a.dtype) - (window - 1) / 2
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()

    def blur(x):
        return F.conv2d(x, k, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean()


@torch.no_grad()
def evaluate(model, x, bs=100):
    """x in [-1, 1]. Returns (psnr, codebook usage count, token histogram)."""
    from datasets import psnr_pm1

    model.eval()
    ps, ids = [], []
    for i in range(0, len(x), bs):
        xb = x[i:i + bs]
        h = model.encode_pre(xb)
        quant, _, (_, _, idx) = model.quantize(h)
        rec = model.decode(quant)
        ps.append(psnr_pm1(rec, xb) * len(xb))
        ids.append(idx.flatten())
    ids = torch.cat(ids)
    hist = torch.bincount(ids, minlength=model.quantize.n_e)
    return sum(ps) / len(x), int((hist > 0).sum()), hist


def dump_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
