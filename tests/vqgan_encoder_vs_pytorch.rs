//! The taming VQGAN encoder (image → tokens) against PyTorch: `tools/make_gen_fixtures.py`
//! saves a random-weight taming VQModel, images in [−1, 1], taming's tokens (whose nearest
//! codes it made sure win by a clear margin) and the decode of those tokens.

mod common;
use common::*;
use lowbit::gpu::{DType, Tensor};
use lowbit::models::vqgan::{TokenGrid, VqganDecoder, VqganEncoder};
use lowbit::formats::WeightFormat;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vqgan_encoder_test")
}

fn reference(name: &str) -> (Vec<usize>, Vec<f32>) {
    read_f32(&fixture().join("io.safetensors"), name)
}

#[test]
fn tokens_match_taming_and_decode_back() {
    let want = TokenGrid::load(&fixture().join("io.safetensors"), "tokens").unwrap();
    let (shape, pixels) = reference("image");
    for (path, gpu) in all_plans() {
        let encoder = VqganEncoder::from_pretrained(gpu, &fixture(), None, WeightFormat::F32).unwrap();
        let images = Tensor::from_f32(gpu, &shape, &pixels).unwrap();
        let got = encoder.encode(gpu, &images).unwrap();
        assert_eq!(got, want, "{path}");
        let decoder = VqganDecoder::from_pretrained(gpu, &fixture(), None, WeightFormat::F32).unwrap();
        let decoded = decoder.decode(gpu, &got).unwrap().to_vec_f32(gpu).unwrap();
        assert_parity(path, &decoded, &reference("decoded").1);
    }
}

#[test]
fn q8_encoder_keeps_most_tokens() {
    let gpu = gpu();
    let want = TokenGrid::load(&fixture().join("io.safetensors"), "tokens").unwrap();
    let (shape, pixels) = reference("image");
    let encoder = VqganEncoder::from_pretrained(gpu, &fixture(), None, WeightFormat::Q8 { group: None }).unwrap();
    let got = encoder.encode(gpu, &Tensor::from_f32(gpu, &shape, &pixels).unwrap()).unwrap();
    let same = got.ids.iter().zip(&want.ids).filter(|(a, b)| a == b).count();
    assert!(same * 10 >= want.ids.len() * 9, "{same} of {} tokens unchanged", want.ids.len());
}

#[test]
fn bad_images_are_errors() {
    let gpu = gpu();
    let encoder = VqganEncoder::from_pretrained(gpu, &fixture(), None, WeightFormat::F32).unwrap();
    let err = |shape: &[usize]| {
        let n = shape.iter().product();
        encoder.encode(gpu, &Tensor::from_f32(gpu, shape, &vec![0.0; n]).unwrap()).unwrap_err().to_string()
    };
    assert!(err(&[1, 3, 15, 16]).contains("multiples of 2"));
    assert!(err(&[1, 1, 16, 16]).contains("channels"));
    assert!(err(&[3, 16, 16]).contains("[B, C, H, W]"));
    let ids = Tensor::zeros(gpu, &[1, 3, 16, 16], DType::U32).unwrap();
    assert!(encoder.encode(gpu, &ids).is_err());
}
