"""Writes src/models/architectures.json: the timm architectures lowbit knows, read from timm's
own registry (not typed by hand).

Usage (from the repository root, with timm installed):
    python tools/gen_architectures.py [--out src/models/architectures.json]

For every registered `vit_*`, `deit*` and `swin_*` architecture, this calls timm's entrypoint
with `build_model_with_cfg` replaced by a recorder, so it captures exactly the keyword
arguments timm passes to the model class (the architecture's `model_args`), without building
the model. Beside them it stores the default tag's `pretrained_cfg` (input size, mean/std,
crop, interpolation, classes) and, per tag, what that tag's `pretrained_cfg` changes, plus each model class's constructor
defaults. Values lowbit cannot represent (a custom layer class, a callable) are written as
the string "<unsupported: NAME>", so the Rust side can name the option when it refuses it.
"""

import argparse
import functools
import inspect
import json
import os

import timm
import timm.models.deit as deit
import timm.models.swin_transformer as swin
import timm.models.vision_transformer as vit

MODULES = (vit, deit, swin)
MODULE_NAMES = {m.__name__.rsplit(".", 1)[-1] for m in MODULES}
PATTERNS = ["vit_*", "deit*", "swin_*"]
# The model classes lowbit implements, and the family each belongs to.
FAMILIES = {"VisionTransformer": "vit", "VisionTransformerDistilled": "vit", "SwinTransformer": "swin"}
# Builder plumbing, not model arguments.
SKIP_KWARGS = {"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_filter_fn", "pretrained_strict", "feature_cfg"}
PRETRAINED_KEYS = ["input_size", "fixed_input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation", "num_classes"]


class Captured(Exception):
    pass


def jsonable(value):
    """A model argument as JSON: norm layers become their eps, activations their name."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if isinstance(value, functools.partial):
        # timm's `partial(LayerNorm, eps=1e-5)`: the layer and its eps.
        name = getattr(value.func, "__name__", str(value.func))
        if name == "LayerNorm" and set(value.keywords) == {"eps"}:
            return {"layer_norm_eps": value.keywords["eps"]}
        return f"<unsupported: {name}({value.keywords})>"
    name = getattr(value, "__name__", type(value).__name__)
    if name == "LayerNorm":
        return {"layer_norm_eps": 1e-5}
    return f"<unsupported: {name}>"


def capture(name):
    """(model class name, model_args) of timm's entrypoint `name`."""
    seen = {}

    def record(model_cls, variant, pretrained, **kwargs):
        seen["cls"] = model_cls.__name__
        seen["kwargs"] = kwargs
        raise Captured

    saved = [m.build_model_with_cfg for m in MODULES]
    try:
        for m in MODULES:
            m.build_model_with_cfg = record
        try:
            timm.create_model(name, pretrained=False)
        except Captured:
            pass
    finally:
        for m, f in zip(MODULES, saved):
            m.build_model_with_cfg = f
    if "cls" not in seen:
        return None
    args = {k: jsonable(v) for k, v in seen["kwargs"].items() if k not in SKIP_KWARGS}
    return seen["cls"], args


def pretrained_cfg(name):
    cfg = timm.models.get_pretrained_cfg(name)
    return {k: jsonable(getattr(cfg, k)) for k in PRETRAINED_KEYS if cfg is not None and hasattr(cfg, k)}


def class_defaults(cls):
    out = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name in ("self", "kwargs") or p.default is inspect.Parameter.empty:
            continue
        out[p.name] = jsonable(p.default)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "src", "models", "architectures.json"))
    args = ap.parse_args()
    tags = {}
    for full in timm.list_models(PATTERNS, pretrained=True):
        base, _, tag = full.partition(".")
        tags.setdefault(base, []).append(tag)
    archs = {}
    for name in timm.list_models(PATTERNS):
        # Entrypoints of other modules would build their (possibly huge) model for real.
        if timm.models._registry._model_to_module.get(name) not in MODULE_NAMES:
            continue
        got = capture(name)
        if got is None or got[0] not in FAMILIES:
            continue
        cls, model_args = got
        pretrained = pretrained_cfg(name)
        # Each tag's pretrained_cfg, as far as it differs from the default tag's.
        by_tag = {}
        for tag in sorted(tags.get(name, [])):
            cfg = pretrained_cfg(f"{name}.{tag}")
            by_tag[tag] = {k: v for k, v in cfg.items() if pretrained.get(k) != v}
        archs[name] = {"family": FAMILIES[cls], "class": cls, "model_args": model_args, "pretrained_cfg": pretrained, "tags": by_tag}
    table = {
        "generated_by": "tools/gen_architectures.py",
        "timm_version": timm.__version__,
        "defaults": {
            "VisionTransformer": class_defaults(vit.VisionTransformer),
            "VisionTransformerDistilled": class_defaults(vit.VisionTransformer),
            "SwinTransformer": class_defaults(swin.SwinTransformer),
        },
        "architectures": archs,
    }
    with open(args.out, "w") as f:
        # One architecture per line: diffs after a timm upgrade stay readable.
        f.write("{\n")
        head = [k for k in table if k != "architectures"]
        for k in head:
            f.write(f"  {json.dumps(k)}: {json.dumps(table[k])},\n")
        f.write('  "architectures": {\n')
        lines = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(archs.items())]
        f.write(",\n".join(lines))
        f.write("\n  }\n}\n")
    print(f"{len(archs)} architectures (timm {timm.__version__}) -> {args.out}")


if __name__ == "__main__":
    main()
