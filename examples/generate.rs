//! Class → tokens → PNG through the library API: a taming minGPT prior samples a VQ token grid
//! with a KV cache, the VQGAN its config names decodes it.
//!
//!     cargo run --release --example generate -- PRIOR_DIR CLASS OUT_PREFIX [COUNT] [SEED]
//!     cargo run --release --example generate -- tests/fixtures/prior_test 3 /tmp/prior 4
//!
//! Writes OUT_PREFIX-0.png, OUT_PREFIX-1.png, ...

use std::path::Path;
use std::time::Instant;

use lowbit::models::prior::Prior;
use lowbit::models::sampling::generate;
use lowbit::models::vqgan::VqganDecoder;
use lowbit::formats::WeightFormat;
use lowbit::Gpu;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [prior_dir, class, out, rest @ ..] = &args[..] else {
        anyhow::bail!("usage: generate PRIOR_DIR CLASS OUT_PREFIX [COUNT] [SEED]");
    };
    let count: usize = rest.first().map_or(Ok(1), |s| s.parse())?;
    let seed: u64 = rest.get(1).map_or(Ok(0), |s| s.parse())?;
    let gpu = Gpu::new()?;
    let prior = Prior::from_pretrained(&gpu, Path::new(prior_dir), WeightFormat::F32)?;
    let Some(decoder_dir) = &prior.decoder_path else { anyhow::bail!("the prior's config names no decoder") };
    let decoder = VqganDecoder::from_pretrained(&gpu, decoder_dir, None, WeightFormat::F32)?;

    let start = Instant::now();
    let opts = prior.config.sampling.unwrap_or_default();
    let tokens = generate(&gpu, &prior, class.parse()?, count, seed, &opts)?;
    let sampled = start.elapsed().as_secs_f64() * 1e3;
    let image = decoder.decode(&gpu, &tokens)?;
    let pixels = image.to_vec_f32(&gpu)?;
    let total = start.elapsed().as_secs_f64() * 1e3;
    println!("{count} × class {class}: tokens {sampled:.1} ms, with decoding {total:.1} ms ({:.1} ms per image)", total / count as f64);

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
