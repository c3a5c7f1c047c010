//! Classify images with a timm ViT checkpoint through the library API.
//!
//!     cargo run --example classify -- tests/fixtures/vit_tiny_test tests/fixtures/vit_tiny_test/image_resized.png

use std::path::PathBuf;

use lowbit::models::{load_image, preprocess, VisionTransformer};
use lowbit::formats::WeightFormat;
use lowbit::{Gpu, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let Some((model_path, images)) = args.split_first() else {
        anyhow::bail!("usage: classify MODEL_DIR_OR_SAFETENSORS IMAGE...");
    };
    let gpu = Gpu::new()?;
    // F32 reproduces timm; a low-bit WeightFormat (e.g. Q8) packs every Linear instead.
    let model = VisionTransformer::from_pretrained(&gpu, model_path, None, WeightFormat::F32)?;

    // timm's eval transform on each image, stacked into one [N, 3, S, S] batch.
    let s = model.config.img_size;
    let mut pixels = Vec::new();
    for path in images {
        pixels.extend(preprocess(&load_image(path)?, &model.config.preprocess)?);
    }
    let batch = Tensor::from_f32(&gpu, &[images.len(), 3, s, s], &pixels)?;

    let logits = model.forward(&gpu, &batch)?.to_vec_f32(&gpu)?;
    for (path, row) in images.iter().zip(logits.chunks(model.output_dim())) {
        let best = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0);
        println!("{}: class {best} (logit {:.3})", path.display(), row[best]);
    }
    Ok(())
}
