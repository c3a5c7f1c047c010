//! Images between files and tensors: what classify, encode, decode, generate and the demo share.

use image::{Rgb, RgbImage};

/// One CHW image in taming's [−1, 1] range → 8-bit RGB: clamp((x + 1) · 127.5), truncated like
/// taming's `custom_to_pil` (`(255 · (x + 1) / 2).astype(uint8)`).
pub fn signed_chw_to_rgb(chw: &[f32], h: usize, w: usize) -> RgbImage {
    let plane = h * w;
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        Rgb([0, 1, 2].map(|c| ((chw[c * plane + i] + 1.0) * 127.5).clamp(0.0, 255.0) as u8))
    })
}

/// The center `h`×`w` crop of an RGB image as CHW floats in taming's [−1, 1] (x / 127.5 − 1).
pub fn rgb_to_signed_chw(img: &RgbImage, h: usize, w: usize) -> Vec<f32> {
    let (y0, x0) = ((img.height() as usize - h) / 2, (img.width() as usize - w) / 2);
    let mut out = vec![0.0; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            let p = img.get_pixel((x0 + x) as u32, (y0 + y) as u32);
            for c in 0..3 {
                out[(c * h + y) * w + x] = p[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    out
}

/// Images laid out in a grid of `cols` columns with `gap` pixels of `background` between
/// them, each enlarged `scale`× (nearest neighbour, so pixels stay visible).
pub fn tile(images: &[RgbImage], cols: usize, scale: u32, gap: u32, background: [u8; 3]) -> RgbImage {
    let cols = cols.max(1);
    let rows = images.len().div_ceil(cols).max(1);
    let cell_w = images.iter().map(|i| i.width()).max().unwrap_or(1) * scale;
    let cell_h = images.iter().map(|i| i.height()).max().unwrap_or(1) * scale;
    let mut out = RgbImage::from_pixel(
        cols as u32 * (cell_w + gap) + gap,
        rows as u32 * (cell_h + gap) + gap,
        Rgb(background),
    );
    for (i, img) in images.iter().enumerate() {
        let (x0, y0) = (gap + (i % cols) as u32 * (cell_w + gap), gap + (i / cols) as u32 * (cell_h + gap));
        for y in 0..img.height() * scale {
            for x in 0..img.width() * scale {
                out.put_pixel(x0 + x, y0 + y, *img.get_pixel(x / scale, y / scale));
            }
        }
    }
    out
}

/// `images` side by side (top-aligned) with `gap` pixels between them.
pub fn hstack(images: &[RgbImage], gap: u32, background: [u8; 3]) -> RgbImage {
    let w = images.iter().map(|i| i.width() + gap).sum::<u32>().saturating_sub(gap).max(1);
    let h = images.iter().map(|i| i.height()).max().unwrap_or(1);
    let mut out = RgbImage::from_pixel(w, h, Rgb(background));
    let mut x0 = 0;
    for img in images {
        image::imageops::replace(&mut out, img, x0 as i64, 0);
        x0 += img.width() + gap;
    }
    out
}

/// `images` one above the other (left-aligned).
pub fn vstack(images: &[RgbImage], gap: u32, background: [u8; 3]) -> RgbImage {
    let h = images.iter().map(|i| i.height() + gap).sum::<u32>().saturating_sub(gap).max(1);
    let w = images.iter().map(|i| i.width()).max().unwrap_or(1);
    let mut out = RgbImage::from_pixel(w, h, Rgb(background));
    let mut y0 = 0;
    for img in images {
        image::imageops::replace(&mut out, img, 0, y0 as i64);
        y0 += img.height() + gap;
    }
    out
}
