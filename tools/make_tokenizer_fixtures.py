#!/usr/bin/env python3
"""PyTorch parity fixtures for five visual tokenizers, built from their UPSTREAM model code with
small random weights: FQGAN dual and triple, WeTok (GFQ), SimVQ, VQGAN-LC (100k codes) and
RQ-VAE (residual VQ, D stages).

Each fixture is `tests/fixtures/tokenizers/<name>/` with
- `model.safetensors`: the upstream state dict, keys exactly as upstream (f16; lowbit widens to
  f32, and the reference below runs in f32 on the f16-rounded values), training-only tensors
  dropped (each builder says which);
- `config.json`: lowbit's own config, `{"architecture": ..., <upstream constructor args>}`;
- `expected.safetensors`: `image` [B,3,H,W] in [-1,1], `z` (what the quantizer sees, [B,C,h,w]),
  `tokens` (int64, [B,h,w] or [B,S,h,w]), `quantized` (what post_quant_conv / the decoder gets,
  [B,C,h,w]) and `decoded` (the decoder's image for `tokens`, through the upstream decode path).

The upstream repositories are not on PyPI; check them out under one folder (the code is only
imported from there, never copied into lowbit):

    U=~/src/tokenizers; mkdir -p $U && cd $U
    git clone https://github.com/showlab/FQGAN && git -C FQGAN checkout dc34256b36af7227f0916de8015c882fe8101b56
    git clone https://github.com/zhuangshaobin/WeTok && git -C WeTok checkout caa2ad7e709cdabe8432bead448f7514def13919
    git clone https://github.com/youngsheen/SimVQ && git -C SimVQ checkout d8bd94d9ca30273c8bab1b4194d8e1dc0b9d3f70
    git clone https://github.com/zh460045050/VQGAN-LC && git -C VQGAN-LC checkout 4708958f2257f62a996fc5d42928fecbf4282986
    git clone https://github.com/kakaobrain/rq-vae-transformer && git -C rq-vae-transformer checkout 341395e562ac347f5eb62db9f5f08b9f2cc42a60
    pip install torch safetensors einops
    python tools/make_tokenizer_fixtures.py --upstream $U [--only fqgan_dual simvq ...] [--out DIR]

Training-only imports (Lightning, LPIPS) are never executed: models whose top-level class needs
them (SimVQ, WeTok: Lightning modules) are assembled from the upstream submodules under the
upstream attribute names, so the keys are the same; VQGAN-LC's VQModel is used as is with its
LPIPS import stubbed. Nearest-code choices must not hinge on rounding: each builder takes the
first seed whose decisions have a clear margin (printed).
"""
import argparse
import importlib.util
import json
import os
import sys
import tempfile
import types

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

B = 2


def load_file_module(name, path):
    """Imports one upstream file by path (SimVQ's `taming` would clash with taming-transformers)."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def randomize_norms(m):
    """Non-trivial GroupNorm/LayerNorm affines, so a swapped weight/bias would show."""
    for mod in m.modules():
        if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and mod.weight is not None:
            mod.weight.copy_(1 + 0.2 * torch.randn_like(mod.weight))
            mod.bias.copy_(0.2 * torch.randn_like(mod.bias))


def round_to_f16(m):
    for t in list(m.parameters()) + list(m.buffers()):
        if t.is_floating_point():
            t.copy_(t.half().float())


def image(seed, size):
    g = torch.Generator().manual_seed(1000 + seed)
    # Smooth-ish random images (a coarse grid upsampled plus noise) give more varied codes than
    # white noise, which the encoder averages to nearly the same latent everywhere.
    coarse = torch.rand(B, 3, size // 8, size // 8, generator=g)
    img = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (img + 0.15 * torch.rand(B, 3, size, size, generator=g)).clamp(0, 1) * 2 - 1


def nearest_margin(z, codebook):
    """Smallest gap between the best and second-best squared distance over rows of z [N, C]."""
    d = (z * z).sum(1, keepdim=True) + (codebook * codebook).sum(1) - 2 * z @ codebook.T
    top2 = d.topk(2, dim=1, largest=False).values
    return (top2[:, 1] - top2[:, 0]).min().item()


def flat(x):
    """[B, C, h, w] → [B*h*w, C], the row order upstream quantizers use."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def write(out, name, state, config, expected, drop_note):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    state = {k: v.detach().clone().half().contiguous() if v.is_floating_point() else v.detach().clone().contiguous()
             for k, v in state.items()}
    save_file(state, os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    expected = {k: v.detach().contiguous() for k, v in expected.items()}
    save_file(expected, os.path.join(d, "expected.safetensors"))
    t = expected["tokens"]
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {len(state)} tensors, {sum(v.numel() for v in state.values())} parameters, {size / 1e6:.2f} MB; "
          f"dropped {drop_note}")
    print(f"  tokens {tuple(t.shape)} {t.dtype}: {t.unique().numel()} distinct of {t.numel()}, "
          f"most common x{t.flatten().bincount().max().item()}")
    for k, v in expected.items():
        if v.is_floating_point():
            print(f"  {k} {tuple(v.shape)} max|.| {v.abs().max().item():.4f}")


