"""Builds the timm Swin fixtures that tests/swin_vs_pytorch.rs checks lowbit against.

Usage (from the repository root, with timm installed):
    python tools/make_swin_fixtures.py [--out tests/fixtures]

Small random-weight `SwinTransformer`s made with the real architecture name and `model_args`
that shrink them, saved in timm's hub layout (model.safetensors + config.json) with
`io.safetensors` holding an input batch `images` and timm's `logits`. Windows are small
enough that shifted windows and the −100 mask occur, and the last stage's grid is no larger
than its window (where timm shrinks the window and drops the shift). Weights are drawn far
from timm's init, the relative-position bias tables included, so every part shows.
"""

import argparse
import json
import math
import os

import timm
import torch
from safetensors.torch import save_file

FIXTURES = [
    # name, model_args, num_classes, dtype stored
    ("swin_tiny_test", dict(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4), window_size=4, mlp_ratio=2.0), 5,
     torch.float32),
    ("swin_f16_test", dict(img_size=32, patch_size=4, embed_dim=24, depths=(2, 2), num_heads=(2, 4), window_size=2, mlp_ratio=2.0), 0,
     torch.float16),
]
ARCH = "swin_tiny_patch4_window7_224"


def randomize(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias") or "relative_position_bias_table" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    args = ap.parse_args()
    for name, model_args, num_classes, dtype in FIXTURES:
        gen = torch.Generator().manual_seed(sum(map(ord, name)))
        model = timm.create_model(ARCH, pretrained=False, num_classes=num_classes, **model_args).eval()
        randomize(model, gen)
        state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
        out = os.path.join(args.out, name)
        os.makedirs(out, exist_ok=True)
        save_file(state, os.path.join(out, "model.safetensors"))
        model = model.to(dtype).float()  # the reference runs the weights as stored
        size = model_args["img_size"]
        cfg = model.pretrained_cfg
        pretrained_cfg = dict(input_size=[3, size, size], fixed_input_size=True, mean=list(cfg["mean"]), std=list(cfg["std"]),
                              crop_pct=0.875, interpolation="bicubic")
        margs = {k: list(v) if isinstance(v, tuple) else v for k, v in model_args.items()}
        config = dict(architecture=ARCH, num_classes=num_classes, model_args=margs, pretrained_cfg=pretrained_cfg)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        images = torch.randn(2, 3, size, size, generator=gen)
        with torch.no_grad():
            logits = model(images)
        save_file({"images": images.contiguous(), "logits": logits.contiguous()}, os.path.join(out, "io.safetensors"))
        print(f"{name}: logits {tuple(logits.shape)}, |max| {logits.abs().max():.3f}")


if __name__ == "__main__":
    main()
