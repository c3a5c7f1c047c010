"""Builds the small timm ViT fixtures that tests/vit_vs_pytorch.rs checks lowbit against.

Usage (from the repository root, in a venv with tools/requirements.txt installed):
    python tools/make_fixtures.py [--out tests/fixtures]

Each fixture folder has timm's hub layout (model.safetensors + config.json) plus
`io.safetensors` with an input batch `images` [2, 3, S, S] and timm's `logits` [2, C], and two
PNG images with timm's eval transform output (`preprocessed_*`), so the Rust image pipeline is
checked against torchvision/Pillow too. Weights are random but far from timm's init (which
makes LayerScale blocks nearly identity), so every part of the network shows in the logits.
"""

import argparse
import json
import math
import os

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config

FIXTURES = [
    # name, model_args, dtype the checkpoint is stored in
    ("vit_tiny_test", dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10), torch.float32),
    (
        "vit_layerscale_test",
        dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10, init_values=1e-5, mlp_ratio=2.0),
        torch.float16,
    ),
]


def randomize(model, gen):
    """Re-draws every parameter at a scale that keeps activations O(1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias") or name in ("cls_token", "pos_embed"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def test_images(gen):
    """A 50×41 photo-like gradient with noise (resized + cropped) and one at the input size."""
    yy, xx = np.mgrid[0:41, 0:50]
    base = np.stack([xx * 5, yy * 6, (xx + yy) * 3], axis=-1).astype(np.float64)
    noise = torch.randint(0, 60, (41, 50, 3), generator=gen).numpy()
    big = np.clip(base + noise, 0, 255).astype(np.uint8)
    small = torch.randint(0, 256, (32, 32, 3), generator=gen).numpy().astype(np.uint8)
    return {"resized": Image.fromarray(big), "exact": Image.fromarray(small)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    args = ap.parse_args()
    torch.manual_seed(0)
    for name, model_args, dtype in FIXTURES:
        gen = torch.Generator().manual_seed(len(name))
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **model_args).eval()
        randomize(model, gen)
        # The reference runs the weights exactly as stored (f16 checkpoints are rounded first).
        model = model.to(dtype).float()
        out = os.path.join(args.out, name)
        os.makedirs(out, exist_ok=True)
        state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(out, "model.safetensors"))

        cfg = model.pretrained_cfg
        num_classes = model_args.pop("num_classes")
        pretrained_cfg = dict(
            input_size=[3, 32, 32], mean=list(cfg["mean"]), std=list(cfg["std"]),
            crop_pct=0.875, interpolation="bicubic",
        )
        config = dict(architecture="vit_tiny_patch16_224", num_classes=num_classes, model_args=model_args,
                      pretrained_cfg=pretrained_cfg)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(config, f, indent=2)

        images = torch.randn(2, 3, 32, 32, generator=gen)
        with torch.no_grad():
            logits = model(images)
        tensors = {"images": images.contiguous(), "logits": logits.contiguous()}

        # timm's own eval transform for the resized image; plain ToTensor+Normalize for the
        # image already at the input size (what lowbit does instead of resize + crop).
        transform = create_transform(**resolve_data_config({}, model=model_with_cfg(model, pretrained_cfg)))
        mean = torch.tensor(pretrained_cfg["mean"]).view(3, 1, 1)
        std = torch.tensor(pretrained_cfg["std"]).view(3, 1, 1)
        for kind, img in test_images(gen).items():
            img.save(os.path.join(out, f"image_{kind}.png"))
            if kind == "resized":
                x = transform(img)
            else:
                x = (torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0 - mean) / std
            tensors[f"preprocessed_{kind}"] = x.contiguous()
            with torch.no_grad():
                tensors[f"logits_{kind}"] = model(x[None]).contiguous()
        save_file(tensors, os.path.join(out, "io.safetensors"))
        print(f"{name}: logits {logits.shape}, |max| {logits.abs().max():.3f}, transform {transform}")


def model_with_cfg(model, pretrained_cfg):
    model.pretrained_cfg = dict(model.pretrained_cfg, **pretrained_cfg)
    return model


if __name__ == "__main__":
    main()
