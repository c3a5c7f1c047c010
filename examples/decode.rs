//! Decode a taming-transformers VQGAN token grid to PNG images through the library API.
//!
//!     cargo run --example decode -- MODEL_DIR TOKENS.safetensors OUT_PREFIX [FORMAT]
//!     cargo run --example decode -- tests/fixtures/vqgan_tiny_test \
//!         tests/fixtures/vqgan_tiny_test/io.safetensors /tmp/vqgan q8
//!
//! MODEL_DIR holds model.safetensors + config.yaml (taming's VQModel); TOKENS.safetensors a
//! tensor `tokens`, integer [B, h, w]. Writes OUT_PREFIX-0.png, OUT_PREFIX-1.png, ...

use std::path::Path;

use lowbit::models::vqgan::{TokenGrid, VqganDecoder};
use lowbit::formats::WeightFormat;
use lowbit::Gpu;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, tokens, out, rest @ ..] = &args[..] else {
        anyhow::bail!("usage: decode MODEL_DIR TOKENS.safetensors OUT_PREFIX [FORMAT (f32, q8, q4g32, ...)]");
    };
    let format = WeightFormat::parse(rest.first().map_or("f32", String::as_str))?;
    let gpu = Gpu::new()?;
    let decoder = VqganDecoder::from_pretrained(&gpu, Path::new(model), None, format)?;
    let grid = TokenGrid::load(Path::new(tokens), "tokens")?;

    let start = std::time::Instant::now();
    let image = decoder.decode(&gpu, &grid)?; // out-of-range ids are an Err here
    let pixels = image.to_vec_f32(&gpu)?;
    println!("{:?} tokens → {:?} image in {:.1} ms ({})", grid.shape(), image.shape, start.elapsed().as_secs_f64() * 1e3, format.name());

    let &[_, 3, h, w] = &image.shape[..] else { anyhow::bail!("expected an RGB decoder, got {:?}", image.shape) };
    for (i, chw) in pixels.chunks(3 * h * w).enumerate() {
        // taming's convention: [-1, 1] → [0, 255].
        let rgb = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let p = y as usize * w + x as usize;
            image::Rgb([0, 1, 2].map(|c| ((chw[c * h * w + p] + 1.0) * 127.5).clamp(0.0, 255.0) as u8))
        });
        let path = format!("{out}-{i}.png");
        rgb.save(&path)?;
        println!("wrote {path}");
    }
    Ok(())
}
