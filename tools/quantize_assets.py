#!/usr/bin/env python3
"""Write the quantized copies of digits-vit that ship in assets/models (the viewer's precision
panel lists every `<model>-<recipe>` folder there): w8a8 (int8 activations through the W8A8
kernel), w4a8 (4-bit weights, int8 per-token activations through the W4A8 kernel) and mixed:4.5 (per-layer bit
widths under a 4.5-bit average). Each gets a README with its command and held-out accuracy.

    cargo build --release
    python tools/quantize_assets.py            # uses ./target/release/lowbit and /tmp/digits

Calibration uses training digits (tools/export_digits.py --calib 256), never the held-out ones.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RECIPES = [("w8a8", "int8 weights and int8 per-token activations through the W8A8 integer kernel"),
           ("w4a8", "4-bit weights (GPTQ, groups of 32) and int8 per-token activations with a zero point per row after SmoothQuant smoothing, through the W4A8 integer kernel (the default methods)"),
           ("mixed:4.5", "per-layer weight bits (ternary/4/8) under a 4.5-bit average, chosen by the knapsack on sensitivities")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lowbit", default=os.path.join(ROOT, "target/release/lowbit"))
    ap.add_argument("--digits", default="/tmp/digits", help="tools/export_digits.py output (made if missing)")
    args = ap.parse_args()
    if not os.path.isdir(os.path.join(args.digits, "calib")):
        subprocess.run([sys.executable, os.path.join(ROOT, "tools/export_digits.py"), "--out", args.digits, "--calib", "256"], check=True)
    models = os.path.join(ROOT, "assets/models")
    for recipe, what in RECIPES:
        name = "digits-vit-" + recipe.replace(":", "")
        out = os.path.join(models, name)
        shutil.rmtree(out, ignore_errors=True)
        cmd = [args.lowbit, "quantize", "--model", os.path.join(models, "digits-vit"), "--recipe", recipe,
               "--calib", os.path.join(args.digits, "calib"), "--out", out]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        ev = subprocess.run([args.lowbit, "eval", "--model", out, "--data", os.path.join(args.digits, "test"), "--json"],
                            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        top1 = json.loads(ev)["top1"]["percent"]
        size = os.path.getsize(os.path.join(out, "model.safetensors"))
        with open(os.path.join(out, "README.md"), "w") as f:
            f.write(f"""# {name}

`../digits-vit` quantized by `lowbit quantize --recipe {recipe}`: {what}.
Written by `tools/quantize_assets.py`; `quantization.json` describes every tensor (format, method)
and, for activation recipes, where each activation quantizer sits.

- held-out top-1 (the 1,000 test digits of tools/datasets.py): **{top1}%** (f32 digits-vit: 97.1%)
- file: {size / 1e6:.3f} MB (f32: 1.84 MB)

```sh
python tools/export_digits.py --out /tmp/digits --calib 256
lowbit quantize --model assets/models/digits-vit --recipe {recipe} --calib /tmp/digits/calib --out assets/models/{name}
lowbit eval --model assets/models/{name} --data /tmp/digits/test
```

Calibration: 32 of the 256 exported training digits (the default `--calib-count`, seed 0).
Licence: as digits-vit.
""")
        print(f"{name}: top-1 {top1}%, {size / 1e6:.3f} MB")


if __name__ == "__main__":
    main()
