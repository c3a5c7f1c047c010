#!/usr/bin/env python3
"""The outlier-fixture table of docs/QUANTIZATION.md: every recipe x method on digits-vit,
photo-vit and each outlier fixture (tools/make_outlier_fixtures.py), `lowbit quantize` then
`lowbit compare` against that model's own f32 logits.

    python tools/export_digits.py --out /tmp/digits
    /work/venv/bin/python tools/make_outlier_fixtures.py --out tests/fixtures/outlier --data /tmp/photo-data
    python3 tools/quant_table.py --lowbit target/debug/lowbit --out /tmp/quant-table.jsonl

Cells already in --out are skipped (the run resumes); --markdown prints the table from it.
Calibration: 32 images, seed 0 (digits: /tmp/digits/calib; photo models: the 64 exported
training-region crops). Compared on held-out images, subsets so that the whole grid runs in
about an hour on 2 busy cores: 50 test digits (the first 5 of each class of /tmp/digits/test,
copied to /tmp/digits/test50) and 60 of photo-vit's 180 held-out crops (every third file of
each class of /tmp/photo-data/test, copied to /tmp/photo-data/test60); `--subsets` makes them.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

FIXTURES = ("outlier-ln", "outlier-gelu", "massive", "layerscale")
PHOTO_CALIB, PHOTO_TEST = "/tmp/photo-data/calib", "/tmp/photo-data/test60"
MODELS = {
    "digits-vit": ("assets/models/digits-vit", "/tmp/digits/calib", "/tmp/digits/test50"),
    "photo-vit": ("assets/models/photo-vit", PHOTO_CALIB, PHOTO_TEST),
    **{name: (f"tests/fixtures/outlier/{name}", PHOTO_CALIB, PHOTO_TEST) for name in FIXTURES},
}

ALL = list(MODELS)
# Not in ALL (make them first, `--models` picks them), each a source model and the four fixtures
# planted into it:
# * `-d12`: the twelve-block stand-in (a ViT-Ti's depth and width on photo-vit's data):
#     /work/venv/bin/python tools/train_photo_vit.py --out /tmp/photo-vit-d12 --depth 12 --embed-dim 192 \
#         --heads 3 --steps 2000 --threads 2
#     /work/venv/bin/python tools/make_outlier_fixtures.py --src /tmp/photo-vit-d12 --out /tmp/outlier-d12
# * `-rh`, `-d12-rh`: issue 13's protocol for a backbone, a seeded random 16-class head centred on
#   each model's calibration features (make_outlier_fixtures.py --random-head 16 [--src ...]
#   --out /tmp/outlier-rh or /tmp/outlier-d12-rh; the source model itself goes to base/).
for suffix, source, fixtures in (("-d12", "/tmp/photo-vit-d12", "/tmp/outlier-d12"),
                                 ("-rh", "/tmp/outlier-rh/base", "/tmp/outlier-rh"),
                                 ("-d12-rh", "/tmp/outlier-d12-rh/base", "/tmp/outlier-d12-rh")):
    MODELS[f"photo-vit{suffix}"] = (source, PHOTO_CALIB, PHOTO_TEST)
    for name in FIXTURES:
        MODELS[f"{name}{suffix}"] = (f"{fixtures}/{name}", PHOTO_CALIB, PHOTO_TEST)
# Where the choice between methods is decided: the real model and the fixtures with outliers.
OUTLIERS = ["photo-vit", "outlier-ln", "outlier-gelu", "massive"]

# (recipe, method or "" for the recipe's default, models). Ordered by what matters most first.
CELLS = [
    ("w8a8", "", ALL),
    ("w4a16", "", ALL),
    # The defaults before this table (static per-tensor activations, picked on digits-vit).
    ("w4a8", "noisy,adalog,clip,gptq", ALL),
    ("w4a4", "repq,noisy,adalog,clip,gptq", ALL),
    ("w4a8", "dynamic,adalog,clip,gptq", ALL),
    ("w4a4", "dynamic,adalog,clip,gptq", ALL),
    ("w4a4", "dynamic,rotate,adalog,clip,gptq", ALL),
    ("w4a8", "dynamic,rotate,adalog,clip,gptq", ALL),
    ("w4a4", "dynamic,rotate,repq,adalog,clip,gptq", ALL),
    ("w4a4", "repq,adalog,clip,gptq", OUTLIERS),
    ("w4a4", "clip,gptq", OUTLIERS),
    ("w4a8", "clip,gptq", OUTLIERS),
    ("w4a8", "dynamic,clip,gptq", ALL),
    ("w4a4", "smoothq,noisy,adalog,clip,gptq", OUTLIERS),
    ("w6a6", "", OUTLIERS),
    # 2026-12-06: block-sequential GPTQ (run with --calib-count 32 and 64: it needs the rows).
    ("w4a16", "sequential,gptq,clip", ALL),
    ("w4a8", "dynamic,sequential,gptq,clip", ALL),
    # 2026-12-06: per-token codes with a zero point per row (the w4a4 default since).
    ("w4a4", "dynamic,asymmetric,rotate,repq,adalog,clip,gptq", ALL),
    ("w4a4", "dynamic,asymmetric,repq,adalog,clip,gptq", ALL),
    ("w4a8", "dynamic,asymmetric,clip,gptq", ALL),
]


def run(cmd, env):
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return p, time.time() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lowbit", default="target/debug/lowbit")
    ap.add_argument("--out", default="/tmp/quant-table.jsonl")
    ap.add_argument("--work", default="/tmp/quant-table")
    ap.add_argument("--models", default=",".join(ALL))
    ap.add_argument("--calib-count", type=int, default=32)
    ap.add_argument("--photo-calib", help="the photo models' calibration folder instead of /tmp/photo-data/calib "
                                          "(e.g. 256 crops from make_outlier_fixtures.py --data-calib 256)")
    ap.add_argument("--markdown", action="store_true", help="only print the table of --out")
    ap.add_argument("--sensitivity", help="passed to quantize (mixed:<bits> recipes: hessian, output, fisher, lrp)")
    ap.add_argument("--subsets", action="store_true", help="make /tmp/digits/test50 and /tmp/photo-data/test60 first")
    ap.add_argument("--cells", help="only these cells, e.g. 'w4a16:gptq,clip;mixed:4.5:gptq,clip' ('w6a6:' for a default)")
    args = ap.parse_args()
    done = {}
    if os.path.exists(args.out):
        for line in open(args.out):
            r = json.loads(line)
            done[(r["model"], r["recipe"], r["method"])] = r
    if args.markdown:
        return markdown(done, args.models.split(","))
    if args.subsets:
        make_subsets()
    env = dict(os.environ, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"))
    os.makedirs(args.work, exist_ok=True)
    cells = CELLS
    if args.cells:
        cells = [(c.rsplit(":", 1)[0], c.rsplit(":", 1)[1], list(MODELS)) for c in args.cells.split(";")]
    for recipe, method, models in cells:
        for name in args.models.split(","):
            if name not in models or (name, recipe, method) in done:
                continue
            path, calib, images = MODELS[name]
            if args.photo_calib and calib == PHOTO_CALIB:
                calib = args.photo_calib
            out = os.path.join(args.work, f"{name}-{recipe}-{method.replace(',', '_') or 'default'}")
            shutil.rmtree(out, ignore_errors=True)
            cmd = [args.lowbit, "quantize", "--model", path, "--recipe", recipe, "--calib", calib,
                   "--calib-count", str(args.calib_count), "--seed", "0", "--out", out]
            if method:
                cmd += ["--method", method]
            if args.sensitivity:
                cmd += ["--sensitivity", args.sensitivity]
            p, secs = run(cmd, env)
            row = {"model": name, "recipe": recipe, "method": method, "quantize_s": round(secs, 1)}
            if args.sensitivity:
                row["sensitivity"] = args.sensitivity
            if p.returncode != 0:
                row["error"] = (p.stderr or p.stdout).strip().splitlines()[-1:]
            else:
                m = re.search(r"([0-9.]+) MB packed", p.stdout)
                row["packed_mb"] = float(m.group(1)) if m else None
                desc = json.load(open(os.path.join(out, "quantization.json")))
                row["default_method"] = desc.get("method") or desc.get("methods")
                c, _ = run([args.lowbit, "compare", "--reference", path, "--model", out, "--images", images, "--json"], env)
                if c.returncode != 0:
                    row["error"] = c.stderr.strip().splitlines()[-1:]
                else:
                    j = json.loads(c.stdout)
                    row.update(cosine=j["cosine"], sqnr_db=j["sqnr_db"], top1_agreement=j["top1_agreement"], images=j["images"])
                    # Per image (the protocol: the mean and the worst of a few photos).
                    row.update({k: j[k] for k in ("cosine_image_mean", "cosine_image_min") if k in j})
                shutil.rmtree(out, ignore_errors=True)
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


def make_subsets():
    for src, dst, pick in (("/tmp/digits/test", "/tmp/digits/test50", lambda f: f[:5]),
                           ("/tmp/photo-data/test", "/tmp/photo-data/test60", lambda f: f[::3])):
        shutil.rmtree(dst, ignore_errors=True)
        for c in sorted(os.listdir(src)):
            os.makedirs(os.path.join(dst, c))
            for f in pick(sorted(os.listdir(os.path.join(src, c)))):
                shutil.copy(os.path.join(src, c, f), os.path.join(dst, c, f))


def kernel(recipe, method):
    """Which kernels run the block Linears of a checkpoint of this recipe/method."""
    m = method.split(",") if method else []
    if recipe == "w8a8":
        return "`kernels::w8a8` (int8 × int8, per-token), SageAttention"
    if recipe == "w4a16":
        return "packed q4 × f32 (`matmul`)"
    if recipe == "w6a6":
        return "packed q8 × f32 + simulated `act_quant`"
    if not m and recipe in ("w4a8", "w4a4"):
        # The defaults (quant::recipe::Methods::default_for_activations).
        m = ["dynamic", "asymmetric"] + (["rotate"] if recipe == "w4a4" else [])
    if "dynamic" in m:
        rot = "rotate" in m
        zero = ", zero point per row" if "asymmetric" in m else ""
        return ("`kernels::hadamard` + " if rot else "") + f"`kernels::w4a8` DYNAMIC ({recipe[-1]}-bit per token{zero})"
    return f"`kernels::w4a8` static ({recipe[-1]}-bit per tensor)"


def markdown(done, models):
    """cosine / SQNR dB / top-1 agreement per model; MB = packed size (digits-vit / photo-vit family)."""
    print("| recipe | method | MB | " + " | ".join(models) + " | kernel (block Linears) |")
    print("|---|---|---|" + "---|" * len(models) + "---|")
    for recipe, method, _ in CELLS:
        cells, sizes = [], []
        for m in models:
            r = done.get((m, recipe, method))
            if r is None:
                cells.append("–")
            elif "error" in r:
                cells.append("error")
            else:
                cells.append(f"{r['cosine']:.5f} / {r['sqnr_db']:.1f} / {r['top1_agreement'] * 100:.0f}%")
                if m in ("digits-vit", "photo-vit") and r.get("packed_mb"):
                    sizes.append(f"{r['packed_mb']:.3f}")
        name = method or "default"
        print(f"| {recipe} | {name} | {' / '.join(sizes) or '–'} | " + " | ".join(cells) + f" | {kernel(recipe, method)} |")

if __name__ == "__main__":
    sys.exit(main())
