//! The taming VQGAN decoder against PyTorch: `tools/make_vqgan_fixtures.py` saves a small
//! random-weight taming `Decoder` (+ codebook, post_quant_conv) in taming's key names and
//! YAML layout, token grids, and taming's decoded images.

mod common;
use common::*;
use lowbit::gpu::{DType, Tensor};
use lowbit::metrics::cosine;
use lowbit::models::vqgan::{TokenGrid, VqganConfig, VqganDecoder};
use lowbit::models::vqgan::glue::{tokens_to_nchw, tokens_to_nchw_reference};
use lowbit::models::Weights;
use lowbit::formats::WeightFormat;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vqgan_tiny_test")
}

fn reference(name: &str) -> (Vec<usize>, Vec<f32>) {
    read_f32(&fixture().join("io.safetensors"), name)
}

fn tokens(name: &str) -> TokenGrid {
    TokenGrid::load(&fixture().join("io.safetensors"), name).unwrap()
}

#[test]
fn decoded_images_match_taming() {
    for (path, gpu) in all_plans() {
        let model = VqganDecoder::from_pretrained(gpu, &fixture(), None, WeightFormat::F32).unwrap();
        // i64 tokens [2, 8, 8] at the training resolution; i32 [1, 5, 7], an odd grid.
        for (tok, img) in [("tokens", "image"), ("tokens_odd", "image_odd")] {
            let grid = tokens(tok);
            let (shape, want) = reference(img);
            assert_eq!(model.image_shape(grid.shape()).to_vec(), shape);
            let start = std::time::Instant::now();
            let image = model.decode(gpu, &grid).unwrap();
            assert_eq!(image.shape, shape);
            let got = image.to_vec_f32(gpu).unwrap();
            eprintln!("{path} {tok} {:?}: decoded in {:.1} ms (first run includes pipeline compiles)", grid.shape(), start.elapsed().as_secs_f64() * 1e3);
            assert_parity(&format!("{path} {tok}"), &got, &want);
        }
        // Warm timing of the [2, 8, 8] decode.
        let grid = tokens("tokens");
        let start = std::time::Instant::now();
        model.decode(gpu, &grid).unwrap().to_vec_f32(gpu).unwrap();
        eprintln!("{path}: warm decode of {:?} in {:.1} ms", grid.shape(), start.elapsed().as_secs_f64() * 1e3);
    }
}

#[test]
fn out_of_range_token_is_an_error_naming_it() {
    let gpu = gpu();
    let model = VqganDecoder::from_pretrained(gpu, &fixture(), None, WeightFormat::F32).unwrap();
    let mut grid = tokens("tokens");
    grid.ids[5] = 64; // n_embed
    let err = model.decode(gpu, &grid).unwrap_err().to_string();
    assert!(err.contains("token id 64") && err.contains("64 entries"), "{err}");
    grid.ids[5] = -3;
    let err = model.decode(gpu, &grid).unwrap_err().to_string();
    assert!(err.contains("-3"), "{err}");
}

#[test]
fn bad_token_tensors_are_errors() {
    assert!(TokenGrid::new(&[2, 8], vec![0; 16]).unwrap_err().to_string().contains("[B, h, w]"));
    assert!(TokenGrid::new(&[1, 0, 3], vec![]).is_err());
    assert!(TokenGrid::new(&[1, 2, 3], vec![0; 5]).unwrap_err().to_string().contains("6 ids"));
    let io = fixture().join("io.safetensors");
    let err = TokenGrid::load(&io, "image").unwrap_err().to_string();
    assert!(err.contains("F32"), "float tensor: {err}");
    let err = TokenGrid::load(&io, "nope").unwrap_err().to_string();
    assert!(err.contains("no tensor named nope"), "{err}");
}