# --------------------------------------------------------------------------------------------
# FQGAN (showlab/FQGAN, tokenizer/vq_model_{dual,triple}.py): LlamaGen encoder trunk, one
# FactorizedAdapter + norm_out/conv_out head per sub-codebook, one quant_conv_* and l2-normalized
# VectorQuantizer per sub-codebook, concatenation [vis, sem(_mid, _high)] before post_quant_conv.
# --------------------------------------------------------------------------------------------
FQ_CH, FQ_MULT, FQ_BLOCKS, FQ_Z, FQ_CODES, FQ_DIM, FQ_IMAGE = 32, [1, 1, 2, 2], 1, 32, 64, 8, 64
# Upstream hard-codes the adapter (width 512 = ch*ch_mult[-1] of the released model, 6 layers,
# 8 heads, grid 256 // down_factor): too big for a fixture, so a smaller one is built with the
# same attribute names and the upstream forward.
FQ_ADAPTER = {"width": FQ_CH * FQ_MULT[-1], "layers": 1, "heads": 2}


def small_adapter_class(vq):
    class SmallFactorizedAdapter(vq.FactorizedAdapter):
        def __init__(self, down_factor):
            torch.nn.Module.__init__(self)
            self.grid_size = FQ_IMAGE // down_factor
            self.width, self.num_layers, self.num_heads = FQ_ADAPTER["width"], FQ_ADAPTER["layers"], FQ_ADAPTER["heads"]
            self.positional_embedding = torch.nn.Parameter(self.width ** -0.5 * torch.randn(self.grid_size ** 2, self.width))
            self.ln_pre = torch.nn.LayerNorm(self.width)
            self.transformer = torch.nn.ModuleList(
                [vq.ResidualAttentionBlock(self.width, self.num_heads, mlp_ratio=4.0) for _ in range(self.num_layers)])
            self.ln_post = torch.nn.LayerNorm(self.width)
    return SmallFactorizedAdapter


