//! The timm ViT path against PyTorch: fixtures from `tools/make_fixtures.py` hold small
//! random-weight timm models, an input batch and timm's logits (f32 and f16 checkpoints, with
//! and without LayerScale), plus images with timm's eval-transform output.

mod common;
use common::*;
use lowbit::gpu::{DType, Tensor};
use lowbit::metrics::cosine;
use lowbit::models::vit::glue::{self, reference};
use lowbit::models::{load_image, preprocess, VisionTransformer, VitConfig, Weights};
use lowbit::formats::WeightFormat;
use std::path::{Path, PathBuf};

const FIXTURES: [&str; 2] = ["vit_tiny_test", "vit_layerscale_test"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn io(name: &str) -> Weights {
    Weights::load(&fixture(name).join("io.safetensors")).unwrap()
}

fn tensor<'a>(w: &'a Weights, key: &str) -> (&'a [usize], &'a [f32]) {
    let t = &w.tensors[key];
    (&t.shape, &t.data)
}

fn run(gpu: &lowbit::Gpu, model: &VisionTransformer, shape: &[usize], pixels: &[f32]) -> Vec<f32> {
    let images = Tensor::from_f32(gpu, shape, pixels).unwrap();
    model.forward(gpu, &images).unwrap().to_vec_f32(gpu).unwrap()
}

#[test]
fn logits_match_timm() {
    for (path, gpu) in all_plans() {
        for name in FIXTURES {
            let model = VisionTransformer::from_pretrained(gpu, &fixture(name), None, WeightFormat::F32).unwrap();
            let io = io(name);
            let (shape, images) = tensor(&io, "images");
            let (_, want) = tensor(&io, "logits");
            assert_parity(&format!("{name} {path}"), &run(gpu, &model, shape, images), want);
        }
    }
}

#[test]
fn image_files_match_timm_transform() {
    let gpu = gpu();
    for name in FIXTURES {
        let dir = fixture(name);
        let model = VisionTransformer::from_pretrained(gpu, &dir.join("model.safetensors"), Some(&dir.join("config.json")), WeightFormat::F32).unwrap();
        let io = io(name);
        for kind in ["resized", "exact"] {
            let img = load_image(&dir.join(format!("image_{kind}.png"))).unwrap();
            let got = preprocess(&img, &model.config.preprocess).unwrap();
            let (shape, want) = tensor(&io, &format!("preprocessed_{kind}"));
            // Pillow's fixed-point resize is reproduced exactly, so only f32 rounding differs.
            let max_err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            eprintln!("{name} {kind}: preprocessing max abs err {max_err:.3e}");
            assert!(max_err < 1e-5, "{name} {kind}: preprocessing differs from timm by {max_err}");
            let mut batch = vec![1];
            batch.extend_from_slice(shape);
            let (_, logits) = tensor(&io, &format!("logits_{kind}"));
            assert_parity(&format!("{name} {kind} image"), &run(gpu, &model, &batch, &got), logits);
        }
    }
}

#[test]
fn glue_kernels_match_reference() {
    for (path, gpu) in gpus() {
        for (b, p, d) in [(1, 1, 1), (2, 16, 48), (3, 13, 37), (1, 196, 257)] {
            let patches = random(b * p * d, 1, 2.0);
            let cls = random(d, 2, 1.0);
            let pos = random((p + 1) * d, 3, 1.0);
            let out = Tensor::zeros(gpu, &[b, p + 1, d], DType::F32).unwrap();
            let mut enc = gpu.encoder();
            let (pt, ct, qt) = (
                Tensor::from_f32(gpu, &[b, p, d], &patches).unwrap(),
                Tensor::from_f32(gpu, &[d], &cls).unwrap(),
                Tensor::from_f32(gpu, &[p + 1, d], &pos).unwrap(),
            );
            glue::embed_tokens(gpu, &mut enc, &pt, &ct, &qt, &out).unwrap();
            let gamma = random(d, 4, 1.5);
            let (x, res) = (random(b * (p + 1) * d, 5, 1.0), random(b * (p + 1) * d, 6, 1.0));
            let (xt, rt, gt) = (
                Tensor::from_f32(gpu, &[b, p + 1, d], &x).unwrap(),
                Tensor::from_f32(gpu, &[b, p + 1, d], &res).unwrap(),
                Tensor::from_f32(gpu, &[d], &gamma).unwrap(),
            );
            glue::layer_scale_add(gpu, &mut enc, &rt, &xt, &gt).unwrap();
            let cls_out = Tensor::zeros(gpu, &[b, d], DType::F32).unwrap();
            glue::take_token(gpu, &mut enc, &xt, &cls_out).unwrap();
            gpu.submit(enc).unwrap();
            let what = format!("b{b} p{p} d{d} {path}");
            assert_nmse(&format!("embed_tokens {what}"), &out.to_vec_f32(gpu).unwrap(), &reference::embed_tokens(&patches, b, p, d, &cls, &pos), F32_NMSE);
            assert_nmse(&format!("layer_scale_add {what}"), &rt.to_vec_f32(gpu).unwrap(), &reference::layer_scale_add(&res, &x, &gamma), F32_NMSE);
            // A copy: exact.
            assert_eq!(cls_out.to_vec_f32(gpu).unwrap(), reference::take_token(&x, b, p + 1, d), "take_token {what}");
        }
    }
}

