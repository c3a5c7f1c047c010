//! LlamaGen's VQ tokenizer (taming's network under other key names, l2-normalized codebook)
//! against LlamaGen's own PyTorch code: `tools/make_llamagen_fixtures.py` saves a random-weight
//! model, an image, LlamaGen's tokens for it and its decode of those tokens.

mod common;
use common::*;
use lowbit::gpu::Tensor;
use lowbit::models::vqgan::{Flavor, TokenGrid, VqganConfig, VqganDecoder, VqganEncoder};
use lowbit::formats::WeightFormat;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llamagen_tiny_test")
}

fn reference(name: &str) -> (Vec<usize>, Vec<f32>) {
    read_f32(&fixture().join("io.safetensors"), name)
}

#[test]
fn tokens_and_decode_match_llamagen() {
    let want = TokenGrid::load(&fixture().join("io.safetensors"), "tokens").unwrap();
    let (shape, pixels) = reference("image");
    for (path, gpu) in all_plans() {
        let encoder = VqganEncoder::from_pretrained(gpu, &fixture(), None, WeightFormat::F32).unwrap();
        assert_eq!(encoder.config.flavor, Flavor::LlamaGen);
        let got = encoder.encode(gpu, &Tensor::from_f32(gpu, &shape, &pixels).unwrap()).unwrap();
        assert_eq!(got, want, "{path}");
        let decoder = VqganDecoder::from_pretrained(gpu, &fixture(), None, WeightFormat::F32).unwrap();
        let decoded = decoder.decode(gpu, &want).unwrap().to_vec_f32(gpu).unwrap();
        assert_parity(path, &decoded, &reference("decoded").1);
    }
}

#[test]
fn llamagen_configs_parse_and_bad_ones_are_named() {
    let c = VqganConfig::from_llamagen_json(r#"{"architecture": "VQ-16"}"#, "t").unwrap();
    assert_eq!((c.n_embed, c.embed_dim, c.ddconfig.ch_mult.clone(), c.upscale(), c.latent_resolution()), (16384, 8, vec![1, 1, 2, 2, 4], 16, 16));
    assert!(c.codebook_l2_norm);
    let err = |json: &str| VqganConfig::from_llamagen_json(json, "t").unwrap_err().to_string();
    assert!(err(r#"{"architecture": "VQ-32"}"#).contains("VQ-32"));
    assert!(err(r#"{"architecture": "VQ-16", "encoder_ch_mult": [1, 2]}"#).contains("differ"));
    assert!(err(r#"{"architecture": "VQ-16", "codebook_sise": 3}"#).contains("codebook_sise"));
}