def build_fqgan(upstream, out, variant):
    sys.path.insert(0, os.path.join(upstream, "FQGAN", "tokenizer"))
    vq = importlib.import_module(f"vq_model_{variant}")
    vq.FactorizedAdapter = small_adapter_class(vq)
    encoder, decoder = vq.Encoder, vq.Decoder
    # VQModel passes only ch_mult/z_channels/dropout; the fixture's smaller ch and block count:
    vq.Encoder = lambda **kw: encoder(ch=FQ_CH, num_res_blocks=FQ_BLOCKS, **kw)
    vq.Decoder = lambda **kw: decoder(ch=FQ_CH, num_res_blocks=FQ_BLOCKS, **kw)
    heads = ["vis", "sem"] if variant == "dual" else ["vis", "sem_mid", "sem_high"]
    for seed in range(200):
        torch.manual_seed(seed)
        m = vq.VQModel(vq.ModelArgs(codebook_size=FQ_CODES, codebook_embed_dim=FQ_DIM, encoder_ch_mult=FQ_MULT,
                                    decoder_ch_mult=FQ_MULT, z_channels=FQ_Z)).eval()
        with torch.no_grad():
            for h in heads:  # random directions (upstream's uniform(±1/n) init is near-degenerate)
                getattr(m, f"quantize_{h}").embedding.weight.copy_(torch.randn(FQ_CODES, FQ_DIM))
            randomize_norms(m)
            round_to_f16(m)
            img = image(seed, FQ_IMAGE)
            feats = m.encoder(img)  # dual: (sem, vis); triple: (vis, sem_mid, sem_high)
            feats = dict(zip(["sem", "vis"] if variant == "dual" else heads, feats))
            zs = {h: getattr(m, f"quant_conv_{h}")(feats[h]) for h in heads}
            margin = min(nearest_margin(F.normalize(flat(zs[h]), dim=-1),
                                     F.normalize(getattr(m, f"quantize_{h}").embedding.weight, dim=-1)) for h in heads)
        if margin > 1e-3:
            break
    else:
        sys.exit("fqgan: no seed gave a clear nearest-code margin")
    with torch.no_grad():
        enc = m.encode(img)  # the upstream encode: quants then infos, in its own head order
        n = len(heads)
        order = ["sem", "vis"] if variant == "dual" else heads
        quants = dict(zip(order, enc[:n]))
        ids = {h: info[2] for h, info in zip(order, enc[n:])}
        hh = FQ_IMAGE // 8
        tokens = torch.stack([ids[h].view(B, hh, hh) for h in heads], 1)  # [B, S, h, w], S in concat order
        # The post_quant_conv input, from the ids (the forward's z + (e - z) straight-through
        # value differs from e by rounding):
        quantized = torch.cat([getattr(m, f"quantize_{h}").get_codebook_entry(ids[h], (B, FQ_DIM, hh, hh))
                               for h in heads], 1)
        assert torch.allclose(quantized, torch.cat([quants[h] for h in heads], 1), atol=1e-5)
        z = torch.cat([zs[h] for h in heads], 1)
        shape = (B, FQ_DIM, hh, hh)
        if variant == "dual":
            decoded = m.decode_code(ids["sem"], ids["vis"], shape, shape)
        else:
            decoded = m.decode_code(ids["vis"], ids["sem_mid"], ids["sem_high"], shape, shape, shape)
        assert torch.equal(m.decode(quantized), decoded)
        # The tokens alone reproduce the decode (get_codebook_entry from the saved ids):
        again = m.decode_code(*([tokens[:, 1].flatten(), tokens[:, 0].flatten()] if variant == "dual"
                                else [tokens[:, i].flatten() for i in range(3)]), *([shape] * n))
        assert torch.equal(again, decoded)
    print(f"fqgan_{variant}: seed {seed}, nearest-code margin {margin:.4f}")
    # Dropped: quantize_*.codebook_used (usage statistics buffer); the CLIP/DINO feature heads
    # (feat_pred_head / mid_sem_feat_pred / high_sem_feat_pred) are not built (training-only).
    state = {k: v for k, v in m.state_dict().items() if not k.endswith("codebook_used")}
    config = {"architecture": "fqgan", "variant": variant, "sub_codebooks": heads,
              "codebook_size": FQ_CODES, "codebook_embed_dim": FQ_DIM, "codebook_l2_norm": True,
              "encoder_ch_mult": FQ_MULT, "decoder_ch_mult": FQ_MULT, "z_channels": FQ_Z, "ch": FQ_CH,
              "num_res_blocks": FQ_BLOCKS, "image_size": FQ_IMAGE,
              "adapter": {"width": FQ_ADAPTER["width"], "layers": FQ_ADAPTER["layers"], "heads": FQ_ADAPTER["heads"],
                          "grid_size": FQ_IMAGE // 8, "mlp_ratio": 4.0}}
    write(out, f"fqgan_{variant}", state, config,
          {"image": img, "z": z, "tokens": tokens.long(), "quantized": quantized, "decoded": decoded},
          "quantize_*.codebook_used")
    sys.path.pop(0)


# --------------------------------------------------------------------------------------------
# SimVQ (youngsheen/SimVQ): MAGVIT2-style improved_model Encoder/Decoder (no quant_conv,
# no post_quant_conv), SimVQ quantizer: frozen codebook C, effective codebook embedding_proj(C).
# --------------------------------------------------------------------------------------------
SIM_DD = dict(double_z=False, z_channels=16, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2],
              num_res_blocks=1)
SIM_CODES = 256


def build_simvq(upstream, out):
    root = os.path.join(upstream, "SimVQ", "taming", "modules")
    model = load_file_module("simvq_improved_model", os.path.join(root, "diffusionmodules", "improved_model.py"))
    quantize = load_file_module("simvq_quantize", os.path.join(root, "vqvae", "quantize.py"))
    e_dim = SIM_DD["z_channels"]
    for seed in range(200):
        torch.manual_seed(seed)
        # VQModel is a Lightning module (loss, EMA); its three submodules under its attribute names:
        m = torch.nn.Module()
        m.encoder = model.Encoder(**SIM_DD)
        m.decoder = model.Decoder(**SIM_DD)
        m.quantize = quantize.SimVQ(SIM_CODES, e_dim, beta=0.25, legacy=False)
        m.eval()
        with torch.no_grad():
            randomize_norms(m)
            round_to_f16(m)
            img = image(seed, SIM_DD["resolution"])
            z = m.encoder(img)
            # Scale the projection so the effective codebook spans the latents (C ~ N(0, 1/e_dim)
            # with a default-initialized Linear is far smaller than an untrained encoder's output).
            spread = flat(z).std().item()
            m.quantize.embedding_proj.weight.mul_(4 * spread)
            m.quantize.embedding_proj.bias.copy_(flat(z).mean(0))
            round_to_f16(m)
            codebook = m.quantize.embedding_proj(m.quantize.embedding.weight)
            margin = nearest_margin(flat(z), codebook)
            (zq, _, ids), _ = m.quantize(z)
        if margin > 1e-3 * spread ** 2 and ids.unique().numel() > 16:
            break
    else:
        sys.exit("simvq: no seed gave a clear nearest-code margin")
    with torch.no_grad():
        hh = SIM_DD["resolution"] // 2 ** (len(SIM_DD["ch_mult"]) - 1)
        tokens = ids.view(B, hh, hh)
        # The tokens' vectors in the forward's codebook, embedding_proj(C), as the forward looks
        # them up (F.embedding); its z + (e - z) straight-through value differs by rounding only.
        # (Upstream SimVQ.get_codebook_entry looks the ids up in the raw C, without the
        # projection: not what the encoder path feeds the decoder, so not used here.)
        codebook = m.quantize.embedding_proj(m.quantize.embedding.weight)
        quantized = F.embedding(tokens, codebook).permute(0, 3, 1, 2).contiguous()
        assert torch.allclose(quantized, zq, atol=1e-5)
        decoded = m.decoder(quantized)
    print(f"simvq: seed {seed}, nearest-code margin {margin:.5f} (latent std {spread:.3f})")
    config = {"architecture": "simvq", "ddconfig": SIM_DD, "n_e": SIM_CODES, "e_dim": e_dim}
    write(out, "simvq", m.state_dict(), config,
          {"image": img, "z": z, "tokens": tokens.long(), "quantized": quantized, "decoded": decoded},
          "nothing (real checkpoints: loss.*, model_ema.*)")


# --------------------------------------------------------------------------------------------
# WeTok (zhuangshaobin/WeTok): MAGVIT2-style Encoder, Decoder with AdaptiveGroupNorm (conditioned
# on the quantized latent), GFQ: sign per channel, groups of bits → one index per group.
# --------------------------------------------------------------------------------------------
WE_DD = dict(double_z=False, z_channels=32, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2],
             num_res_blocks=1)
