#!/usr/bin/env python3
"""Outlier fixtures: assets/models/photo-vit (a real trained timm ViT) with the activation
statistics that make big pretrained ViTs hard to quantize planted into it (issue 13.3).

    /work/venv/bin/python tools/make_outlier_fixtures.py --out tests/fixtures/outlier \
        --data /tmp/photo-data

We cannot download a pretrained ViT, and photo-vit's activations are tame (its largest post-LN
channel is ~2-3x the median channel's max). Real ViT-B/L measure 4-6x (qkv/fc1 inputs), 5-14x
(fc2 input, post-GELU), up to 15x in the residual stream, and 50-100x+ "massive activations" in a
few channels of a few tokens (CLIP, DINOv2). Each fixture reproduces one of these:

* `outlier-ln` (exactly function-preserving): in every block, 4 channels of norm1's and norm2's
  output are scaled by s_c (LayerNorm weight and bias x s_c) and the next Linear's input
  columns (qkv, fc1) by 1/s_c. s_c = target_c x (median channel max) / (channel c's max), with
  targets 5, 8, 11, 15, so the largest channel's max is ~15x the median one's.
* `outlier-gelu` (NOT exactly function-preserving): 4 hidden units of every fc1 get their
  weight row and bias x s and fc2's input column / s, targets 5, 7, 9, 12 x the median
  post-GELU channel max. GELU(s z)/s = GELU(z) only for z >> 0 (the negative lobe shrinks), so
  the function moves a little: its own f32 logits are the reference (stats.json has the cosine
  to photo-vit's logits).
* `massive` (NOT function-preserving): two residual-stream channels carry +M and -M on two
  fixed patch tokens (added to pos_embed, so every block input has them), M = 80 x the median
  channel max of block 0's input: the "massive activations" of Sun et al. (2024) in CLIP/DINOv2
  ViTs (a few dims, a few low-information tokens, ~100x). LayerNorm then squashes those two
  tokens (they turn into attention sinks), so the function changes: its own f32 logits are the
  reference, stats.json has its held-out top-1 next to photo-vit's.
* `layerscale` (exactly function-preserving): DINOv2/CaiT-style LayerScale: `init_values` in the
  config, ls1/ls2 gamma per channel log-uniform in [1e-3, 1] (DINOv2 ViT-S/14's trained gammas
  span ~1e-3..1), and attn.proj / mlp.fc2 weight rows and biases / gamma.

Each fixture folder gets model.safetensors, config.json (photo-vit's, plus init_values for
layerscale) and stats.json: the measured ratio (largest channel max / median channel max over
the calibration crops' tokens) of every block Linear's input and every block's input, before
and after planting, plus f32 top-1 and the cosine of its logits to photo-vit's.

`--src DIR` plants into another model trained on the same data (the twelve-block stand-in:
`train_photo_vit.py --depth 12 --embed-dim 192 --heads 3`); stats.json's `photo_vit_*` keys
then describe that model (`source` names it).

`--data DIR` also exports photo-vit's data as images: DIR/calib (64 random crops of the
training region, seed 0, training's transform without jitter; `--data-calib N` exports N,
the first 64 the same) and DIR/test/<label>/ (the 180
held-out crops of the right quarters that photo-vit's model card reports).
"""
import argparse
import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from datasets import PHOTO_CLASSES, load_class_picture  # noqa: E402
from train_photo_vit import crop_resize, grid_crops, split, to_tensor  # noqa: E402

SRC = "assets/models/photo-vit"
# The calibration crops every fixture is planted on (and the default count --data exports).
PLANT_CROPS = 64


def load_model(folder, cfg=None):
    cfg = cfg or json.load(open(os.path.join(folder, "config.json")))
    m = timm.create_model(cfg["architecture"], pretrained=False, num_classes=cfg["num_classes"], **cfg["model_args"])
    m.load_state_dict(load_file(os.path.join(folder, "model.safetensors")), strict=True)
    return m.eval(), cfg


