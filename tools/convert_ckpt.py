#!/usr/bin/env python3
"""Turns a PyTorch Lightning `.ckpt` (taming-transformers VQGAN) or a plain PyTorch checkpoint
(LlamaGen's `vq_ds16_c2i.pt`, `{"model": state_dict}`) into the folder lowbit loads:
`model.safetensors` plus the model's config next to it. The same goes for the tokenizers of
`tools/make_tokenizer_fixtures.py` (FQGAN, SimVQ, WeTok, VQGAN-LC, RQ-VAE): key names stay as
upstream; their config.json is lowbit's own (see the fixtures' config.json for the fields).

    python tools/convert_ckpt.py last.ckpt --config 2021-04-03T19-39-50-project.yaml --out vqgan_imagenet_f16_16384
    python tools/convert_ckpt.py vq_ds16_c2i.pt --out llamagen-vq16 --dtype f16
    python tools/convert_ckpt.py wetok.ckpt --ema --config wetok.json --out wetok   # EMA weights, as WeTok decodes

What it does:
- takes the state dict from `state_dict` (Lightning, VQGAN-LC, RQ-VAE), `model` / `ema`
  (LlamaGen, FQGAN), or the file itself when it is already one; with --ema, the EMA weights:
  `state_dict_ema` (RQ-VAE) / `ema` (LlamaGen) when present, else Lightning's LitEma copies
  (`model_ema.<name without dots>`, SimVQ and WeTok) put back under the parameters' names;
- drops the training-only tensors unless --keep-loss: `loss.*` (discriminator, LPIPS),
  `discriminator.*` and `perceptual_loss.*` (VQGAN-LC), `model_ema.*` (LitEma copies),
  FQGAN's CLIP/DINO heads (`feat_pred_head.*`, `mid_sem_feat_pred.*`, `high_sem_feat_pred.*`),
  and the statistics buffers `*.codebook_used` (LlamaGen, FQGAN) and `*.cluster_size_ema` /
  `*.embed_ema` (RQ-VAE);
- copies every tensor, so tensors that share storage (RQ-VAE's shared codebook: every
  `quantizer.codebooks.{i}.weight` is one tensor) are written once per key, as safetensors needs;
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


TRAINING_PREFIXES = ("loss.", "discriminator.", "perceptual_loss.", "model_ema.", "feat_pred_head.",
                     "mid_sem_feat_pred.", "high_sem_feat_pred.")
TRAINING_SUFFIXES = (".codebook_used", ".cluster_size_ema", ".embed_ema")


def state_dict_of(ckpt, ema=False):
    if ema:
        for key in ("state_dict_ema", "ema"):
            if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
                return ckpt[key]
    for key in ("state_dict", "model", "ema"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            return ckpt[key]
    if isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    sys.exit("no state dict found (looked for state_dict, model, ema, or a dict of tensors)")


def with_lit_ema(state):
    """Lightning's LitEma keeps `model_ema.<parameter name without dots>`; puts those values
    under the parameters' own names (what `ema_scope()` does before SimVQ / WeTok decode)."""
    shadow = {k[len("model_ema."):]: v for k, v in state.items() if k.startswith("model_ema.")}
    if not shadow:
        sys.exit("--ema: no state_dict_ema / ema entry and no model_ema.* tensors in this checkpoint")
    out, swapped = {}, 0
    for key, value in state.items():
        s_name = key.replace(".", "")
        if not key.startswith("model_ema.") and s_name in shadow:
            value, swapped = shadow[s_name], swapped + 1
        out[key] = value
    print(f"--ema: {swapped} tensors taken from model_ema.*")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("--out", required=True, help="output folder (model.safetensors + config)")
    ap.add_argument("--config", help="the model's config (taming YAML or config.json) to copy next to the weights")
    ap.add_argument("--dtype", choices=DTYPES, default="f32")
    ap.add_argument("--strip-prefix", default="")
    ap.add_argument("--keep-loss", action="store_true", help="keep the training-only tensors")
    ap.add_argument("--ema", action="store_true", help="convert the EMA weights (state_dict_ema / ema / model_ema.*)")
    ap.add_argument("--unsafe-pickle", action="store_true")
    args = ap.parse_args()

    ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=not args.unsafe_pickle)
    state = state_dict_of(ckpt, args.ema)
    if args.ema and not any(isinstance(ckpt, dict) and isinstance(ckpt.get(k), dict) for k in ("state_dict_ema", "ema")):
        state = with_lit_ema(state)
    out, dropped = {}, 0
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        if key.startswith(args.strip_prefix):
            key = key[len(args.strip_prefix):]
        if (key.startswith(TRAINING_PREFIXES) or key.endswith(TRAINING_SUFFIXES)) and not args.keep_loss:
            dropped += 1
            continue
        value = value.detach().clone()  # shared storage (tied codebooks) cannot go to safetensors
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
    print(f"{args.out}/model.safetensors: {len(out)} tensors, {params} parameters ({args.dtype}); dropped {dropped} training-only tensors")


if __name__ == "__main__":
    main()