WE_GROUPS, WE_CODES = 4, 256  # as released: embed_dim 32 = 4 groups of 8 bits


def build_wetok(upstream, out):
    root = os.path.join(upstream, "WeTok", "src", "WeTok", "modules")
    model = load_file_module("wetok_improved_model", os.path.join(root, "diffusionmodules", "improved_model.py"))
    lfq = load_file_module("wetok_lfq", os.path.join(root, "vqvae", "lookup_free_quantize.py"))
    bits = [8] * WE_GROUPS
    for seed in range(200):
        torch.manual_seed(seed)
        m = torch.nn.Module()  # VQModel (Lightning) attribute names: encoder, decoder, quantize
        m.encoder = model.Encoder(**WE_DD)
        m.decoder = model.Decoder(**WE_DD)
        # use_GFQ=True, token_factorization=True, factorized_bits=[8, 8, 8, 8]: the GenStage configs
        m.quantize = lfq.GFQ(dim=WE_DD["z_channels"], codebook_size=WE_CODES, num_codebooks=WE_GROUPS,
                             sample_minimization_weight=1.0, batch_maximization_weight=1.0,
                             token_factorization=True, factorized_bits=bits)
        m.eval()
        with torch.no_grad():
            randomize_norms(m)
            round_to_f16(m)
            img = image(seed, WE_DD["resolution"])
            z = m.encoder(img)
            margin = z.abs().min().item() / z.abs().mean().item()  # no sign may hinge on rounding
        if margin > 1e-3:
            break
    else:
        sys.exit("wetok: no seed kept every latent clear of 0")
    with torch.no_grad():
        st, _, ids = m.quantize(z)  # ids: one flat [B*h*w] tensor per group
        hh = WE_DD["resolution"] // 2 ** (len(WE_DD["ch_mult"]) - 1)
        tokens = torch.stack([i.view(B, hh, hh) for i in ids], 1)  # [B, G, h, w]
        # Same as the unfactorized path (LFQ / GFQ with token_factorization=False):
        plain = lfq.GFQ(dim=WE_DD["z_channels"], codebook_size=WE_CODES, num_codebooks=WE_GROUPS).eval()
        _, _, flat_ids = plain(z)  # [B*h*w*G], b h w g order
        assert torch.equal(flat_ids.view(B, hh, hh, WE_GROUPS).permute(0, 3, 1, 2), tokens)
        # Upstream token → latent path (cond_transformer.decode_to_img): get_codebook_entry per
        # group with that group's bit mask, concatenated along channels in group order. The
        # forward's straight-through z + (±1 - z) equals it up to rounding.
        quantized = torch.cat([m.quantize.get_codebook_entry(tokens[:, g].reshape(B, -1), (B, hh, hh, bits[g]), g)
                               for g in range(WE_GROUPS)], 1)
        assert torch.equal(quantized, torch.where(z > 0, 1.0, -1.0)) and torch.allclose(quantized, st, atol=1e-5)
        decoded = m.decoder(quantized)
    print(f"wetok_gfq: seed {seed}, min |z| / mean |z| {margin:.4f}")
    config = {"architecture": "wetok", "ddconfig": WE_DD, "quantizer": "GFQ", "n_embed": WE_CODES,
              "embed_dim": WE_DD["z_channels"], "num_codebooks": WE_GROUPS, "token_factorization": True,
              "factorized_bits": bits, "gan_decoder": False}
    write(out, "wetok_gfq", m.state_dict(), config,
          {"image": img, "z": z, "tokens": tokens.long(), "quantized": quantized, "decoded": decoded},
          "nothing (the GFQ has no stored tensors; real checkpoints: loss.*, model_ema.*)")