#[test]
fn missing_or_misshapen_weights_are_clear_errors() {
    let gpu = gpu();
    let config = VqganConfig::load(&fixture().join("config.yaml")).unwrap();
    let weights = Weights::load(&fixture().join("model.safetensors")).unwrap();

    let mut missing = weights.clone();
    missing.tensors.remove("decoder.mid.attn_1.k.weight");
    let err = VqganDecoder::new(gpu, &config, &missing, WeightFormat::F32).err().unwrap().to_string();
    assert!(err.contains("missing tensor decoder.mid.attn_1.k.weight"), "{err}");

    let mut wrong = weights.clone();
    wrong.tensors.get_mut("decoder.conv_in.weight").unwrap().shape = vec![64, 16, 1, 9];
    let err = VqganDecoder::new(gpu, &config, &wrong, WeightFormat::F32).err().unwrap().to_string();
    assert!(err.contains("decoder.conv_in.weight") && err.contains("[64, 16, 3, 3]"), "{err}");

    // A config that disagrees with the checkpoint (another codebook size).
    let mut other = config.clone();
    other.n_embed = 1024;
    let err = VqganDecoder::new(gpu, &other, &weights, WeightFormat::F32).err().unwrap().to_string();
    assert!(err.contains("quantize.embedding.weight"), "{err}");

    // A config describing fewer blocks than the checkpoint holds.
    let mut fewer = config.clone();
    fewer.ddconfig.num_res_blocks = 0;
    let err = VqganDecoder::new(gpu, &fewer, &weights, WeightFormat::F32).err().unwrap().to_string();
    assert!(err.contains("decoder.up.1.block.1.norm1.weight") && err.contains("num_res_blocks"), "{err}");

    let err = VqganDecoder::from_pretrained(gpu, &fixture().join("absent"), None, WeightFormat::F32).err().unwrap().to_string();
    assert!(err.contains("no such checkpoint"), "{err}");
}

#[test]
fn tokens_to_nchw_matches_reference() {
    for (path, gpu) in gpus() {
        let (b, t, c) = (2, 35, 13);
        let x = random(b * t * c, 3, 1.0);
        let base = random(b * t * c, 4, 1.0);
        let xt = Tensor::from_f32(gpu, &[b, t, c], &x).unwrap();
        let out = Tensor::from_f32(gpu, &[b, c, 5, 7], &base).unwrap();
        let mut enc = gpu.encoder();
        tokens_to_nchw(gpu, &mut enc, &xt, &out, true).unwrap();
        gpu.submit(enc).unwrap();
        let want: Vec<f32> = tokens_to_nchw_reference(&x, b, t, c).iter().zip(&base).map(|(a, b)| a + b).collect();
        assert_nmse(&format!("tokens_to_nchw add {path}"), &out.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);

        let wrong = Tensor::zeros(gpu, &[b, c, 5, 6], DType::F32).unwrap();
        let mut enc = gpu.encoder();
        assert!(tokens_to_nchw(gpu, &mut enc, &xt, &wrong, false).is_err());
    }
}

/// Int8 weights (per-row scales) stay close to taming's f32 image: a sanity bound for the
/// quantized path end to end, not a kernel parity bound.
#[test]
fn q8_weights_stay_close() {
    let gpu = gpu();
    let model = VqganDecoder::from_pretrained(gpu, &fixture(), None, WeightFormat::Q8 { group: None }).unwrap();
    let got = model.decode(gpu, &tokens("tokens")).unwrap().to_vec_f32(gpu).unwrap();
    let want = reference("image").1;
    let (cos, e) = (cosine(&got, &want), lowbit::metrics::nmse(&got, &want));
    eprintln!("q8 decoder: cosine {cos:.6}, nmse {e:.3e}");
    assert!(cos >= 0.999 && e <= 2e-3, "q8 decoder: cosine {cos}, nmse {e}");
}

/// `--precision f16`: f16 weights against taming's f32 decode, bound cosine ≥ 0.9999 and max
/// error ≤ 1e-2 × max|reference|.
#[test]
fn f16_weights_match_taming_within_their_bound() {
    let gpu = gpu();
    let model = VqganDecoder::from_pretrained(gpu, &fixture(), None, WeightFormat::F16).unwrap();
    let got = model.decode(gpu, &tokens("tokens")).unwrap().to_vec_f32(gpu).unwrap();
    let want = reference("image").1;
    let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let cos = cosine(&got, &want);
    assert!(cos >= 0.9999 && max_err <= 1e-2 * max_ref, "cosine {cos}, max error {max_err} (max |ref| {max_ref})");
}

/// Batches too large for one pass decode image by image into one output.
#[test]
fn decoding_in_passes_matches_one_pass() {
    let gpu = gpu();
    let model = VqganDecoder::from_pretrained(gpu, &fixture(), None, WeightFormat::F32).unwrap();
    let image = model.decode_in_passes(gpu, &tokens("tokens"), 1).unwrap();
    assert_eq!(image.shape, [2, 3, 16, 16]);
    assert_parity("one image per pass", &image.to_vec_f32(gpu).unwrap(), &reference("image").1);
    assert!(model.decode_in_passes(gpu, &tokens("tokens"), 0).is_err());
    // Level 0 of the fixture: 16×16 pixels × 64 channels (upsampled from level 1) in f32.
    assert_eq!(model.activation_bytes(8, 8), 4 * 256 * 64);
}
