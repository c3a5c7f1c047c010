#!/usr/bin/env python3
"""lowbit against PyTorch on the CPU, in the same run: the same model, the same input size,
median latency over the same number of runs, and the ratio lowbit / PyTorch.

    python tools/bench_vs_torch.py --model assets/models/digits-vit
    python tools/bench_vs_torch.py --make deit_tiny_patch16_224 --out /tmp/deit_tiny   # random weights
    python tools/bench_vs_torch.py --make taming-f16-16384 --out /tmp/taming_f16
    python tools/bench_vs_torch.py --model /tmp/deit_tiny --format f16 --json
    python tools/bench_vs_torch.py --model /tmp/deit_small --check      # full-size parity too
    python tools/bench_vs_torch.py --model /tmp/deit_tiny --device cuda  # PyTorch on the GPU instead

No weights can be downloaded, so `--make` writes a full-size model with random weights in the
layout lowbit loads (timm's hub layout; taming's VQModel + YAML); speed does not depend on the
values. The two runs take turns rather than overlap, so they do not share the CPU.
Needs: torch, timm, taming-transformers (--no-deps), safetensors, pyyaml; and a built
`target/release/lowbit` (or --lowbit PATH).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import yaml
from safetensors.torch import load_file, save_file

# taming's ImageNet f16-16384 VQGAN (configs/imagenet_vqgan f16 16384 codes).
TAMING_F16 = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
                  ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0)


def make(name, out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    if name == "taming-f16-16384":
        from taming.modules.diffusionmodules.model import Decoder
        decoder = Decoder(**TAMING_F16)
        state = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
        state["quantize.embedding.weight"] = torch.randn(16384, 256)
        pqc = torch.nn.Conv2d(256, 256, 1)
        state.update({f"post_quant_conv.{k}": v for k, v in pqc.state_dict().items()})
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out, "model.safetensors"))
        config = {"model": {"target": "taming.models.vqgan.VQModel",
                            "params": {"embed_dim": 256, "n_embed": 16384, "ddconfig": TAMING_F16}}}
        with open(os.path.join(out, "config.yaml"), "w") as f:
            yaml.safe_dump(config, f)
    else:
        import timm
        model = timm.create_model(name, pretrained=False)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "model.safetensors"))
        cfg = model.pretrained_cfg
        config = {"architecture": name, "num_classes": model.num_classes,
                  "pretrained_cfg": {k: cfg[k] for k in ["input_size", "mean", "std", "crop_pct", "interpolation"]}}
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
    print(f"wrote {name} with random weights to {out}", file=sys.stderr)


def torch_model(path, batch, device="cpu"):
    """The PyTorch module and a function making its input (on `device`), from a lowbit model folder."""
    if os.path.isfile(os.path.join(path, "config.yaml")):
        from taming.modules.diffusionmodules.model import Decoder
        with open(os.path.join(path, "config.yaml")) as f:
            params = yaml.safe_load(f)["model"]["params"]
        dd = params["ddconfig"]
        state = load_file(os.path.join(path, "model.safetensors"))
        decoder = Decoder(**dd)
        decoder.load_state_dict({k[8:]: v.float() for k, v in state.items() if k.startswith("decoder.")})
        pqc = torch.nn.Conv2d(params["embed_dim"], dd["z_channels"], 1)
        pqc.load_state_dict({k[16:]: v.float() for k, v in state.items() if k.startswith("post_quant_conv.")})
        emb = torch.nn.Embedding(params["n_embed"], params["embed_dim"])
        emb.weight.data = state["quantize.embedding.weight"].float()
        r = dd["resolution"] // 2 ** (len(dd["ch_mult"]) - 1)
        decoder, pqc, emb = decoder.to(device), pqc.to(device), emb.to(device)

        def run(tokens):
            return decoder(pqc(emb(tokens).permute(0, 3, 1, 2)))
        return run, lambda: torch.randint(0, params["n_embed"], (batch, r, r), device=device), "decode"
    import timm
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    model = timm.create_model(cfg["architecture"], pretrained=False, num_classes=cfg.get("num_classes", 1000), **cfg.get("model_args", {}))
    model.load_state_dict({k: v.float() for k, v in load_file(os.path.join(path, "model.safetensors")).items()})
    size = cfg.get("pretrained_cfg", {}).get("input_size", [3, 224, 224])
    return model.eval().to(device), lambda: torch.randn(batch, *size, device=device), "classify"


def bench_torch(path, batch, reps, device="cpu"):
    run, make_input, task = torch_model(path, batch, device)
    x = make_input()
    # CUDA launches are asynchronous: wait for each run so the time is the run's.
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    with torch.inference_mode():
        run(x)
        sync()
        for _ in range(reps):
            t = time.perf_counter()
            run(x)
            sync()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), task


@torch.no_grad()
def check(binary, path, fmt):
    """Runs one input through both and compares the outputs (full-size parity)."""
    import tempfile
    import numpy as np
    from PIL import Image
    run, make_input, task = torch_model(path, 1)
    tmp = tempfile.mkdtemp()
    torch.manual_seed(1)
    if task == "classify":
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f).get("pretrained_cfg", {})
        _, h, w = cfg.get("input_size", [3, 224, 224])
        pixels = (torch.rand(h, w, 3) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(os.path.join(tmp, "x.png"))
        mean, std = torch.tensor(cfg.get("mean", [0.485, 0.456, 0.406])), torch.tensor(cfg.get("std", [0.229, 0.224, 0.225]))
        x = ((torch.from_numpy(pixels).float() / 255 - mean) / std).permute(2, 0, 1)[None]
        want = run(x)
        cmd = [binary, "classify", "--model", path, "--format", fmt, "--save-logits", os.path.join(tmp, "out.safetensors"), os.path.join(tmp, "x.png")]
        key = "logits"
    else:
        tokens = make_input()
        save_file({"tokens": tokens.to(torch.int64).contiguous()}, os.path.join(tmp, "tokens.safetensors"))
        want = run(tokens)
        cmd = [binary, "decode", "--model", path, "--format", fmt, "--tokens", os.path.join(tmp, "tokens.safetensors"),
               "--out", os.path.join(tmp, "x.png"), "--save-tensor", os.path.join(tmp, "out.safetensors")]
        key = "image"
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    got = load_file(os.path.join(tmp, "out.safetensors"))[key]
    cos = torch.nn.functional.cosine_similarity(got.flatten().double(), want.flatten().double(), dim=0).item()
    err = (got - want).abs().max().item() / want.abs().max().item()
    return {"cosine": cos, "max_abs_err_rel": err}


def bench_lowbit(binary, path, batch, reps, fmt):
    cmd = [binary, "bench", "model", "--model", path, "--json", "--batch", str(batch), "--reps", str(reps), "--format", fmt]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="lowbit model folder")
    ap.add_argument("--make", help="write a random-weight model first: a timm name or taming-f16-16384")
    ap.add_argument("--out", help="where --make writes (then benchmarked)")
    ap.add_argument("--lowbit", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "lowbit"))
    ap.add_argument("--format", default="f32", help="lowbit weight format (f32, f16, q8, q4g32, ...)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--check", action="store_true", help="also compare one output of each (parity at full size)")
    ap.add_argument("--device", default="cpu", help="where PyTorch runs: cpu (default) or cuda")
    args = ap.parse_args()
    if args.make:
        make(args.make, args.out)
        args.model = args.out
    if not args.model:
        ap.error("--model or --make/--out")
    torch_ms, task = bench_torch(args.model, args.batch, args.reps, args.device)
    lb = bench_lowbit(args.lowbit, args.model, args.batch, args.reps, args.format)
    row = {"model": args.model, "task": task, "batch": args.batch, "reps": args.reps,
           "torch_ms": torch_ms, "torch_device": args.device, "torch_threads": torch.get_num_threads(),
           "lowbit_ms": lb["median_ms"], "lowbit_format": lb["format"], "adapter": lb["adapter"],
           "ratio": lb["median_ms"] / torch_ms, "peak_gpu_bytes": lb["peak_gpu_bytes"]}
    if args.check:
        row.update(check(args.lowbit, args.model, args.format))
    if args.json:
        print(json.dumps(row))
    else:
        print(f"{task} {args.model} batch {args.batch}: PyTorch {args.device} f32 {torch_ms:.1f} ms ({row['torch_threads']} threads), "
              f"lowbit {lb['format']} on {lb['adapter']} {lb['median_ms']:.1f} ms → ratio {row['ratio']:.2f}× "
              f"(peak GPU memory {lb['peak_gpu_bytes'] / 1e6:.1f} MB)")
        if args.check:
            print(f"parity: cosine {row['cosine']:.7f}, max abs error {row['max_abs_err_rel']:.2e} × max|reference|")


if __name__ == "__main__":
    main()
