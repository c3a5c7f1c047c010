"""JPEG baseline for docs/CODEC.md: for each image, the JPEG quality (Pillow's libjpeg, 4:2:0)
whose file is closest to a target bits per pixel, with PSNR and SSIM measured as `lowbit
compress` does (8-bit RGB; SSIM: 11x11 Gaussian window, sigma 1.5, valid windows, mean of the
R, G, B channels' SSIM, as src/cli/compare.rs).

    python3 tools/codec_jpeg.py BPP IMAGE...
"""
import io
import sys

import numpy as np
from PIL import Image


def ssim_plane(x, y):
    size = min(11, *x.shape)
    sigma = 1.5 * size / 11
    r = size / 2 - 0.5
    d = np.arange(size) - r
    g = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma * sigma))
    g /= g.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    h, w = x.shape
    vals = []
    for oy in range(h - size + 1):
        for ox in range(w - size + 1):
            a, b = x[oy:oy + size, ox:ox + size], y[oy:oy + size, ox:ox + size]
            mx, my = (g * a).sum(), (g * b).sum()
            vx, vy = (g * a * a).sum() - mx * mx, (g * b * b).sum() - my * my
            cxy = (g * a * b).sum() - mx * my
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def jpeg_bpp(img, quality):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return len(buf.getvalue()) * 8 / (img.width * img.height)


def measure(img, quality):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float64)
    ref = np.asarray(img, dtype=np.float64)
    mse = ((out - ref) ** 2).mean()
    psnr = 10 * np.log10(255 ** 2 / mse) if mse > 0 else float("inf")
    ssim = np.mean([ssim_plane(ref[..., c], out[..., c]) for c in range(3)])
    return len(buf.getvalue()) * 8 / (img.width * img.height), psnr, ssim


target = float(sys.argv[1])
for path in sys.argv[2:]:
    img = Image.open(path).convert("RGB")
    best = min(range(1, 96), key=lambda q: abs(jpeg_bpp(img, q) - target))
    bpp, psnr, ssim = measure(img, best)
    print(f"{path}: JPEG quality {best}: {bpp:.4f} bpp, PSNR {psnr:.2f} dB, SSIM {ssim:.4f}")
