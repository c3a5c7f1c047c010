#!/usr/bin/env python3
"""Train assets/models/digits-prior: a class-conditional taming minGPT over the 8x8 tokens of
assets/models/digits-vqgan, conditioned as taming's class-conditional Net2NetTransformer: the
class c (0..9) is a token id in the same vocabulary, cz = [c, z_0..z_63], input cz[:, :-1],
targets z (logits at positions 0..63 predict z_0..z_63).

Classifier-free guidance (Ho & Salimans; as LlamaGen samples its class-conditional GPT): with
--cfg-dropout p the class token is replaced by a null token (id N_CLASSES = 10) for a fraction p of
the training sequences, so the same network also predicts the unconditional next token. Sampling
then uses logits = uncond + scale * (cond - uncond) (scale 1 = plain conditional sampling).

    nice -n 10 /work/venv/bin/python tools/train_digits_prior.py --out assets/models/digits-prior \
        --vqgan assets/models/digits-vqgan --seed 0

Needs the trained digits-vqgan (tools/train_digits_vqgan.py) and, for the sample check, the
trained digits-vit (tools/train_digits_vit.py, --vit; skipped if absent).
"""
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tqdm import tqdm  # noqa: E402
from taming.modules.transformer.mingpt import GPT  # noqa: E402

from datasets import digits_split, seed_everything  # noqa: E402
from train_vqgan_common import load_model as load_vqgan  # noqa: E402

N_CLASSES = 10
NULL_CLASS = N_CLASSES  # the class token of unconditional sequences (classifier-free guidance)


@torch.no_grad()
def encode_all(vq, x_uint8, shifts, bs=200):
    """x uint8 [N,3,32,32]; shifts: list of (dy, dx). Returns int64 [N*len(shifts), 64] and labels index."""
    x = torch.from_numpy(x_uint8).float() / 127.5 - 1.0
    out = []
    for dy, dx in shifts:
        xs = x
        if dy or dx:
            xs = torch.full_like(x, -1.0)
            h, w = x.shape[2:]
            ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
            xs_, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            xs[:, :, yd, xd] = x[:, :, ys, xs_]
        toks = [vq.tokens(xs[i:i + bs]).flatten(1) for i in range(0, len(xs), bs)]
        out.append(torch.cat(toks))
    return torch.cat(out)


@torch.no_grad()
def nll(model, c, z, bs=250):
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(z), bs):
        cz = torch.cat([c[i:i + bs, None], z[i:i + bs]], 1)
        logits, _ = model(cz[:, :-1])
        tot += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), z[i:i + bs].reshape(-1), reduction="sum"))
        n += z[i:i + bs].numel()
    return tot / n


@torch.no_grad()
def sample(model, c, temperature, top_k, gen, steps=64, cfg_scale=1.0):
    """c int64 [B]. Returns z int64 [B, 64]. Same procedure as taming's mingpt.sample, plus
    classifier-free guidance when cfg_scale != 1 (the null class runs as a second half-batch)."""
    model.eval()
    x = c[:, None]
    b = len(c)
    for _ in range(steps):
        if cfg_scale != 1.0:
            xu = torch.cat([torch.full_like(x[:, :1], NULL_CLASS), x[:, 1:]], 1)
            both, _ = model(torch.cat([x, xu]))
            cond, uncond = both[:b, -1, :], both[b:, -1, :]
            logits = (uncond + cfg_scale * (cond - uncond)) / temperature
        else:
            logits, _ = model(x)
            logits = logits[:, -1, :] / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, top_k)
            logits = logits.masked_fill(logits < v[:, [-1]], -float("inf"))
        probs = F.softmax(logits, dim=-1)
        ix = torch.multinomial(probs, 1, generator=gen)
        x = torch.cat([x, ix], 1)
    return x[:, 1:]


def load_vit(path):
    import timm

    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    m = timm.create_model(cfg["architecture"], pretrained=False, num_classes=cfg["num_classes"], **cfg["model_args"])
    m.load_state_dict(load_file(os.path.join(path, "model.safetensors")), strict=True)
    return m.eval()