# --------------------------------------------------------------------------------------------
# VQGAN-LC (zh460045050/VQGAN-LC, vqgan-gpt-lc/models/models_vq.py): taming Encoder/Decoder,
# quant_conv/post_quant_conv, a frozen 100k-entry codebook `tok_embeddings` (CLIP features in the
# release, dim 768) projected by `codebook_projection` (Linear codebook_dim → embed_dim).
# --------------------------------------------------------------------------------------------
LC_DD = dict(double_z=False, z_channels=16, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2],
             num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
LC_WORDS, LC_CODE_DIM, LC_EMBED = 100000, 10, 8


def build_vqgan_lc(upstream, out):
    sys.path.insert(0, os.path.join(upstream, "VQGAN-LC", "vqgan-gpt-lc"))
    lpips = types.ModuleType("models.lpips")  # LPIPS downloads VGG weights: loss only
    lpips.LPIPS = lambda *a, **k: torch.nn.Module()
    sys.modules["models.lpips"] = lpips
    models_vq = importlib.import_module("models.models_vq")
    tmp = tempfile.mkdtemp()
    for seed in range(50):
        torch.manual_seed(seed)
        # The release loads the codebook from --local_embedding_path (tuning_codebook 0); here a
        # random one with a small feature dim, written where the upstream constructor reads it.
        path = os.path.join(tmp, "codebook.pth")
        torch.save(torch.randn(LC_WORDS, LC_CODE_DIM).half().float(), path)
        args = types.SimpleNamespace(stage=1, embed_dim=LC_EMBED, rate_p=1.0, quantizer_type="org", tuning_codebook=0,
                                     local_embedding_path=path, n_vision_words=LC_WORDS, use_cblinear=1)
        m = models_vq.VQModel(args, LC_DD, LC_EMBED).eval()
        with torch.no_grad():
            randomize_norms(m.encoder)
            randomize_norms(m.decoder)
            round_to_f16(m)
            img = image(seed, LC_DD["resolution"])
            z = m.quant_conv(m.encoder(img))
            # Spread the projected codebook over the latents so many codes are used.
            spread = flat(z).std().item()
            cb = m.codebook_projection(m.tok_embeddings.weight)
            m.codebook_projection.weight.mul_(spread / cb.std().item())
            m.codebook_projection.bias.copy_(flat(z).mean(0))
            round_to_f16(m)
            codebook = m.codebook_projection(m.tok_embeddings.weight)
            margin = nearest_margin(flat(z), codebook)
        if margin > 1e-4 * spread ** 2:
            break
    else:
        sys.exit("vqgan_lc: no seed gave a clear nearest-code margin")
    with torch.no_grad():
        st, _, (_, _, ids) = m.encode(img)
        hh = LC_DD["resolution"] // 2 ** (len(LC_DD["ch_mult"]) - 1)
        tokens = ids.view(B, hh, hh)
        # decode_code upstream calls self.quantize.embedding, which does not exist (quantize is a
        # method); the token → latent path is the forward's: F.embedding(ids, projected codebook)
        # (the forward's straight-through z + (e - z) equals it up to rounding).
        quantized = F.embedding(tokens, codebook).permute(0, 3, 1, 2).contiguous()
        assert torch.allclose(quantized, st, atol=1e-5)
        decoded = m.decode(quantized)
    print(f"vqgan_lc: seed {seed}, nearest-code margin {margin:.6f} (latent std {spread:.3f})")
    drop = ("discriminator.", "perceptual_loss.")
    state = {k: v for k, v in m.state_dict().items() if not k.startswith(drop)}
    config = {"architecture": "vqgan_lc", "ddconfig": LC_DD, "embed_dim": LC_EMBED, "n_vision_words": LC_WORDS,
              "codebook_dim": LC_CODE_DIM, "use_cblinear": 1, "quantizer_type": "org"}
    write(out, "vqgan_lc", state, config,
          {"image": img, "z": z, "tokens": tokens.long(), "quantized": quantized, "decoded": decoded},
          "discriminator.* (perceptual_loss is stubbed here; real checkpoints also hold perceptual_loss.*)")
    sys.path.pop(0)


