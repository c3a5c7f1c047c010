//! FQGAN (dual, triple), WeTok GFQ, SimVQ, VQGAN-LC (100k codes) and RQ-VAE against their
//! upstream PyTorch code: `tools/make_tokenizer_fixtures.py` saves each random-weight model
//! (upstream key names, f16), an image, upstream's tokens for it ([B, h, w] or [B, S, h, w]) and
//! upstream's decode of those tokens.
//!
//! Tokens must match exactly: the fixture builder keeps only seeds whose nearest-code choices
//! (or, for WeTok, signs) win by a clear margin, so a mismatch is a bug, not rounding. Decodes
//! meet the models' parity bar (`assert_parity`: cosine ≥ 0.99999, max error ≤ 1e-3 of the
//! largest value), as the taming and LlamaGen tests.

mod common;
use common::*;
use lowbit::formats::WeightFormat;
use lowbit::gpu::Tensor;
use lowbit::models::vqgan::{TokenGrid, VqganConfig, VqganDecoder, VqganEncoder};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    fixture_dir("tokenizers").join(name)
}

fn expected(name: &str, tensor: &str) -> (Vec<usize>, Vec<f32>) {
    read_f32(&fixture(name).join("expected.safetensors"), tensor)
}

fn want_tokens(name: &str) -> TokenGrid {
    TokenGrid::load(&fixture(name).join("expected.safetensors"), "tokens").unwrap()
}

/// Encodes the fixture's image and decodes its tokens on the default adapter.
fn check(name: &str) {
    let gpu = gpu();
    let want = want_tokens(name);
    let (shape, pixels) = expected(name, "image");
    let encoder = VqganEncoder::from_pretrained(gpu, &fixture(name), None, WeightFormat::F32).unwrap();
    let got = encoder.encode(gpu, &Tensor::from_f32(gpu, &shape, &pixels).unwrap()).unwrap();
    assert_eq!(got.dims(), want.dims(), "{name}: token shape");
    let same = got.ids.iter().zip(&want.ids).filter(|(a, b)| a == b).count();
    eprintln!("{name}: {same} of {} tokens match", want.ids.len());
    assert_eq!(got, want, "{name}: tokens");
    let decoder = VqganDecoder::from_pretrained(gpu, &fixture(name), None, WeightFormat::F32).unwrap();
    let decoded = decoder.decode(gpu, &want).unwrap().to_vec_f32(gpu).unwrap();
    assert_parity(name, &decoded, &expected(name, "decoded").1);
}

#[test]
fn fqgan_dual_matches_upstream() {
    check("fqgan_dual");
}

#[test]
fn fqgan_triple_matches_upstream() {
    check("fqgan_triple");
}

#[test]
fn simvq_matches_upstream() {
    check("simvq");
}

#[test]
fn wetok_gfq_matches_upstream() {
    check("wetok_gfq");
}

#[test]
fn vqgan_lc_matches_upstream() {
    check("vqgan_lc");
}

#[test]
fn rvq_matches_upstream() {
    check("rvq");
}

/// The GPU-class kernels (workgroup-tiled search and convs) on the two tokenizers with the most
/// unusual quantizers: several sub-codebooks, and stages on the residual.
#[test]
fn gpu_plan_kernels_agree() {
    let gpu = gpu_plan();
    for name in ["fqgan_triple", "rvq"] {
        let want = want_tokens(name);
        let (shape, pixels) = expected(name, "image");
        let encoder = VqganEncoder::from_pretrained(gpu, &fixture(name), None, WeightFormat::F32).unwrap();
        assert_eq!(encoder.encode(gpu, &Tensor::from_f32(gpu, &shape, &pixels).unwrap()).unwrap(), want, "{name}");
        let decoder = VqganDecoder::from_pretrained(gpu, &fixture(name), None, WeightFormat::F32).unwrap();
        let decoded = decoder.decode(gpu, &want).unwrap().to_vec_f32(gpu).unwrap();
        assert_parity(&format!("{name} gpu-plan"), &decoded, &expected(name, "decoded").1);
    }
}

/// Decoding one image at a time gives the batch's images (WeTok always does: its adaptive
/// norms depend on each image's tokens).
#[test]
fn decoding_in_passes_matches_one_pass() {
    let gpu = gpu();
    let want = want_tokens("rvq");
    let decoder = VqganDecoder::from_pretrained(gpu, &fixture("rvq"), None, WeightFormat::F32).unwrap();
    let whole = decoder.decode(gpu, &want).unwrap().to_vec_f32(gpu).unwrap();
    let parts = decoder.decode_in_passes(gpu, &want, 1).unwrap().to_vec_f32(gpu).unwrap();
    assert_eq!(whole, parts);
}

