#!/usr/bin/env python3
"""Recipe sweeps on Ray: a grid of models × recipes × methods × calibration counts, each cell
`lowbit quantize` then `lowbit compare` (and `lowbit eval` with --data) as an independent task.

    python3 tools/sweep.py --models assets/models/digits-vit --recipes w8a16,w4a16 \
        --methods rtn,gptq --calib-counts 8,32 --calib CALIB_DIR --images IMAGES_DIR \
        --out sweep.jsonl [--data IMAGEFOLDER] [--address ray://head:10001] \
        [--table docs/QUANTIZATION.md] [--plot docs/sweep.png]

- On one machine by default (`ray.init()`); on a cluster with `--address` (every node needs the
  `lowbit` binary at the same path, or on PATH, and the model/image folders).
- Resumable: cells already in the JSONL with `"status": "ok"` are skipped; failed cells run again.
- Each finished cell is appended to the JSONL at once, so an interrupted sweep loses nothing.
- A cell that fails (an unknown recipe, a model folder gone mid-sweep, ...) is recorded with
  `"status": "error"` and lowbit's message; the other cells finish.
- `--table FILE` rewrites the table between `<!-- sweep:begin -->` and `<!-- sweep:end -->`
  in FILE (appended at the end when the markers are missing); `--plot FILE` draws accuracy
  against bits per weight, one line per method.

Ray is a tool here, never a dependency of lowbit: `pip install ray matplotlib`.
"""
import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

BEGIN, END = "<!-- sweep:begin -->", "<!-- sweep:end -->"


def cell_key(cell):
    return f"{cell['model']}|{cell['recipe']}|{cell['method']}|{cell['calib_count']}"