#[test]
fn glue_kernels_reject_bad_shapes() {
    let gpu = gpu();
    let t = |shape: &[usize]| Tensor::zeros(gpu, shape, DType::F32).unwrap();
    let mut enc = gpu.encoder();
    assert!(glue::embed_tokens(gpu, &mut enc, &t(&[2, 4, 8]), &t(&[8]), &t(&[4, 8]), &t(&[2, 5, 8])).is_err());
    assert!(glue::embed_tokens(gpu, &mut enc, &t(&[2, 4, 8]), &t(&[7]), &t(&[5, 8]), &t(&[2, 5, 8])).is_err());
    assert!(glue::layer_scale_add(gpu, &mut enc, &t(&[2, 3]), &t(&[2, 3]), &t(&[2])).is_err());
    assert!(glue::take_token(gpu, &mut enc, &t(&[2, 3, 4]), &t(&[3, 4])).is_err());
    let ids = Tensor::from_u32(gpu, &[2, 4], &[0; 8]).unwrap();
    assert!(glue::take_token(gpu, &mut enc, &t(&[2, 3, 4]), &ids).is_err());
}

fn load_err(gpu: &lowbit::Gpu, w: &Weights) -> String {
    let cfg = VitConfig::load(&fixture("vit_tiny_test").join("config.json")).unwrap();
    match VisionTransformer::new(gpu, &cfg, w, WeightFormat::F32) {
        Ok(_) => panic!("a bad checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_checkpoints_give_clear_errors() {
    let gpu = gpu();
    let file = fixture("vit_tiny_test").join("model.safetensors");
    let good = Weights::load(&file).unwrap();

    let mut w = good.clone();
    w.tensors.remove("blocks.1.attn.qkv.weight");
    let e = load_err(gpu, &w);
    assert!(e.contains("missing tensor blocks.1.attn.qkv.weight"), "{e}");

    let mut w = good.clone();
    w.tensors.get_mut("blocks.0.mlp.fc1.weight").unwrap().shape = vec![96, 96];
    let e = load_err(gpu, &w);
    assert!(e.contains("tensor blocks.0.mlp.fc1.weight has shape [96, 96], expected [192, 48]"), "{e}");

    let bytes = std::fs::read(&file).unwrap();
    let dir = std::env::temp_dir().join(format!("lowbit_vit_truncated_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
    std::fs::copy(fixture("vit_tiny_test").join("config.json"), dir.join("config.json")).unwrap();
    let e = VisionTransformer::from_pretrained(gpu, &dir, None, WeightFormat::F32).err().expect("truncated file loaded").to_string();
    assert!(e.contains("truncated"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();

    let e = VisionTransformer::from_pretrained(gpu, Path::new("/nonexistent/model"), None, WeightFormat::F32).err().unwrap().to_string();
    assert!(e.contains("no such checkpoint"), "{e}");
}

#[test]
fn bad_configs_and_inputs_are_errors() {
    assert!(VitConfig::from_json("{}").is_err());
    assert!(VitConfig::from_json(r#"{"architecture": "resnet50"}"#).is_err());
    assert!(VitConfig::from_json(r#"{"architecture": "vit_tiny_patch16_224", "model_args": {"num_heads": 5}}"#).is_err());
    // Attention pooling (SigLIP's `map`) is not implemented: refused, not ignored.
    assert!(VitConfig::from_json(r#"{"architecture": "vit_tiny_patch16_224", "model_args": {"global_pool": "map"}}"#).is_err());
    let base = VitConfig::from_json(r#"{"architecture": "deit_small_patch16_224", "num_classes": 7}"#).unwrap();
    assert_eq!((base.embed_dim, base.num_heads, base.depth, base.num_classes, base.tokens()), (384, 6, 12, 7, 197));
    assert_eq!(base.preprocess.mean, lowbit::models::vit::config::IMAGENET_MEAN);

    let gpu = gpu();
    let model = VisionTransformer::from_pretrained(gpu, &fixture("vit_tiny_test"), None, WeightFormat::F32).unwrap();
    for shape in [[1, 3, 16, 16], [1, 1, 32, 32]] {
        let x = Tensor::zeros(gpu, &shape, DType::F32).unwrap();
        assert!(model.forward(gpu, &x).is_err(), "{shape:?}");
    }
}

/// Random weights under timm's key names for any config (real-size shapes without a download).
fn synthetic_weights(c: &VitConfig) -> Weights {
    let (d, p, h, t) = (c.embed_dim, c.patch_size, c.mlp_hidden(), c.tokens());
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("cls_token".into(), vec![1, 1, d]),
        ("pos_embed".into(), vec![1, t, d]),
        ("patch_embed.proj.weight".into(), vec![d, 3, p, p]),
        ("patch_embed.proj.bias".into(), vec![d]),
        ("norm.weight".into(), vec![d]),
        ("norm.bias".into(), vec![d]),
        ("head.weight".into(), vec![c.num_classes, d]),
        ("head.bias".into(), vec![c.num_classes]),
    ];
    for i in 0..c.depth {
        for (k, s) in [
            ("norm1.weight", vec![d]), ("norm1.bias", vec![d]), ("norm2.weight", vec![d]), ("norm2.bias", vec![d]),
            ("attn.qkv.weight", vec![3 * d, d]), ("attn.qkv.bias", vec![3 * d]),
            ("attn.proj.weight", vec![d, d]), ("attn.proj.bias", vec![d]),
            ("mlp.fc1.weight", vec![h, d]), ("mlp.fc1.bias", vec![h]),
            ("mlp.fc2.weight", vec![d, h]), ("mlp.fc2.bias", vec![d]),
        ] {
            shapes.push((format!("blocks.{i}.{k}"), s));
        }
    }
    let mut w = Weights { source: "synthetic".into(), ..Default::default() };
    for (seed, (name, shape)) in shapes.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let fan_in = if shape.len() > 1 { n / shape[0] } else { 1 };
        let mut data = random(n, seed as u64 + 1, (3.0 / fan_in as f32).sqrt());
        if name.ends_with("norm1.weight") || name.ends_with("norm2.weight") || name == "norm.weight" {
            data.iter_mut().for_each(|v| *v += 1.0);
        }
        w.tensors.insert(name, lowbit::models::weights::WeightTensor { shape, data });
    }
    w
}

#[test]
fn quantized_weights_stay_close_to_f32() {
    // The format hook: the same checkpoint with every matrix in Q8 (per row) instead of f32.
    let gpu = gpu();
    let name = "vit_tiny_test";
    let f32_model = VisionTransformer::from_pretrained(gpu, &fixture(name), None, WeightFormat::F32).unwrap();
    let q8 = VisionTransformer::from_pretrained(gpu, &fixture(name), None, WeightFormat::Q8 { group: None }).unwrap();
    let io = io(name);
    let (shape, images) = tensor(&io, "images");
    let (a, b) = (run(gpu, &f32_model, shape, images), run(gpu, &q8, shape, images));
    let cos = cosine(&b, &a);
    eprintln!("q8 vs f32 logits: cosine {cos:.6}");
    assert!(cos > 0.999, "q8 logits cosine {cos}");
}

/// `--precision f16`: f16 weights (f32 activations) against timm's f32 logits. f16 keeps 11
/// significant bits, so the bound is cosine ≥ 0.9999 and max error ≤ 1e-2 × max|reference|.
#[test]
fn f16_weights_match_timm_within_their_bound() {
    let gpu = gpu();
    for name in ["vit_tiny_test", "vit_layerscale_test"] {
        let model = VisionTransformer::from_pretrained(gpu, &fixture(name), None, WeightFormat::F16).unwrap();
        let io = io(name);
        let (shape, images) = tensor(&io, "images");
        let got = run(gpu, &model, shape, images);
        let want = tensor(&io, "logits").1;
        let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let max_err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let cos = cosine(&got, want);
        assert!(cos >= 0.9999 && max_err <= 1e-2 * max_ref, "{name}: cosine {cos}, max error {max_err} (max |ref| {max_ref})");
    }
}

#[test]
fn real_size_model_runs() {
    // deit_tiny at 224×224 (197 tokens, 12 blocks): shapes and bindings at full size.
    let gpu = gpu();
    let cfg = VitConfig::from_json(r#"{"architecture": "deit_tiny_patch16_224", "num_classes": 1000}"#).unwrap();
    let model = VisionTransformer::new(gpu, &cfg, &synthetic_weights(&cfg), WeightFormat::F32).unwrap();
    let images = random(2 * 3 * 224 * 224, 9, 2.0);
    let t0 = std::time::Instant::now();
    let logits = run(gpu, &model, &[2, 3, 224, 224], &images);
    eprintln!("deit_tiny forward, batch 2: {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    assert_eq!(logits.len(), 2000);
    assert!(logits.iter().all(|v| v.is_finite()));
    // Images are independent: the second image alone gives the same logits as in the batch.
    let single = run(gpu, &model, &[1, 3, 224, 224], &images[3 * 224 * 224..]);
    assert_nmse("batch independence", &single, &logits[1000..], F32_NMSE);
}

#[test]
fn half_precision_checkpoints_widen_to_f32() {
    use safetensors::{tensor::TensorView, Dtype};
    let vals = [1.5f32, -0.25, 3.0e-3, 65504.0];
    let f16: Vec<u8> = vals.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    let bf16: Vec<u8> = vals.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
    let i64s = vec![0u8; 16];
    let views = [
        ("a", TensorView::new(Dtype::F16, vec![2, 2], &f16).unwrap()),
        ("b", TensorView::new(Dtype::BF16, vec![4], &bf16).unwrap()),
    ];
    let bytes = safetensors::serialize(views, None).unwrap();
    let w = Weights::from_bytes(&bytes, "half").unwrap();
    let want_f16: Vec<f32> = vals.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    let want_bf16: Vec<f32> = vals.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
    assert_eq!(w.get("a", &[2, 2]).unwrap(), &want_f16[..]);
    assert_eq!(w.get("b", &[4]).unwrap(), &want_bf16[..]);
    let ints = safetensors::serialize([("ids", TensorView::new(Dtype::I64, vec![2], &i64s).unwrap())], None).unwrap();
    let e = Weights::from_bytes(&ints, "ints").unwrap_err().to_string();
    assert!(e.contains("tensor ids has dtype I64"), "{e}");
}

#[test]
fn preprocessing_rejects_what_it_cannot_do() {
    let cfg = VitConfig::load(&fixture("vit_tiny_test").join("config.json")).unwrap().preprocess;
    let img = image::RgbImage::new(20, 50);
    // Shorter side 20 → 36 by 90 before the 32×32 crop: upscaling works.
    assert_eq!(preprocess(&img, &cfg).unwrap().len(), 3 * 32 * 32);
    let lanczos = lowbit::models::PreprocessConfig { interpolation: "lanczos".into(), ..cfg.clone() };
    assert!(preprocess(&img, &lanczos).is_err());
    assert!(load_image(Path::new("/nonexistent.png")).is_err());
}

#[test]
fn hub_config_parses() {
    // The shape of timm's config.json on the Hugging Face hub (vit_base_patch16_224.augreg2_in21k_ft_in1k).
    let json = r#"{
        "architecture": "vit_base_patch16_224", "num_classes": 3, "num_features": 768, "global_pool": "token",
        "label_names": ["tench", "goldfish", "great white shark"],
        "pretrained_cfg": {"tag": "augreg2_in21k_ft_in1k", "custom_load": false, "input_size": [3, 224, 224],
            "fixed_input_size": true, "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center",
            "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "num_classes": 1000, "pool_size": null,
            "first_conv": "patch_embed.proj", "classifier": "head"}
    }"#;
    let c = VitConfig::from_json(json).unwrap();
    assert_eq!((c.embed_dim, c.num_heads, c.tokens(), c.mlp_hidden(), c.num_classes), (768, 12, 197, 3072, 3));
    assert_eq!(c.label_names[2], "great white shark");
    assert_eq!((c.preprocess.crop_pct, c.preprocess.input_size), (0.9, (224, 224)));
    assert!(VitConfig::from_json(&json.replace("\"center\"", "\"squash\"")).is_err());
    assert!(VitConfig::from_json(&json.replace("\"token\"", "\"map\"")).is_err());
    assert!(VitConfig::from_json(&json.replace("\"num_classes\": 3", "\"num_classes\": 4")).is_err());
}