def data(seed=0, n_calib=PLANT_CROPS):
    """(calibration crops [n,3,64,64], held-out crops, held-out labels), all in [-1, 1]."""
    pics = [to_tensor(load_class_picture(n)) for n in PHOTO_CLASSES]
    train, test = zip(*[split(p) for p in pics])
    xte, yte = grid_crops(test)
    gen = torch.Generator().manual_seed(seed)
    xs = []
    for i in range(n_calib):
        r = train[i % len(train)]
        h, w = r.shape[1:]
        size = int(min(40, h, w) + torch.rand(1, generator=gen) * (min(h, w) - min(40, h, w)))
        top = int(torch.randint(0, h - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
        xs.append(crop_resize(r, top, left, size))
    return torch.stack(xs), xte, yte


def save_png(x, path):
    """[3,H,W] in [-1,1] -> 8-bit PNG (the engine's transform maps it back to the same values up
    to rounding: mean = std = 0.5, crop_pct 1.0, same size)."""
    im = ((x.clamp(-1, 1) * 0.5 + 0.5) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(im).save(path)


def quantize_like_png(x):
    return ((x.clamp(-1, 1) * 0.5 + 0.5) * 255).round() / 255 * 2 - 1


@torch.no_grad()
def channel_max(model, x):
    """{point: per-channel max |value| over all tokens of x} for every block input ("blocks.N")
    and every block Linear input ("blocks.N.attn.qkv", ...)."""
    out, hooks = {}, []

    def grab(name):
        def f(_mod, inp):
            v = inp[0].detach().abs().reshape(-1, inp[0].shape[-1]).amax(0)
            out[name] = torch.maximum(out[name], v) if name in out else v
        return f

    for i, b in enumerate(model.blocks):
        hooks.append(b.register_forward_pre_hook(grab(f"blocks.{i}")))
        for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            hooks.append(b.get_submodule(n).register_forward_pre_hook(grab(f"blocks.{i}.{n}")))
    model(x)
    for h in hooks:
        h.remove()
    return out


def ratios(cmax):
    """largest channel max / median channel max, per point (the issue's measure)."""
    return {k: round(float(v.max() / v.median()), 2) for k, v in cmax.items()}


def plant_ln(model, calib, rng):
    cm = channel_max(model, calib)
    targets = [5.0, 8.0, 11.0, 15.0]
    for i, b in enumerate(model.blocks):
        for norm, lin, point in ((b.norm1, b.attn.qkv, "attn.qkv"), (b.norm2, b.mlp.fc1, "mlp.fc1")):
            m = cm[f"blocks.{i}.{point}"]
            chans = rng.choice(len(m), size=len(targets), replace=False)
            for c, t in zip(chans, targets):
                s = float(t * m.median() / m[c])
                norm.weight.data[c] *= s
                norm.bias.data[c] *= s
                lin.weight.data[:, c] /= s


def plant_gelu(model, calib, rng):
    cm = channel_max(model, calib)
    targets = [5.0, 7.0, 9.0, 12.0]
    for i, b in enumerate(model.blocks):
        m = cm[f"blocks.{i}.mlp.fc2"]
        units = rng.choice(len(m), size=len(targets), replace=False)
        for u, t in zip(units, targets):
            # GELU(s z) ~ s z for z > 0: the unit's max grows ~s-fold.
            s = max(1.0, float(t * m.median() / m[u]))
            b.mlp.fc1.weight.data[u] *= s
            b.mlp.fc1.bias.data[u] *= s
            b.mlp.fc2.weight.data[:, u] /= s


def plant_massive(model, calib, rng, factor=80.0):
    cm = channel_max(model, calib)
    med = float(cm["blocks.0"].median())
    d = model.pos_embed.shape[-1]
    chans = rng.choice(d, size=2, replace=False)
    n_prefix = model.num_prefix_tokens
    n_patches = model.pos_embed.shape[1] - n_prefix
    # Two patch tokens away from the centre (corners): low-information positions, as in the paper.
    tokens = [n_prefix + 0, n_prefix + n_patches - 1]
    for t in tokens:
        model.pos_embed.data[0, t, chans[0]] += factor * med
        model.pos_embed.data[0, t, chans[1]] -= factor * med
    return {"channels": [int(c) for c in chans], "tokens": tokens, "added": round(factor * med, 3)}


def plant_layerscale(model, cfg, rng):
    """Returns a new model with LayerScale modules (timm's init_values) and the same function."""
    cfg = copy.deepcopy(cfg)
    cfg["model_args"]["init_values"] = 1.0
    m2 = timm.create_model(cfg["architecture"], pretrained=False, num_classes=cfg["num_classes"], **cfg["model_args"])
    state = model.state_dict()
    d = model.pos_embed.shape[-1]
    for i, b in enumerate(model.blocks):
        for ls, lin in (("ls1", "attn.proj"), ("ls2", "mlp.fc2")):
            g = torch.from_numpy(10 ** rng.uniform(-3, 0, size=d)).float()
            state[f"blocks.{i}.{ls}.gamma"] = g
            state[f"blocks.{i}.{lin}.weight"] = state[f"blocks.{i}.{lin}.weight"] / g[:, None]
            state[f"blocks.{i}.{lin}.bias"] = state[f"blocks.{i}.{lin}.bias"] / g
    m2.load_state_dict(state, strict=True)
    return m2.eval(), cfg


def random_head(model, cfg, calib, weight):
    """The issue's measuring protocol for a backbone without a task head: a seeded random head
    centred on the calibration features (bias = -W·mean feature), so the logits are the
    features' deviations from their mean, in random directions. Harsher than a trained head:
    an error in any feature direction moves them, and the common part of the features (most of
    their norm) no longer dilutes it."""
    feats = model.forward_head(model.forward_features(calib), pre_logits=True)
    head = torch.nn.Linear(feats.shape[-1], weight.shape[0])
    head.weight.data = weight.clone()
    head.bias.data = -(weight @ feats.mean(0))
    model.head = head
    model.num_classes = weight.shape[0]
    cfg = copy.deepcopy(cfg)
    cfg["num_classes"] = weight.shape[0]
    cfg["label_names"] = [f"direction {i}" for i in range(weight.shape[0])]
    return model, cfg


def write(folder, model, cfg, stats, xte):
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(folder, "stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    # Reload strictly from what was written (the config must rebuild the same model).
    m2, _ = load_model(folder)
    assert torch.allclose(m2(xte[:4]), model(xte[:4]), atol=1e-5)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/outlier")
    ap.add_argument("--data", help="also export photo-vit's calibration/held-out crops as images here")
    ap.add_argument("--data-calib", type=int, default=PLANT_CROPS,
                    help=f"calibration crops --data exports (the first {PLANT_CROPS} are always the same; more for --calib-count 128+)")
    ap.add_argument("--src", default=SRC,
                    help="the trained model to plant into (a timm ViT folder trained on photo-vit's data, e.g. "
                         "train_photo_vit.py --depth 12); the fixtures' stats.json compare against it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random-head", type=int, default=0, metavar="N",
                    help="replace every model's head by the same seeded random N-class head, centred on that "
                         "model's calibration features (issue 13's protocol on a real ViT), and also write the "
                         "source model so changed to OUT/base")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    exported, xte, yte = data(args.seed, n_calib=max(PLANT_CROPS, args.data_calib))
    # The engine reads 8-bit images: measure on the same values. The fixtures are planted on
    # the first PLANT_CROPS crops whatever --data-calib exports (the draws are sequential).
    exported, xte = quantize_like_png(exported), quantize_like_png(xte)
    calib = exported[:PLANT_CROPS]
    labels = [PHOTO_CLASSES[n][0] for n in PHOTO_CLASSES]
    if args.data:
        os.makedirs(os.path.join(args.data, "calib"), exist_ok=True)
        for i, x in enumerate(exported[:args.data_calib]):
            save_png(x, os.path.join(args.data, "calib", f"calib-{i:03d}.png"))
        for i, (x, y) in enumerate(zip(xte, yte.tolist())):
            d = os.path.join(args.data, "test", labels[y])
            os.makedirs(d, exist_ok=True)
            save_png(x, os.path.join(d, f"crop-{i:03d}.png"))
        print(f"wrote {args.data_calib} calibration and {len(xte)} held-out crops to {args.data}")

    base, cfg = load_model(args.src)
    head = None
    if args.random_head:
        d = base.head.weight.shape[1]
        gen = torch.Generator().manual_seed(args.seed)
        head = torch.randn(args.random_head, d, generator=gen) / d ** 0.5
        base, cfg = random_head(base, cfg, calib, head)
        write(os.path.join(args.out, "base"), base, cfg, {"source": args.src, "seed": args.seed, "random_head": args.random_head}, xte)
    ref_logits = base(xte)
    base_top1 = float((ref_logits.argmax(-1) == yte).float().mean())
    base_ratios = ratios(channel_max(base, calib))
    print(f"{args.src}: held-out top-1 {base_top1 * 100:.2f}%, ratios {base_ratios}")
    for index, name in enumerate(("outlier-ln", "outlier-gelu", "massive", "layerscale")):
        # Seeded per fixture (not hash(name): Python salts string hashes per process).
        rng = np.random.default_rng([args.seed, index])
        model, mcfg = copy.deepcopy(base), copy.deepcopy(cfg)
        extra = {}
        if name == "outlier-ln":
            plant_ln(model, calib, rng)
        elif name == "outlier-gelu":
            plant_gelu(model, calib, rng)
        elif name == "massive":
            extra = plant_massive(model, calib, rng)
        else:
            model, mcfg = plant_layerscale(model, mcfg, rng)
        if head is not None:
            # Centred on this model's own features (massive and outlier-gelu change them).
            model, mcfg = random_head(model, mcfg, calib, head)
        logits = model(xte)
        cos = torch.nn.functional.cosine_similarity(logits, ref_logits, dim=-1)
        r = ratios(channel_max(model, calib))
        stats = {
            "source": args.src, "seed": args.seed,
            "heldout_top1": round(float((logits.argmax(-1) == yte).float().mean()) * 100, 2),
            "photo_vit_heldout_top1": round(base_top1 * 100, 2),
            "logits_cosine_to_photo_vit": {"min": round(float(cos.min()), 7), "mean": round(float(cos.mean()), 7)},
            "top1_agreement_with_photo_vit": round(float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()), 4),
            "ratio_largest_over_median_channel_max": r,
            "photo_vit_ratio": base_ratios,
            **({"massive": extra} if extra else {}),
            **({"random_head": args.random_head} if head is not None else {}),
        }
        write(os.path.join(args.out, name), model, mcfg, stats, xte)
        print(f"{name}: top-1 {stats['heldout_top1']}%, cos to photo-vit min {stats['logits_cosine_to_photo_vit']['min']}, "
              f"ratios {r}")


if __name__ == "__main__":
    main()
