#!/usr/bin/env python3
"""Turns a PyTorch Lightning `.ckpt` (taming-transformers VQGAN) or a plain PyTorch checkpoint
(LlamaGen's `vq_ds16_c2i.pt`, `{"model": state_dict}`) into the folder lowbit loads:
`model.safetensors` plus the model's config next to it.

    python tools/convert_ckpt.py last.ckpt --config 2021-04-03T19-39-50-project.yaml --out vqgan_imagenet_f16_16384
    python tools/convert_ckpt.py vq_ds16_c2i.pt --out llamagen-vq16 --dtype f16

What it does:
- takes the state dict from `state_dict` (Lightning), `model` / `ema` (LlamaGen), or the file
  itself when it is already one;
- drops the training-only tensors: `loss.*` (discriminator, LPIPS) unless --keep-loss;
- strips --strip-prefix from every key (e.g. `model.` from a wrapped module);
- stores f32 (default), f16 or bf16; lowbit widens f16/bf16 to f32 on load.

Checkpoints are pickles: by default only tensors and plain containers are unpickled
(`torch.load(weights_only=True)`); --unsafe-pickle allows arbitrary objects, for checkpoints
you trust that fail otherwise (old Lightning files with callbacks in them).
"""
import argparse
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def state_dict_of(ckpt):
    for key in ("state_dict", "model", "ema"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            return ckpt[key]
    if isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    sys.exit("no state dict found (looked for state_dict, model, ema, or a dict of tensors)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("--out", required=True, help="output folder (model.safetensors + config)")
    ap.add_argument("--config", help="the model's config (taming YAML or config.json) to copy next to the weights")
    ap.add_argument("--dtype", choices=DTYPES, default="f32")
    ap.add_argument("--strip-prefix", default="")
    ap.add_argument("--keep-loss", action="store_true")
    ap.add_argument("--unsafe-pickle", action="store_true")
    args = ap.parse_args()

    ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=not args.unsafe_pickle)
    state = state_dict_of(ckpt)
    out, dropped = {}, 0
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if key.startswith(args.strip_prefix):
            key = key[len(args.strip_prefix):]
        if key.startswith("loss.") and not args.keep_loss:
            dropped += 1
            continue
        value = value.detach()
        if value.is_floating_point():
            value = value.to(DTYPES[args.dtype])
        out[key] = value.contiguous()
    if not out:
        sys.exit("the state dict has no tensors left to write")
    os.makedirs(args.out, exist_ok=True)
    save_file(out, os.path.join(args.out, "model.safetensors"))
    if args.config:
        name = "config.yaml" if args.config.endswith((".yaml", ".yml")) else "config.json"
        shutil.copy(args.config, os.path.join(args.out, name))
    params = sum(v.numel() for v in out.values())
    print(f"{args.out}/model.safetensors: {len(out)} tensors, {params} parameters ({args.dtype}); dropped {dropped} loss tensors")


if __name__ == "__main__":
    main()