def run_cell(cell, opts):
    """Quantizes and measures one cell; returns its record (never raises)."""
    t0 = time.time()
    record = dict(cell, key=cell_key(cell))
    work = tempfile.mkdtemp(prefix="lowbit-sweep-")
    out = os.path.join(work, "model")
    env = dict(os.environ, XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR") or work)

    def lowbit(*args):
        p = subprocess.run([opts["lowbit"], *args, "--quiet"], capture_output=True, text=True, env=env)
        if p.returncode != 0:
            lines = [l for l in p.stderr.strip().splitlines() if l.strip()] or [f"exit code {p.returncode}"]
            raise RuntimeError(f"lowbit {args[0]}: {lines[-1].removeprefix('error: ')}")
        return p.stdout

    try:
        args = ["quantize", "--model", cell["model"], "--recipe", cell["recipe"], "--out", out]
        if cell["method"] != "default":
            args += ["--method", cell["method"]]
        if opts.get("calib"):
            args += ["--calib", opts["calib"], "--calib-count", str(cell["calib_count"])]
        summary = lowbit(*args)
        m = re.search(r"(\d+) parameters: ([\d.]+) MB packed", summary)
        if m:
            record["params"] = int(m.group(1))
            record["bits_per_weight"] = round(8 * float(m.group(2)) * 1e6 / int(m.group(1)), 3)
        compare = json.loads(lowbit("compare", "--reference", cell["model"], "--model", out, "--images", opts["images"], "--json"))
        for k in ("cosine", "sqnr_db", "top1_agreement"):
            if k in compare:
                record[k] = compare[k]
        if opts.get("data"):
            ev = json.loads(lowbit("eval", "--model", out, "--data", opts["data"], "--json"))
            record["top1"] = ev.get("top1")
        record["status"] = "ok"
    except Exception as e:  # a cell's failure is its result, not the sweep's
        record["status"] = "error"
        record["error"] = str(e)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record["seconds"] = round(time.time() - t0, 2)
    return record


def load_done(path):
    done = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    r = json.loads(line)
                    done[r["key"]] = r
    return done


def render_table(records):
    cols = ["model", "recipe", "method", "calib_count", "bits_per_weight", "cosine", "sqnr_db", "top1_agreement", "top1", "seconds"]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(records, key=lambda r: (r["model"], r["recipe"], r["method"], r["calib_count"])):
        if r["status"] != "ok":
            error = r["error"].replace("|", "\\|")
            rows.append(f"| {os.path.basename(r['model'])} | {r['recipe']} | {r['method']} | {r['calib_count']} | error: {error} |")
            continue
        digits = {"cosine": 6, "top1_agreement": 3, "top1": 3, "sqnr_db": 2, "bits_per_weight": 2, "seconds": 1}
        cell = lambda k: "" if r.get(k) is None else (f"{r[k]:.{digits.get(k, 4)}f}" if isinstance(r[k], float) else str(r[k]))
        rows.append("| " + " | ".join(os.path.basename(r["model"]) if c == "model" else cell(c) for c in cols) + " |")
    return "\n".join(rows)


def write_table(path, records, command):
    table = f"{BEGIN}\nMade by `{command}`:\n\n{render_table(records)}\n{END}"
    text = open(path).read() if os.path.exists(path) else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + table + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + table + "\n"
    with open(path, "w") as f:
        f.write(text)


def write_plot(path, records):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ok = [r for r in records if r["status"] == "ok" and r.get("bits_per_weight") is not None]
    metric = "top1" if any(r.get("top1") is not None for r in ok) else "cosine"
    for method in sorted({r["method"] for r in ok}):
        pts = sorted((r["bits_per_weight"], r[metric]) for r in ok if r["method"] == method and r.get(metric) is not None)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=method)
    ax.set_xlabel("bits per weight")
    ax.set_ylabel(metric + (" (vs f32 logits)" if metric == "cosine" else ""))
    ax.grid(alpha=0.3)
    ax.legend(title="method")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", required=True, help="comma list of model folders")
    ap.add_argument("--recipes", required=True, help="comma list of lowbit quantize recipes")
    ap.add_argument("--methods", default="default", help="comma list; each entry is one --method value (use + for several, e.g. gptq+clip)")
    ap.add_argument("--calib-counts", default="32", help="comma list of --calib-count values")
    ap.add_argument("--calib", help="calibration images (lowbit quantize --calib)")
    ap.add_argument("--images", required=True, help="images for lowbit compare (vs the f32 model)")
    ap.add_argument("--data", help="an ImageFolder for lowbit eval (top-1)")
    ap.add_argument("--out", required=True, help="results, one JSON object per line (appended)")
    ap.add_argument("--address", help="a Ray cluster's address (default: a local instance)")
    ap.add_argument("--num-cpus", type=int, help="CPUs of the local instance (default: all)")
    ap.add_argument("--lowbit", default=shutil.which("lowbit") or "target/release/lowbit", help="the lowbit binary")
    ap.add_argument("--table", help="a Markdown file whose sweep table to rewrite")
    ap.add_argument("--plot", help="a PNG of accuracy vs bits per weight")
    a = ap.parse_args()

    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]
    cells = [
        {"model": m, "recipe": r, "method": meth.replace("+", ","), "calib_count": int(n)}
        for m, r, meth, n in itertools.product(split(a.models), split(a.recipes), split(a.methods), split(a.calib_counts))
    ]
    done = load_done(a.out)
    todo = [c for c in cells if done.get(cell_key(c), {}).get("status") != "ok"]
    print(f"{len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run", flush=True)
    opts = {"lowbit": os.path.abspath(a.lowbit) if os.path.exists(a.lowbit) else a.lowbit,
            "calib": a.calib, "images": a.images, "data": a.data}

    if todo:
        import ray
        ray.init(address=a.address, num_cpus=None if a.address else a.num_cpus, include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
        # lowbit uses every core of its own; one task per core would oversubscribe a node.
        task = ray.remote(num_cpus=1)(run_cell)
        pending = {task.remote(c, opts): c for c in todo}
        with open(a.out, "a") as f:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    record = ray.get(ref)
                    pending.pop(ref)
                    f.write(json.dumps(record) + "\n")
                    f.flush()
                    done[record["key"]] = record
                    state = "ok" if record["status"] == "ok" else f"error: {record['error']}"
                    print(f"[{len(todo) - len(pending)}/{len(todo)}] {record['key']}: {state}", flush=True)
        ray.shutdown()

    records = [done[cell_key(c)] for c in cells if cell_key(c) in done]
    command = "python3 tools/sweep.py " + " ".join(sys.argv[1:])
    if a.table:
        write_table(a.table, records, command)
    if a.plot:
        write_plot(a.plot, records)
    failed = [r for r in records if r["status"] != "ok"]
    print(f"{len(records) - len(failed)} cells ok, {len(failed)} failed", flush=True)


if __name__ == "__main__":
    main()
