#!/usr/bin/env python3
"""Fixtures for tests/vqgan_vs_pytorch.rs: a small random-weight taming-transformers VQGAN
decoder (codebook + post_quant_conv + Decoder), its config in taming's YAML layout, token
grids and taming's decoded images.

    pip install --no-deps taming-transformers   # plus torch, safetensors, pyyaml
    python tools/make_vqgan_fixtures.py [OUT_DIR]   # default tests/fixtures/vqgan_tiny_test

Weights are stored in f16 (to keep the fixture small) and the reference runs in f32 on the
f16-rounded weights, so the Rust side, which widens them to f32, computes the same function.
The codebook lookup mirrors VQModel.decode_code: embedding(ids) → [B, h, w, E] → NCHW.
"""
import os
import sys

import torch
import yaml
from safetensors.torch import save_file
from taming.modules.diffusionmodules.model import Decoder

DDCONFIG = dict(double_z=False, z_channels=16, resolution=16, in_channels=3, out_ch=3, ch=32,
                ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
EMBED_DIM, N_EMBED = 8, 64


def build():
    torch.manual_seed(0)
    decoder = Decoder(**DDCONFIG)
    embedding = torch.nn.Embedding(N_EMBED, EMBED_DIM)
    post_quant_conv = torch.nn.Conv2d(EMBED_DIM, DDCONFIG["z_channels"], 1)
    with torch.no_grad():
        # Non-trivial GroupNorm affines, so a swapped weight/bias would show.
        for m in decoder.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
    state = {f"quantize.embedding.{k}": v for k, v in embedding.state_dict().items()}
    state.update({f"post_quant_conv.{k}": v for k, v in post_quant_conv.state_dict().items()})
    state.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    state = {k: v.detach().half().contiguous() for k, v in state.items()}
    # The reference uses exactly the stored (f16-rounded) values.
    embedding.load_state_dict({"weight": state["quantize.embedding.weight"].float()})
    post_quant_conv.load_state_dict({k[len("post_quant_conv."):]: v.float() for k, v in state.items() if k.startswith("post_quant_conv.")})
    decoder.load_state_dict({k[len("decoder."):]: v.float() for k, v in state.items() if k.startswith("decoder.")})
    return state, embedding.eval(), post_quant_conv.eval(), decoder.eval()


def write_taming_config(out, embed_dim, n_embed, ddconfig):
    """`out/config.yaml` in taming's VQModel layout (also used by make_gen_fixtures.py)."""
    config = {"model": {
        "base_learning_rate": 4.5e-6,
        "target": "taming.models.vqgan.VQModel",
        "params": {
            "embed_dim": embed_dim,
            "n_embed": n_embed,
            "ddconfig": ddconfig,
            "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"},
        },
    }}
    with open(os.path.join(out, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)


@torch.no_grad()
def decode(embedding, post_quant_conv, decoder, tokens):
    z = embedding(tokens).permute(0, 3, 1, 2).contiguous()
    return decoder(post_quant_conv(z))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/vqgan_tiny_test"
    os.makedirs(out, exist_ok=True)
    state, embedding, pqc, decoder = build()
    save_file(state, os.path.join(out, "model.safetensors"))
    write_taming_config(out, EMBED_DIM, N_EMBED, DDCONFIG)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, N_EMBED, (2, 8, 8), generator=g)
    # An odd grid (not the training resolution, not square): the decoder is fully convolutional.
    tokens_odd = torch.randint(0, N_EMBED, (1, 5, 7), generator=g)
    io = {
        "tokens": tokens.to(torch.int64),
        "image": decode(embedding, pqc, decoder, tokens).float().contiguous(),
        "tokens_odd": tokens_odd.to(torch.int32),
        "image_odd": decode(embedding, pqc, decoder, tokens_odd).float().contiguous(),
    }
    save_file(io, os.path.join(out, "io.safetensors"))
    for k, v in io.items():
        print(k, tuple(v.shape), v.dtype, f"max|.| {v.abs().max().item():.4f}" if v.is_floating_point() else "")


if __name__ == "__main__":
    main()