# --------------------------------------------------------------------------------------------
# RQ-VAE (kakaobrain/rq-vae-transformer, rqvae/models/rqvae/): taming Encoder/Decoder,
# quant_conv/post_quant_conv, RQBottleneck with D stages on the residual.
# --------------------------------------------------------------------------------------------
RQ_DD = dict(double_z=False, z_channels=16, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2],
             num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
RQ_EMBED, RQ_CODES, RQ_DEPTH = 8, 64, 4


def build_rqvae(upstream, out):
    root = os.path.join(upstream, "rq-vae-transformer", "rqvae")
    for name, path in (("rqvae", root), ("rqvae.models", os.path.join(root, "models"))):
        pkg = types.ModuleType(name)  # skip the package __init__s (transformer, EMA, data code)
        pkg.__path__ = [path]
        sys.modules[name] = pkg
    rq = importlib.import_module("rqvae.models.rqvae.rqvae")
    hh = RQ_DD["resolution"] // 2 ** (len(RQ_DD["ch_mult"]) - 1)
    for seed in range(200):
        torch.manual_seed(seed)
        # Separate codebooks per stage (shared_codebook=False) so a stage/codebook mix-up shows;
        # the released ImageNet/FFHQ models share one (all quantizer.codebooks.{i} are equal).
        m = rq.RQVAE(embed_dim=RQ_EMBED, n_embed=RQ_CODES, bottleneck_type="rq", ddconfig=RQ_DD,
                     latent_shape=[hh, hh, RQ_EMBED], code_shape=[hh, hh, RQ_DEPTH], shared_codebook=False,
                     restart_unused_codes=True).eval()
        with torch.no_grad():
            randomize_norms(m.encoder)
            randomize_norms(m.decoder)
            round_to_f16(m)
            img = image(seed, RQ_DD["resolution"])
            z = m.encode(img)  # [B, h, w, C]
            # Codebooks on the scale of each stage's residual (it shrinks stage by stage, as the
            # trained codebooks do); margins relative to that scale.
            resid = z.reshape(-1, RQ_EMBED).clone()
            margins = []
            for cb in m.quantizer.codebooks:
                scale = resid.std(0)
                cb.weight[:-1].copy_(resid.mean(0) + 1.5 * scale * torch.randn(RQ_CODES, RQ_EMBED))
                round_to_f16(cb)
                margins.append(nearest_margin(resid, cb.weight[:-1]) / scale.pow(2).sum().item())
                resid -= cb.weight[:-1][cb.find_nearest_embedding(resid)]
            margin = min(margins)
        if margin > 1e-3:
            break
    else:
        sys.exit("rqvae: no seed gave a clear nearest-code margin")
    with torch.no_grad():
        st, _, codes = m.quantizer(z)  # codes [B, h, w, D]
        zq = m.quantizer.embed_code(codes)  # upstream decode path: the sum of the D stage embeddings
        assert torch.allclose(zq, st, atol=1e-5)  # the forward's straight-through value, up to rounding
        decoded = m.decode_code(codes)
        assert torch.equal(m.decode(zq), decoded)
        tokens = codes.permute(0, 3, 1, 2)  # [B, D, h, w]
    print(f"rvq: seed {seed}, nearest-code margins per stage {[round(x, 5) for x in margins]}")
    # Dropped: quantizer.codebooks.*.cluster_size_ema / embed_ema (EMA training statistics).
    state = {k: v for k, v in m.state_dict().items() if not k.endswith(("cluster_size_ema", "embed_ema"))}
    config = {"architecture": "rvq", "upstream": "rq-vae", "ddconfig": RQ_DD, "embed_dim": RQ_EMBED,
              "n_embed": RQ_CODES, "latent_shape": [hh, hh, RQ_EMBED], "code_shape": [hh, hh, RQ_DEPTH],
              "shared_codebook": False}
    write(out, "rvq", state, config,
          {"image": img, "z": z.permute(0, 3, 1, 2), "tokens": tokens.long(), "quantized": zq.permute(0, 3, 1, 2),
           "decoded": decoded},
          "quantizer.codebooks.*.{cluster_size_ema,embed_ema}")


BUILDERS = {
    "fqgan_dual": lambda u, o: build_fqgan(u, o, "dual"),
    "fqgan_triple": lambda u, o: build_fqgan(u, o, "triple"),
    "wetok_gfq": build_wetok,
    "simvq": build_simvq,
    "vqgan_lc": build_vqgan_lc,
    "rvq": build_rqvae,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", required=True, help="folder holding the five upstream checkouts")
    ap.add_argument("--out", default="tests/fixtures/tokenizers")
    ap.add_argument("--only", nargs="*", choices=BUILDERS, default=list(BUILDERS))
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    for name in args.only:
        BUILDERS[name](args.upstream, args.out)


if __name__ == "__main__":
    main()
