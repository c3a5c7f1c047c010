//! Every recipe of `lowbit quantize` on every classifier family (issue 12): a DINOv2 ViT with
//! registers and LayerScale, a CLIP-style ViT (pre-norm, QuickGELU), a distilled DeiT, a
//! global-average-pooled ViT and a Swin. Each quantized folder must load and classify, and its
//! logits must stay close to the f32 model's on a held-out image.
//!
//! The SQNR floors are far below what the recipes reach here (printed per case; the table in
//! docs/QUANTIZATION.md), so they catch a broken path (wrong layer, lost scale, quantizer at
//! the wrong node), not a small loss of accuracy.

mod common;

use std::path::{Path, PathBuf};

use lowbit::synthetic::uniform;

/// (recipe, methods, SQNR floor in dB of the logits against f32).
const RECIPES: [(&str, &str, f64); 5] = [("w8a8", "", 20.0), ("w4a16", "gptq,clip", 10.0), ("w4a8", "", 6.0), ("w4a4", "", 0.0), ("mixed:5", "gptq,clip", 10.0)];

/// Families that have fixtures; Swin joins when its fixture exists.
const FAMILIES: [&str; 5] = ["vit_dinov2_reg4_test", "vit_clip_quickgelu_test", "deit_distilled_test", "vit_gap_test", "swin_tiny_test"];

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lowbit-qfam-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `n` random RGB images of `size`² in `dir`, seeded from `seed`.
fn images(dir: &Path, n: usize, size: u32, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let v = uniform((size * size * 3) as usize, seed + i as u64, 1.0);
        let img = image::RgbImage::from_fn(size, size, |x, y| {
            let p = ((y * size + x) * 3) as usize;
            // A smooth gradient plus noise: photo-like enough that activations are not white noise.
            image::Rgb([0u32, 1, 2].map(|c| ((x * 3 + y * 2 + c * 40) as f32 * 0.7 + (v[p + c as usize] + 1.0) * 60.0).min(255.0) as u8))
        });
        img.save(dir.join(format!("img{i}.png"))).unwrap();
    }
    dir.to_path_buf()
}

fn logits(model: &Path, image: &Path, out: &Path) -> Vec<f32> {
    common::lowbit_ok(&["classify", "--model", model.to_str().unwrap(), "--save-logits", out.to_str().unwrap(), image.to_str().unwrap()]);
    let bytes = std::fs::read(out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor("logits").unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn every_recipe_on_every_family() {
    let mut report = Vec::new();
    for family in FAMILIES {
        let model = common::fixture_dir(family);
        if !model.join("model.safetensors").is_file() {
            eprintln!("{family}: no fixture, skipped");
            continue;
        }
        let dir = scratch(family);
        let calib = images(&dir.join("calib"), 6, 48, 100);
        let held_out = images(&dir.join("test"), 1, 48, 900).join("img0.png");
        let reference = logits(&model, &held_out, &dir.join("ref.safetensors"));
        for (recipe, methods, floor) in RECIPES {
            let out = dir.join(recipe.replace(':', "_"));
            let mut args = vec!["quantize", "--model", model.to_str().unwrap(), "--recipe", recipe, "--calib", calib.to_str().unwrap(), "--out", out.to_str().unwrap()];
            if !methods.is_empty() {
                args.extend(["--method", methods]);
            }
            common::lowbit_ok(&args);
            let got = logits(&out, &held_out, &dir.join(format!("{}.safetensors", recipe.replace(':', "_"))));
            assert_eq!(got.len(), reference.len(), "{family} {recipe}: output width");
            let sqnr = lowbit::metrics::sqnr_db(&got, &reference);
            report.push(format!("{family:<26} {recipe:<8} logits SQNR {sqnr:6.1} dB"));
            assert!(sqnr > floor, "{family} {recipe}: logits SQNR {sqnr:.1} dB ≤ {floor} dB");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    eprintln!("{}", report.join("\n"));
    assert!(report.len() >= 4 * RECIPES.len(), "fewer families than expected ran: {report:#?}");
}

/// SmoothQuant on a ViT without qkv bias (`vit_gap_test`, timm's `qkv_bias=False`): qkv and proj
/// cannot absorb the shift, so their maps are scales only; the folded model must still run and
/// match f32 (this once failed with "has no bias to absorb a shift").
#[test]
fn smoothquant_on_a_vit_without_qkv_bias() {
    let model = common::fixture_dir("vit_gap_test");
    let dir = scratch("smoothq-gap");
    let calib = images(&dir.join("calib"), 6, 48, 100);
    let held_out = images(&dir.join("test"), 1, 48, 900).join("img0.png");
    let reference = logits(&model, &held_out, &dir.join("ref.safetensors"));
    for (recipe, methods) in [("w4a8", "smoothq,gptq,clip"), ("w4a4", "dynamic,asymmetric,rotate,smoothq,adalog,gptq,clip")] {
        let out = dir.join(recipe);
        common::lowbit_ok(&["quantize", "--model", model.to_str().unwrap(), "--recipe", recipe, "--method", methods, "--calib", calib.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        let got = logits(&out, &held_out, &dir.join(format!("{recipe}.safetensors")));
        let sqnr = lowbit::metrics::sqnr_db(&got, &reference);
        eprintln!("vit_gap_test {recipe} {methods}: logits SQNR {sqnr:.1} dB");
        assert!(sqnr > 10.0, "{recipe} {methods}: logits SQNR {sqnr:.1} dB");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--sensitivity fisher|lrp` differentiate the model on the CPU (`models::vit::backprop`):
/// every ViT family must go through it (registers and LayerScale, pre-norm with QuickGELU, a
/// distillation head, average pooling without qkv bias, qk_norm with avg-max pooling), and
/// the allocation must load and stay close to f32.
#[test]
fn loss_aware_sensitivities_on_every_vit_family() {
    for family in ["vit_dinov2_reg4_test", "vit_clip_quickgelu_test", "deit_distilled_test", "vit_gap_test", "vit_qknorm_test"] {
        let model = common::fixture_dir(family);
        let dir = scratch(&format!("sens-{family}"));
        let calib = images(&dir.join("calib"), 6, 48, 100);
        let held_out = images(&dir.join("test"), 1, 48, 900).join("img0.png");
        let reference = logits(&model, &held_out, &dir.join("ref.safetensors"));
        for sensitivity in ["fisher", "lrp"] {
            let out = dir.join(sensitivity);
            let (m, c, o) = (model.to_str().unwrap(), calib.to_str().unwrap(), out.to_str().unwrap());
            common::lowbit_ok(&["quantize", "--model", m, "--recipe", "mixed:5", "--method", "gptq,clip", "--sensitivity", sensitivity, "--calib", c, "--out", o]);
            let desc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("quantization.json")).unwrap()).unwrap();
            assert_eq!(desc["mixed"]["sensitivity"], sensitivity, "{family}");
            let info = common::lowbit_ok(&["info", o]);
            assert!(info.contains(&format!("recipe mixed:5, methods gptq+clip, sensitivity {sensitivity}")), "{info}");
            let sqnr = lowbit::metrics::sqnr_db(&logits(&out, &held_out, &dir.join(format!("{sensitivity}.safetensors"))), &reference);
            eprintln!("{family:<26} mixed:5 --sensitivity {sensitivity:<6} logits SQNR {sqnr:6.1} dB");
            assert!(sqnr > 10.0, "{family} {sensitivity}: logits SQNR {sqnr:.1} dB");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
