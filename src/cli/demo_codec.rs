//! The codec part of `lowbit demo`: a photograph's tokens entropy-coded as `lowbit compress`
//! codes them without a prior, against JPEG (the `image` crate's encoder) at the same bits per
//! pixel.
//!
//! Both sides are counted without their headers: the `.lbt` payload (no container header) and
//! the JPEG's entropy-coded scan (everything after the SOS segment: no quantization or Huffman
//! tables). On a 128² crop a JPEG's tables alone are ~0.3 bpp, which would decide the
//! comparison on bookkeeping instead of on how well each spends its bits on the picture.

use image::codecs::jpeg::{JpegDecoder, JpegEncoder};
use image::{DynamicImage, RgbImage};

use crate::metrics::psnr_db;
use crate::models::vqgan::TokenGrid;
use crate::Gpu;

/// What one tokenizer's codec did on the photograph, beside JPEG at the nearest rate.
pub struct CodecRow {
    pub tokenizer: String,
    pub bpp: f64,
    pub psnr_db: f64,
    pub jpeg: JpegPoint,
}

/// A JPEG encoding of the same crop.
pub struct JpegPoint {
    pub quality: u8,
    pub bpp: f64,
    pub psnr_db: f64,
}

impl CodecRow {
    /// `tokens` are the crop's, `reconstructed` their decode.
    pub fn measure(gpu: &Gpu, tokenizer: &str, tokens: &TokenGrid, codebook: usize, original: &RgbImage, reconstructed: &RgbImage) -> anyhow::Result<CodecRow> {
        let (_, payloads) = crate::codec::encode_without_prior(gpu, std::slice::from_ref(tokens), codebook)?;
        let pixels = (original.width() * original.height()) as f64;
        let bpp = (payloads[0].len() * 8) as f64 / pixels;
        Ok(CodecRow { tokenizer: tokenizer.to_string(), bpp, psnr_db: psnr(reconstructed, original), jpeg: jpeg_at(original, bpp)? })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "tokenizer": self.tokenizer, "bpp": self.bpp, "psnr_db": self.psnr_db,
            "jpeg": {"quality": self.jpeg.quality, "bpp": self.jpeg.bpp, "psnr_db": self.jpeg.psnr_db},
        })
    }
}

fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let levels = |im: &RgbImage| im.as_raw().iter().map(|&v| f32::from(v)).collect::<Vec<f32>>();
    psnr_db(&levels(a), &levels(b), 255.0)
}

/// The highest JPEG quality whose scan fits `bpp` (quality 1 when none does: then its rate is
/// above the target, and the row says so by its own bpp).
pub fn jpeg_at(img: &RgbImage, bpp: f64) -> anyhow::Result<JpegPoint> {
    let pixels = (img.width() * img.height()) as f64;
    let encode = |quality: u8| -> anyhow::Result<(Vec<u8>, f64)> {
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, quality).encode_image(img)?;
        let scan = scan_bytes(&bytes).ok_or_else(|| anyhow::anyhow!("the JPEG encoder wrote no scan"))?;
        Ok((bytes, (scan * 8) as f64 / pixels))
    };
    // Size grows with quality: binary search for the last quality that fits.
    let (mut lo, mut hi) = (1u8, 100u8);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if encode(mid)?.1 <= bpp {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let (bytes, got) = encode(lo)?;
    let decoded = DynamicImage::from_decoder(JpegDecoder::new(std::io::Cursor::new(bytes))?)?.to_rgb8();
    Ok(JpegPoint { quality: lo, bpp: got, psnr_db: psnr(&decoded, img) })
}

/// Bytes of a baseline JPEG's entropy-coded data: what follows the SOS segment, up to EOI.
fn scan_bytes(jpeg: &[u8]) -> Option<usize> {
    let mut i = 2; // after SOI
    while i + 4 <= jpeg.len() {
        if jpeg[i] != 0xFF {
            return None;
        }
        let marker = jpeg[i + 1];
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        if marker == 0xDA {
            return Some(jpeg.len().saturating_sub(i + 2 + len));
        }
        i += 2 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_rate_search_fits_the_target() {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x ^ y) * 8) as u8]));
        let loose = jpeg_at(&img, 8.0).unwrap();
        let tight = jpeg_at(&img, 1.0).unwrap();
        assert!(tight.bpp <= 1.0 && tight.quality < loose.quality, "{} bpp at q{}, loose q{}", tight.bpp, tight.quality, loose.quality);
        assert!(loose.psnr_db > tight.psnr_db);
        // The scan excludes the tables: well under the file's size.
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 50).encode_image(&img).unwrap();
        let scan = scan_bytes(&bytes).unwrap();
        assert!(scan > 0 && scan + 300 < bytes.len(), "scan {scan} of {}", bytes.len());
    }
}
