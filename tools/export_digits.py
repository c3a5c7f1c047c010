"""Writes the digits split of tools/datasets.py as ImageFolder trees of PNGs, for
`lowbit eval --data` (the held-out test digits) and `lowbit quantize --calib` (training digits):

    OUT/test/<digit>/<index>.png     the 1,000 held-out digits every digits model is scored on
    OUT/calib/<digit>/<index>.png    the first --calib training digits (calibration only)

Images are 32x32 RGB (white digit on black), exactly the arrays the training scripts use.
Write to a scratch folder (e.g. /tmp/digits), not into the repository.

    python tools/export_digits.py --out /tmp/digits [--calib 256]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from datasets import digits_split  # noqa: E402


def write(images, labels, root):
    from PIL import Image

    for i, (x, y) in enumerate(zip(images, labels)):
        folder = os.path.join(root, str(int(y)))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(x.transpose(1, 2, 0)).save(os.path.join(folder, f"{i:05d}.png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="scratch folder to create")
    ap.add_argument("--calib", type=int, default=256, help="training digits to export for calibration")
    args = ap.parse_args()
    x_train, y_train, x_test, y_test = digits_split()
    write(x_test, y_test, os.path.join(args.out, "test"))
    write(x_train[: args.calib], y_train[: args.calib], os.path.join(args.out, "calib"))
    print(f"{len(x_test)} test and {min(args.calib, len(x_train))} calibration digits under {args.out}")


if __name__ == "__main__":
    main()