@torch.no_grad()
def sample_accuracy(model, vq, vit, temperature, top_k, seed, per_class=10, cfg_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    c = torch.arange(N_CLASSES).repeat_interleave(per_class)
    z = sample(model, c, temperature, top_k, gen, cfg_scale=cfg_scale)
    img = vq.decode_code(z.view(-1, 8, 8))
    img_u8 = ((img.clamp(-1, 1) + 1) * 127.5).round()  # as a PNG would store it
    pred = vit((img_u8 / 255.0 - 0.5) / 0.5).argmax(-1)
    return float((pred == c).float().mean()), img_u8.to(torch.uint8), c, pred


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="assets/models/digits-prior")
    ap.add_argument("--vqgan", default="assets/models/digits-vqgan")
    ap.add_argument("--vit", default="assets/models/digits-vit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cfg-dropout", type=float, default=0.1,
                    help="fraction of training sequences whose class token is the null class (0 = no guidance)")
    ap.add_argument("--eval-only", action="store_true",
                    help="skip training: reload --out, re-check the NLL and redo the sample check with --vit")
    ap.add_argument("--n-shifts", type=int, default=9, help="shifted copies of each training digit (1..9)")
    args = ap.parse_args()
    seed_everything(args.seed, args.threads)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()

    vq = load_vqgan(args.vqgan)
    n_embed = vq.quantize.n_e
    vocab = max(n_embed, N_CLASSES)
    xtr, ytr, xte, yte = digits_split()
    shifts = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1)][:args.n_shifts]
    if args.eval_only:
        shifts = shifts[:1]
    ztr = encode_all(vq, xtr, shifts)
    ctr = torch.from_numpy(ytr).repeat(len(shifts))
    zte = encode_all(vq, xte, [(0, 0)])
    cte = torch.from_numpy(yte)
    print(f"tokens: {len(ztr)} training sequences ({len(shifts)} shifts of {len(xtr)} digits), "
          f"{len(zte)} held-out; {time.time() - t_start:.0f}s", flush=True)

    if not args.eval_only:
        model = GPT(vocab_size=vocab, block_size=64, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                    embd_pdrop=args.dropout, resid_pdrop=args.dropout, attn_pdrop=args.dropout)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"params {n_params:,}", flush=True)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
        warm = 100
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))))
        gen = torch.Generator().manual_seed(args.seed)
        t0 = time.time()
        tl = []
        for step in tqdm(range(args.steps), desc="training the prior", unit="step", mininterval=2):
            model.train()
            idx = torch.randint(0, len(ztr), (args.batch,), generator=gen)
            z, c = ztr[idx], ctr[idx]
            if args.cfg_dropout > 0:
                drop = torch.rand(args.batch, generator=gen) < args.cfg_dropout
                c = torch.where(drop, torch.full_like(c, NULL_CLASS), c)
            cz = torch.cat([c[:, None], z], 1)
            logits, _ = model(cz[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, vocab), z.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tl.append(loss.item())
            if (step + 1) % 100 == 0 or step == 0:
                el = time.time() - t0
                msg = f"step {step + 1}/{args.steps} train nll {sum(tl) / len(tl):.4f}"
                if (step + 1) % 500 == 0 or step + 1 == args.steps:
                    msg += f" held-out nll {nll(model, cte, zte):.4f}"
                tqdm.write(f"{msg} {el:.0f}s (eta {el / (step + 1) * (args.steps - step - 1):.0f}s)")
                tl = []
        train_s = time.time() - t0
        te_nll = nll(model, cte, zte)
        print(f"held-out per-token NLL {te_nll:.4f} nats", flush=True)

        state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}  # keeps attn.mask buffers
        save_file(state, os.path.join(args.out, "model.safetensors"))

    # Reload through taming's GPT strictly, re-check the held-out NLL.
    if args.eval_only:
        with open(os.path.join(args.out, "config.json")) as f:
            cfg = json.load(f)
        with open(os.path.join(args.out, "metrics.json")) as f:
            metrics = json.load(f)
    else:
        cfg = {"architecture": "taming_mingpt", "vocab_size": vocab, "block_size": 64, "n_layer": args.n_layer,
               "n_head": args.n_head, "n_embd": args.n_embd, "n_classes": N_CLASSES, "token_grid": [8, 8],
               "conditioning": "class_token", "decoder": "../digits-vqgan"}
        if args.cfg_dropout > 0:
            cfg["null_class"] = NULL_CLASS
    m2 = GPT(vocab_size=cfg["vocab_size"], block_size=cfg["block_size"], n_layer=cfg["n_layer"],
             n_head=cfg["n_head"], n_embd=cfg["n_embd"])
    m2.load_state_dict(load_file(os.path.join(args.out, "model.safetensors")), strict=True)
    nll2 = nll(m2, cte, zte)
    if args.eval_only:
        te_nll = metrics["heldout_nll_nats_per_token"]
    assert abs(nll2 - te_nll) < 1e-3, (nll2, te_nll)
    print(f"reloaded strictly via taming GPT: held-out NLL {nll2:.4f} (matches)", flush=True)

    if not args.eval_only:
        metrics = {"heldout_nll_nats_per_token": round(te_nll, 4), "params": n_params, "vocab_size": vocab,
                   "train_sequences": len(ztr), "train_seconds": round(train_s, 1), "steps": args.steps,
                   "batch": args.batch, "seed": args.seed, "cfg_dropout": args.cfg_dropout}
    sampling = {"temperature": 1.0, "top_k": 100}
    if os.path.exists(os.path.join(args.vit, "model.safetensors")):
        vit = load_vit(args.vit)
        results = {}
        guided = "null_class" in cfg
        settings = [(1.0, 100, 1.0), (1.0, 50, 1.0), (0.8, 50, 1.0), (0.7, 20, 1.0), (0.5, 10, 1.0)]
        if guided:
            settings += [(1.0, 100, 2.0), (1.0, 100, 3.0), (1.0, 50, 3.0), (0.8, 50, 3.0), (1.0, 100, 4.0)]
        for temp, k, s in settings:
            acc, imgs, c, pred = sample_accuracy(m2, vq, vit, temp, k, seed=args.seed, cfg_scale=s)
            results[f"t{temp}_k{k}" + (f"_cfg{s}" if s != 1.0 else "")] = acc
            print(f"samples temperature {temp} top_k {k} guidance {s}: digits-vit agrees with the class for "
                  f"{acc * 100:.0f}% (10 per class, seed {args.seed})", flush=True)
            if (temp, k, s) == (1.0, 100, 1.0):
                metrics["sample_accuracy_t1.0_k100"] = acc
                per = {str(i): int((pred[c == i] == i).sum()) for i in range(N_CLASSES)}
                metrics["sample_correct_per_class_t1.0_k100"] = per
                # Grid of the samples (10 rows = classes, 10 columns) for the card.
                from PIL import Image

                g = imgs.view(10, 10, 3, 32, 32).permute(0, 3, 1, 4, 2).reshape(320, 320, 3).numpy()
                Image.fromarray(g).save(os.path.join(args.out, "samples_t1.0_k100.png"))
        metrics["sample_accuracy"] = results
        # The best setting, preferring the highest temperature / top_k among ties (more diverse).
        best = max(results, key=lambda key: (round(results[key], 2), key))
        t, rest = best[1:].split("_k")
        k, _, s = rest.partition("_cfg")
        sampling = {"temperature": float(t), "top_k": int(k)}
        if s:
            sampling["guidance"] = float(s)
    else:
        print("digits-vit not found: skipping the sample check", flush=True)
    cfg["sampling"] = sampling
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    metrics["eval_only_seconds" if args.eval_only else "total_seconds"] = round(time.time() - t_start, 1)
    metrics["file_bytes"] = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(metrics, flush=True)


if __name__ == "__main__":
    main()