#[test]
fn bad_tokens_name_the_sub_codebook_and_the_count() {
    let gpu = gpu();
    let decoder = VqganDecoder::from_pretrained(gpu, &fixture("fqgan_dual"), None, WeightFormat::F32).unwrap();
    let good = want_tokens("fqgan_dual");
    // An id past sub-codebook 1 (64 entries) in image 1.
    let mut ids = good.ids.clone();
    let plane = good.height * good.width;
    ids[(2 + 1) * plane + 5] = 64;
    let bad = TokenGrid::new(&good.dims(), ids).unwrap();
    let err = decoder.decode(gpu, &bad).unwrap_err().to_string();
    assert!(err.contains("sub-codebook 1") && err.contains("64") && err.contains("[1, 1, 0, 5]"), "{err}");
    // One id per position where the model takes two.
    let flat = TokenGrid::new(&[2, 8, 8], vec![0; 128]).unwrap();
    let err = decoder.decode(gpu, &flat).unwrap_err().to_string();
    assert!(err.contains("takes 2 per position"), "{err}");
    // Three stages for a four-stage residual quantizer.
    let rvq = VqganDecoder::from_pretrained(gpu, &fixture("rvq"), None, WeightFormat::F32).unwrap();
    let three = TokenGrid::new(&[1, 3, 8, 8], vec![0; 192]).unwrap();
    let err = rvq.decode(gpu, &three).unwrap_err().to_string();
    assert!(err.contains("3 ids per position") && err.contains("takes 4"), "{err}");
    // A negative id.
    let mut ids = vec![0; 256];
    ids[70] = -1;
    let err = rvq.decode(gpu, &TokenGrid::new(&[1, 4, 8, 8], ids).unwrap()).unwrap_err().to_string();
    assert!(err.contains("-1") && err.contains("sub-codebook 1"), "{err}");
}

#[test]
fn mismatched_configs_are_clear_errors() {
    let gpu = gpu();
    let dir = std::env::temp_dir().join(format!("lowbit-tokenizers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let load = |name: &str, edit: &dyn Fn(String) -> String| {
        let text = edit(std::fs::read_to_string(fixture(name).join("config.json")).unwrap());
        let config = dir.join(format!("{name}.json"));
        std::fs::write(&config, text).unwrap();
        VqganDecoder::from_pretrained(gpu, &fixture(name), Some(&config), WeightFormat::F32).err().map(|e| e.to_string()).unwrap_or_default()
    };
    // Fewer stages than the checkpoint has.
    let err = load("rvq", &|t| t.replace("8,\n  4\n ]", "8,\n  3\n ]"));
    assert!(err.contains("quantizer.codebooks.3"), "{err}");
    // Another codebook size than the checkpoint's.
    let err = load("fqgan_dual", &|t| t.replace("\"codebook_size\": 64", "\"codebook_size\": 65"));
    assert!(err.contains("quantize_vis.embedding.weight"), "{err}");
    // SimVQ's codes must be as wide as the latent (it has no quant_conv).
    let err = load("simvq", &|t| t.replace("\"e_dim\": 16", "\"e_dim\": 12"));
    assert!(err.contains("e_dim"), "{err}");
    // WeTok's groups must cover the latent.
    let err = load("wetok_gfq", &|t| t.replace("\"num_codebooks\": 4", "\"num_codebooks\": 3"));
    assert!(err.contains("groups"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn configs_autodetect_from_the_folder() {
    for name in ["fqgan_dual", "fqgan_triple", "simvq", "wetok_gfq", "vqgan_lc", "rvq"] {
        let (_, config) = VqganConfig::resolve(&fixture(name), None).unwrap();
        VqganConfig::load(&config).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(lowbit::models::info::detect(&fixture(name)).unwrap(), lowbit::models::info::ModelKind::Vqgan, "{name}");
    }
}

/// `lowbit encode` writes upstream's [B, S, h, w] tokens, `lowbit decode` reads them back, and
/// bad tokens leave no output file.
#[test]
fn cli_encodes_and_decodes_several_codes_per_position() {
    let dir = std::env::temp_dir().join(format!("lowbit-tokenizers-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, pixels) = expected("rvq", "image");
    // The fixture's first image as a PNG.
    let rgb: Vec<u8> = (0..32 * 32).flat_map(|p| (0..3).map(move |c| (p, c))).map(|(p, c)| (((pixels[c * 1024 + p] + 1.0) * 127.5).round().clamp(0.0, 255.0)) as u8).collect();
    let png = dir.join("in.png");
    image::RgbImage::from_raw(32, 32, rgb).unwrap().save(&png).unwrap();
    let model = fixture("rvq");
    let tokens = dir.join("tokens.safetensors");
    lowbit_ok(&["encode", "--model", model.to_str().unwrap(), "--out", tokens.to_str().unwrap(), png.to_str().unwrap()]);
    let grid = TokenGrid::load(&tokens, "tokens").unwrap();
    assert_eq!(grid.dims(), vec![1, 4, 8, 8]);
    let out = dir.join("out.png");
    lowbit_ok(&["decode", "--model", model.to_str().unwrap(), "--tokens", tokens.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(out.is_file());
    // Stage 2 out of range: a clear error, and no image.
    let mut ids = grid.ids.clone();
    ids[2 * 64 + 3] = 64;
    let bad = dir.join("bad.safetensors");
    TokenGrid::new(&grid.dims(), ids).unwrap().save(&bad, "tokens").unwrap();
    let never = dir.join("never.png");
    let run = lowbit(&["decode", "--model", model.to_str().unwrap(), "--tokens", bad.to_str().unwrap(), "--out", never.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("sub-codebook 2"), "{stderr}");
    assert!(!never.exists());
    // [B, h, w] tokens for a four-stage model.
    let flat = dir.join("flat.safetensors");
    TokenGrid::new(&[1, 8, 8], vec![0; 64]).unwrap().save(&flat, "tokens").unwrap();
    let run = lowbit(&["decode", "--model", model.to_str().unwrap(), "--tokens", flat.to_str().unwrap(), "--out", never.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("takes 4 per position"), "{stderr}");
    assert!(!never.exists());
    std::fs::remove_dir_all(&dir).ok();
}
