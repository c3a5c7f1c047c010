#!/usr/bin/env python3
"""Fixtures for the generation path (tests/prior_vs_pytorch.rs and the lead's VQGAN encoder):

* tests/fixtures/prior_test/: a small random-weight taming-transformers minGPT
  (`taming.modules.transformer.mingpt.GPT`) as `model.safetensors` (its own state_dict keys,
  `attn.mask` buffers included, as a real checkpoint has them), lowbit's prior `config.json`,
  and `io.safetensors` with input ids `ids` [B, T] (i64) and PyTorch's `logits` [B, T, V].
* tests/fixtures/vqgan_encoder_test/: a random-weight taming `VQModel` (encoder, quant_conv,
  quantize, post_quant_conv, decoder) with taming's YAML config, and `io.safetensors` with an
  `image` [2, 3, 16, 16] in [-1, 1], the encoder output `h`, the quant_conv output `z`, the
  nearest-code `tokens` (i64 [2, 8, 8]) and the `decoded` image.

    /work/venv/bin/python tools/make_gen_fixtures.py   # writes both folders

Weights are stored in f16 (small files) and the references run in f32 on the f16-rounded
weights, so the Rust side, which widens them to f32, computes the same function.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.transformer.mingpt import GPT
from taming.modules.vqvae.quantize import VectorQuantizer
from make_vqgan_fixtures import write_taming_config

PRIOR = dict(vocab_size=37, block_size=12, n_layer=2, n_head=2, n_embd=24)
N_CLASSES = 5

DDCONFIG = dict(double_z=False, z_channels=16, resolution=16, in_channels=3, out_ch=3, ch=32,
                ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
EMBED_DIM, N_EMBED = 8, 64


def to_f16(state):
    return {k: v.detach().half().contiguous() for k, v in state.items()}


def reload(module, state, prefix=""):
    """Loads the f16-rounded values back (as f32) so the reference uses exactly the stored weights."""
    sub = {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
    module.load_state_dict(sub)


def make_prior(out):
    torch.manual_seed(0)
    gpt = GPT(**PRIOR)
    with torch.no_grad():
        # taming initialises Linear weights with std 0.02, biases and pos_emb with 0, LayerNorms
        # with 1/0: too tame to catch a swapped or missing tensor. Randomise all of them.
        for name, p in gpt.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("weight") and p.dim() == 2 and "emb" not in name:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
            else:
                p.copy_(0.5 * torch.randn_like(p))
    gpt.eval()
    state = to_f16({k: v for k, v in gpt.state_dict().items()})
    reload(gpt, state)
    save_file(state, os.path.join(out, "model.safetensors"))
    config = {"architecture": "taming_mingpt", **PRIOR, "n_classes": N_CLASSES, "token_grid": [3, 4],
              "conditioning": "class_token", "decoder": "../vqgan_encoder_test",
              "sampling": {"temperature": 1.0, "top_k": 10}}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    g = torch.Generator().manual_seed(1)
    # As the class-conditional transformer feeds it: [class, z_0, ..., z_{T-2}].
    b, t = 3, PRIOR["block_size"]
    ids = torch.randint(0, PRIOR["vocab_size"], (b, t), generator=g)
    ids[:, 0] = torch.tensor([0, 4, 2])
    with torch.no_grad():
        logits, _ = gpt(ids)
        # A shorter prompt (odd length), to check positions beyond T are not needed.
        logits_short, _ = gpt(ids[:, :5])
    io = {"ids": ids.to(torch.int64), "logits": logits.float().contiguous(),
          "logits_short": logits_short.float().contiguous()}
    save_file(io, os.path.join(out, "io.safetensors"))
    print("prior:", {k: tuple(v.shape) for k, v in io.items()}, f"max|logit| {logits.abs().max():.3f}")


def nearest_codes(z, codebook):
    """Nearest-code ids of z [B, C, H, W] as VectorQuantizer computes them, plus the margin
    between the best and second-best squared distances relative to the best."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    d = (flat[:, None, :] - codebook[None, :, :]).pow(2).sum(-1)
    two = d.topk(2, dim=1, largest=False).values
    margin = ((two[:, 1] - two[:, 0]) / two[:, 0].clamp_min(1e-12)).min().item()
    return d.argmin(1), margin


def make_vqgan(out):
    for seed in range(100):
        torch.manual_seed(seed)
        encoder, decoder = Encoder(**DDCONFIG), Decoder(**DDCONFIG)
        quant_conv = torch.nn.Conv2d(DDCONFIG["z_channels"], EMBED_DIM, 1)
        post_quant_conv = torch.nn.Conv2d(EMBED_DIM, DDCONFIG["z_channels"], 1)
        quantize = VectorQuantizer(N_EMBED, EMBED_DIM, beta=0.25)
        with torch.no_grad():
            for m in list(encoder.modules()) + list(decoder.modules()):
                if isinstance(m, torch.nn.GroupNorm):
                    m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
                    m.bias.copy_(0.2 * torch.randn_like(m.bias))
            # Codes on the scale of z, so the nearest code is a real choice among several.
            quantize.embedding.weight.copy_(torch.randn(N_EMBED, EMBED_DIM) * 0.5)
        parts = {"encoder": encoder, "decoder": decoder, "quant_conv": quant_conv,
                 "post_quant_conv": post_quant_conv, "quantize": quantize}
        state = {}
        for name, m in parts.items():
            m.eval()
            state.update({f"{name}.{k}": v for k, v in m.state_dict().items()})
        state = to_f16(state)
        for name, m in parts.items():
            reload(m, state, f"{name}.")
        g = torch.Generator().manual_seed(seed + 1000)
        image = (torch.rand(2, 3, 16, 16, generator=g) * 2 - 1).half().float()
        with torch.no_grad():
            h = encoder(image)
            z = quant_conv(h)
            tokens, margin = nearest_codes(z, quantize.embedding.weight)
            # VectorQuantizer's own choice must agree with ours.
            zq, _, (_, _, idx) = quantize(z)
            assert torch.equal(idx.view(-1), tokens), "nearest-code ids disagree with VectorQuantizer"
            decoded = decoder(post_quant_conv(zq))
        if margin >= 1e-3:
            break
    else:
        sys.exit("no seed gave nearest-code margins >= 1e-3")
    save_file(state, os.path.join(out, "model.safetensors"))
    write_taming_config(out, EMBED_DIM, N_EMBED, DDCONFIG)
    io = {"image": image.contiguous(), "h": h.contiguous(), "z": z.contiguous(),
          "tokens": tokens.view(2, 8, 8).to(torch.int64).contiguous(), "decoded": decoded.contiguous()}
    save_file(io, os.path.join(out, "io.safetensors"))
    print(f"vqgan (seed {seed}, min relative code margin {margin:.2e}):",
          {k: tuple(v.shape) for k, v in io.items()})


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    for name, make in [("prior_test", make_prior), ("vqgan_encoder_test", make_vqgan)]:
        out = os.path.join(root, name)
        os.makedirs(out, exist_ok=True)
        make(out)


if __name__ == "__main__":
    main()
