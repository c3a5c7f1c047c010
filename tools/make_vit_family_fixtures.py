"""Builds the timm ViT-family fixtures that tests/vit_family.rs checks lowbit against.

Usage (from the repository root, with timm installed):
    python tools/make_vit_family_fixtures.py [--out tests/fixtures]

One small random-weight model per published family (DINOv2 with registers, CLIP with
QuickGELU, DeiT distilled, DeiT III, a GAP model, qk_norm, pooled features, a resampled and a
dynamic position embedding, an f16 checkpoint), each made with the real timm architecture
name and `model_args` that shrink its widths, saved in timm's hub layout (model.safetensors +
config.json) with `io.safetensors` holding an input batch `images` and timm's `logits`.
"""

import argparse
import json
import math
import os
import tempfile

import timm
import torch
from safetensors.torch import save_file

SMALL = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)

# name, architecture, model_args, num_classes, dtype, extra: dict(ckpt_img=… to make the
# checkpoint at another size than the config's, input=… for the eval input size)
FIXTURES = [
    ("vit_dinov2_reg4_test", "vit_small_patch14_reg4_dinov2", dict(img_size=42, **SMALL), 0, torch.float32, {}),
    ("vit_clip_quickgelu_test", "vit_base_patch16_clip_quickgelu_224", dict(img_size=32, patch_size=8, **SMALL), 10, torch.float16, {}),
    ("deit_distilled_test", "deit_small_distilled_patch16_224", dict(img_size=32, patch_size=8, **SMALL), 10, torch.float32, {}),
    ("deit3_test", "deit3_small_patch16_224", dict(img_size=32, patch_size=8, **SMALL), 10, torch.float32, {}),
    ("vit_gap_test", "vit_medium_patch16_gap_256", dict(img_size=32, patch_size=8, **SMALL), 10, torch.float32, {}),
    ("vit_qknorm_test", "vit_small_patch16_224",
     dict(img_size=32, patch_size=8, qk_norm=True, qkv_bias=False, proj_bias=False, act_layer="gelu_tanh", reg_tokens=1,
          global_pool="avgmax", pool_include_prefix=True, **SMALL), 10, torch.float32, {}),
    ("vit_tokens_test", "vit_small_patch16_224", dict(img_size=32, patch_size=8, global_pool="", **SMALL), 0, torch.float32, {}),
    ("vit_resampled_test", "vit_small_patch16_224", dict(img_size=24, patch_size=8, **SMALL), 10, torch.float32, dict(ckpt_img=32)),
    ("vit_dynamic_test", "vit_small_patch14_dinov2", dict(img_size=28, patch_size=7, dynamic_img_size=True, **SMALL), 10,
     torch.float32, dict(input=42)),
]


def randomize(model, gen):
    """Re-draws every parameter at a scale that keeps activations O(1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias") or p.dim() == 3:  # biases and the cls/dist/reg tokens, pos_embed
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
    args = ap.parse_args()
    for name, arch, model_args, num_classes, dtype, extra in FIXTURES:
        gen = torch.Generator().manual_seed(sum(map(ord, name)))
        ckpt_args = dict(model_args, img_size=extra.get("ckpt_img", model_args["img_size"]))
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **ckpt_args).eval()
        randomize(model, gen)
        state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
        out = os.path.join(args.out, name)
        os.makedirs(out, exist_ok=True)
        save_file(state, os.path.join(out, "model.safetensors"))
        if "ckpt_img" in extra:
            # The hub path: timm loads the file into a model of another img_size through
            # checkpoint_filter_fn, which resamples pos_embed (num_classes in the overlay keeps
            # timm from dropping the head as a mismatched classifier).
            model = timm.create_model(arch, pretrained=True, num_classes=num_classes, **model_args,
                                      pretrained_cfg_overlay=dict(file=os.path.join(out, "model.safetensors"), num_classes=num_classes)).eval()
        else:
            model = model.to(dtype).float()  # the reference runs the weights as stored
        size = extra.get("input", model_args["img_size"])
        cfg = model.pretrained_cfg
        pretrained_cfg = dict(input_size=[3, size, size], fixed_input_size=not model_args.get("dynamic_img_size", False),
                              mean=list(cfg["mean"]), std=list(cfg["std"]), crop_pct=0.875, interpolation="bicubic")
        config = dict(architecture=arch, num_classes=num_classes, model_args=model_args, pretrained_cfg=pretrained_cfg)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        images = torch.randn(2, 3, size, size, generator=gen)
        with torch.no_grad():
            logits = model(images)
        save_file({"images": images.contiguous(), "logits": logits.contiguous()}, os.path.join(out, "io.safetensors"))
        print(f"{name}: {type(model).__name__} logits {tuple(logits.shape)}, |max| {logits.abs().max():.3f}")


if __name__ == "__main__":
    main()
