//! Image preprocessing as timm's eval transform: `Resize(floor(size / crop_pct))` of the
//! shorter side, `CenterCrop(size)`, `ToTensor`, `Normalize(mean, std)`.
//!
//! The resize reproduces Pillow's `Image.resize` (what torchvision runs on PIL images) in its
//! 8-bit fixed-point form: separable passes, horizontal then vertical, each rounded back to
//! u8, with the filter widened by the downscale factor (antialiasing). Matching it bit for bit
//! keeps the logits comparable with timm's own pipeline.

use image::RgbImage;

use super::vit::config::PreprocessConfig;
use super::files::MAX_IMAGE_PIXELS;
use crate::{invalid, Result};

pub use super::files::load_image;

/// `img` → normalized CHW f32 of `cfg.input_size`. An image already at the input size is
/// only scaled and normalized; any other goes through resize + center crop first.
/// The largest intermediate image the resize before the crop may produce.
const MAX_RESIZE_PIXELS: usize = 1 << 27;

pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    let (th, tw) = cfg.input_size;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        invalid!("empty {w}×{h} image");
    }
    let pixels = img.as_raw();
    let resized;
    let (src, sw, sh) = if (h, w) == (th, tw) {
        (&pixels[..], w, h)
    } else {
        let filter = Filter::parse(&cfg.interpolation)?;
        let scale = (th.max(tw) as f64 / cfg.crop_pct).floor();
        // Checked before the resize allocates: a tiny crop_pct asks for an enormous image.
        let (fw, fh) = if w <= h { (scale, scale * h as f64 / w as f64) } else { (scale * w as f64 / h as f64, scale) };
        if (fw * fh).is_nan() || fw * fh > MAX_IMAGE_PIXELS as f64 {
            invalid!(
                "image {w}×{h} would be resized to about {fw:.0}×{fh:.0} (crop_pct {}) before the {tw}×{th} crop: over the limit of {MAX_IMAGE_PIXELS} pixels",
                cfg.crop_pct
            );
        }
        let scale = scale as usize;
        // torchvision's Resize(int): the shorter side becomes `scale`, the longer keeps the ratio.
        let (nw, nh) = if w <= h { (scale, scale.saturating_mul(h) / w) } else { (scale.saturating_mul(w) / h, scale) };
        // A tiny crop_pct or an extreme aspect ratio must not ask for a gigapixel buffer.
        if nw.saturating_mul(nh) > MAX_RESIZE_PIXELS {
            invalid!("image {w}×{h} would be resized to {nw}×{nh} (crop_pct {}): more than {MAX_RESIZE_PIXELS} pixels", cfg.crop_pct);
        }
        if nw < tw || nh < th {
            invalid!("image {w}×{h} resized to {nw}×{nh} is smaller than the {tw}×{th} crop");
        }
        resized = resize(pixels, w, h, nw, nh, filter);
        (&resized[..], nw, nh)
    };
    // CenterCrop offsets as torchvision: int(round((size - crop) / 2)), round half to even.
    let top = round_half_even((sh - th) as f64 / 2.0);
    let left = round_half_even((sw - tw) as f64 / 2.0);
    let mut out = vec![0f32; 3 * th * tw];
    for c in 0..3 {
        let (m, s) = (cfg.mean[c], cfg.std[c]);
        for y in 0..th {
            for x in 0..tw {
                let v = src[((top + y) * sw + left + x) * 3 + c] as f32 / 255.0;
                out[(c * th + y) * tw + x] = (v - m) / s;
            }
        }
    }
    Ok(out)
}

fn round_half_even(x: f64) -> usize {
    let r = x.round();
    let r = if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 { r - x.signum() } else { r };
    r as usize
}

#[derive(Clone, Copy, Debug)]
enum Filter {
    Bicubic,
    Bilinear,
}

impl Filter {
    fn parse(name: &str) -> Result<Filter> {
        match name {
            "bicubic" => Ok(Filter::Bicubic),
            "bilinear" => Ok(Filter::Bilinear),
            _ => invalid!("interpolation `{name}` is not supported (bicubic, bilinear)"),
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Bilinear => 1.0,
        }
    }

    /// Pillow's kernels; bicubic with a = -0.5.
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => (1.0 - x).max(0.0),
            Filter::Bicubic => {
                let a = -0.5;
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
        }
    }
}

/// Pillow's fixed-point precision for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output position: first input index and fixed-point weights (Pillow's
/// `precompute_coeffs` + `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax).map(|x| filter.weight((x as f64 - center + 0.5) / filter_scale)).collect();
            let total: f64 = w.iter().sum();
            let one = (1i64 << PRECISION_BITS) as f64;
            let fixed = w
                .iter()
                .map(|&k| {
                    let k = if total != 0.0 { k / total } else { k };
                    if k < 0.0 { (-0.5 + k * one) as i64 } else { (0.5 + k * one) as i64 }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes interleaved RGB8 `src` (w × h) to nw × nh, horizontal pass first as Pillow does.
fn resize(src: &[u8], w: usize, h: usize, nw: usize, nh: usize, filter: Filter) -> Vec<u8> {
    let horizontal = if nw != w {
        let coeffs = coefficients(w, nw, filter);
        let mut out = vec![0u8; nw * h * 3];
        for y in 0..h {
            for (x, (x0, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let acc = k.iter().enumerate().fold(1i64 << (PRECISION_BITS - 1), |a, (i, &kk)| a + src[(y * w + x0 + i) * 3 + c] as i64 * kk);
                    out[(y * nw + x) * 3 + c] = clip8(acc);
                }
            }
        }
        out
    } else {
        src.to_vec()
    };
    if nh == h {
        return horizontal;
    }
    let coeffs = coefficients(h, nh, filter);
    let mut out = vec![0u8; nw * nh * 3];
    for (y, (y0, k)) in coeffs.iter().enumerate() {
        for x in 0..nw {
            for c in 0..3 {
                let acc = k.iter().enumerate().fold(1i64 << (PRECISION_BITS - 1), |a, (i, &kk)| a + horizontal[((y0 + i) * nw + x) * 3 + c] as i64 * kk);
                out[(y * nw + x) * 3 + c] = clip8(acc);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_half_even_matches_python() {
        assert_eq!([0.5, 1.5, 2.5, 3.0, 2.4].map(super::round_half_even), [0, 2, 2, 3, 2]);
    }
}
