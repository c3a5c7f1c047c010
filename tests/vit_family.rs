//! The timm ViT family as published on the hub against timm itself: fixtures from
//! `tools/make_vit_family_fixtures.py` (DINOv2 with registers, CLIP QuickGELU, DeiT distilled,
//! DeiT III, GAP, qk_norm, unpooled tokens, resampled and dynamic position embeddings, an f16
//! checkpoint), under every kernel plan; plus the glue kernels and the config errors.

mod common;
use common::*;
use lowbit::formats::WeightFormat;
use lowbit::gpu::{DType, Tensor};
use lowbit::models::vit::glue::{self, reference, PoolKind};
use lowbit::models::{VisionTransformer, VitConfig, Weights};

const FIXTURES: [&str; 9] = [
    "vit_dinov2_reg4_test",
    "vit_clip_quickgelu_test",
    "deit_distilled_test",
    "deit3_test",
    "vit_gap_test",
    "vit_qknorm_test",
    "vit_tokens_test",
    "vit_resampled_test",
    "vit_dynamic_test",
];

fn io(name: &str) -> Weights {
    Weights::load(&fixture_dir(name).join("io.safetensors")).unwrap()
}

fn run(gpu: &lowbit::Gpu, model: &VisionTransformer, shape: &[usize], pixels: &[f32]) -> Vec<f32> {
    let images = Tensor::from_f32(gpu, shape, pixels).unwrap();
    model.forward(gpu, &images).unwrap().to_vec_f32(gpu).unwrap()
}

#[test]
fn family_logits_match_timm_under_every_plan() {
    for (path, gpu) in all_plans() {
        for name in FIXTURES {
            let model = VisionTransformer::from_pretrained(gpu, &fixture_dir(name), None, WeightFormat::F32).unwrap();
            let io = io(name);
            let (images, want) = (&io.tensors["images"], &io.tensors["logits"]);
            assert_eq!(model.output_dim() * images.shape[0], want.data.len(), "{name}: output_dim");
            assert_parity(&format!("{name} {path}"), &run(gpu, &model, &images.shape, &images.data), &want.data);
        }
    }
}

#[test]
fn hub_options_resolve_like_timm() {
    let load = |name: &str| VitConfig::load(&fixture_dir(name).join("config.json")).unwrap();
    let c = load("vit_dinov2_reg4_test");
    assert_eq!((c.reg_tokens, c.no_embed_class, c.init_values.is_some(), c.num_classes, c.tokens()), (4, true, true, 0, 5 + 9));
    let c = load("vit_clip_quickgelu_test");
    assert_eq!((c.pre_norm, c.act, c.norm_eps), (true, lowbit::kernels::elementwise::Activation::QuickGelu, 1e-5));
    let c = load("deit_distilled_test");
    assert_eq!((c.distilled, c.prefix_tokens()), (true, 2));
    // The architecture's fc_norm: false keeps the norm before pooling.
    let c = load("vit_gap_test");
    assert_eq!((c.class_token, c.fc_norm, c.final_norm, c.qkv_bias), (false, false, true, false));
    // timm's rule: fc_norm unset with a reducing pool moves the final norm after pooling.
    let c = load("vit_qknorm_test");
    assert_eq!((c.fc_norm, c.final_norm, c.reg_tokens, c.act), (true, false, 1, lowbit::kernels::elementwise::Activation::GeluTanh));
    let c = load("vit_dynamic_test");
    assert_eq!((c.img_size, c.model_img_size, c.grid()), (42, 28, 6));
}

#[test]
fn f16_checkpoint_and_f16_weights_match_timm() {
    let gpu = gpu();
    for (name, format) in [("vit_clip_quickgelu_test", WeightFormat::F32), ("vit_dinov2_reg4_test", WeightFormat::F16), ("deit_distilled_test", WeightFormat::F16)] {
        let model = VisionTransformer::from_pretrained(gpu, &fixture_dir(name), None, format).unwrap();
        let io = io(name);
        let (images, want) = (&io.tensors["images"], &io.tensors["logits"].data);
        let got = run(gpu, &model, &images.shape, &images.data);
        if format == WeightFormat::F32 {
            // Stored f16, widened exactly: timm ran the same rounded weights.
            assert_parity(&format!("{name} (f16 file)"), &got, want);
        } else {
            let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let max_err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let cos = lowbit::metrics::cosine(&got, want);
            assert!(cos >= 0.9999 && max_err <= 1e-2 * max_ref, "{name} f16: cosine {cos}, max error {max_err}");
        }
    }
}

#[test]
fn new_glue_kernels_match_reference_on_odd_shapes() {
    for (path, gpu) in gpus() {
        for (b, t, d, k) in [(1, 2, 1, 1), (2, 17, 48, 5), (3, 13, 37, 0), (1, 200, 257, 2)] {
            let x = random(b * t * d, 11, 2.0);
            let xt = Tensor::from_f32(gpu, &[b, t, d], &x).unwrap();
            let mut enc = gpu.encoder();
            let mut pooled = vec![];
            for (kind, skip) in [(PoolKind::Avg, k), (PoolKind::Max, k), (PoolKind::AvgMax, 0)] {
                let out = Tensor::zeros(gpu, &[b, d], DType::F32).unwrap();
                glue::pool_tokens(gpu, &mut enc, &xt, skip, kind, &out).unwrap();
                pooled.push((kind, skip, out));
            }
            let taken = Tensor::zeros(gpu, &[b, d], DType::F32).unwrap();
            glue::take_token_at(gpu, &mut enc, &xt, t - 1, &taken).unwrap();
            // Embedding with K prefix tokens (K = 0 reads a placeholder).
            let p = t - k;
            let (patches, prefix, pos) = (random(b * p * d, 12, 1.0), random(k.max(1) * d, 13, 1.0), random(t * d, 14, 1.0));
            let embedded = Tensor::zeros(gpu, &[b, t, d], DType::F32).unwrap();
            let (pt, kt, qt) = (
                Tensor::from_f32(gpu, &[b, p, d], &patches).unwrap(),
                Tensor::from_f32(gpu, &[k.max(1), d], &prefix).unwrap(),
                Tensor::from_f32(gpu, &[t, d], &pos).unwrap(),
            );
            glue::embed_tokens_with(gpu, &mut enc, &pt, &kt, Some(k), &qt, &embedded).unwrap();
            let other = random(b * t * d, 15, 1.0);
            let acc = Tensor::from_f32(gpu, &[b, t, d], &other).unwrap();
            glue::half_sum(gpu, &mut enc, &acc, &xt).unwrap();
            gpu.submit(enc).unwrap();
            let what = format!("b{b} t{t} d{d} k{k} {path}");
            for (kind, skip, out) in pooled {
                let want = reference::pool_tokens(&x, b, t, d, skip, kind);
                assert_nmse(&format!("pool {kind:?} {what}"), &out.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
            }
            assert_eq!(taken.to_vec_f32(gpu).unwrap(), reference::take_token_at(&x, b, t, d, t - 1), "take_token {what}");
            let want = reference::embed_tokens(&patches, b, p, d, &prefix[..k * d], &pos);
            assert_nmse(&format!("embed {what}"), &embedded.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
            let want: Vec<f32> = other.iter().zip(&x).map(|(a, b)| (a + b) / 2.0).collect();
            assert_eq!(acc.to_vec_f32(gpu).unwrap(), want, "half_sum {what}");
        }
        for (rows, heads, hd) in [(1, 1, 1), (7, 3, 16), (5, 2, 33)] {
            let qkv = random(rows * 3 * heads * hd, 21, 3.0);
            let mut affine = random(4 * hd, 22, 0.5);
            (0..hd).for_each(|j| {
                affine[j] += 1.0;
                affine[2 * hd + j] += 1.0;
            });
            let (qt, at) = (Tensor::from_f32(gpu, &[rows, 3 * heads * hd], &qkv).unwrap(), Tensor::from_f32(gpu, &[4, hd], &affine).unwrap());
            let mut enc = gpu.encoder();
            glue::qk_norm(gpu, &mut enc, &qt, heads, &at, 1e-6).unwrap();
            gpu.submit(enc).unwrap();
            let what = format!("qk_norm rows{rows} heads{heads} hd{hd} {path}");
            assert_nmse(&what, &qt.to_vec_f32(gpu).unwrap(), &reference::qk_norm(&qkv, heads, &affine, 1e-6), F32_NMSE);
        }
    }
    let gpu = gpu();
    let t = |shape: &[usize]| Tensor::zeros(gpu, shape, DType::F32).unwrap();
    let mut enc = gpu.encoder();
    assert!(glue::pool_tokens(gpu, &mut enc, &t(&[2, 3, 4]), 3, PoolKind::Avg, &t(&[2, 4])).is_err());
    assert!(glue::pool_tokens(gpu, &mut enc, &t(&[2, 3, 4]), 0, PoolKind::Avg, &t(&[3, 4])).is_err());
    assert!(glue::take_token_at(gpu, &mut enc, &t(&[2, 3, 4]), 3, &t(&[2, 4])).is_err());
    assert!(glue::qk_norm(gpu, &mut enc, &t(&[2, 10]), 3, &t(&[4, 1]), 1e-6).is_err());
}

fn config_err(json: &str) -> String {
    VitConfig::from_json(json).err().unwrap_or_else(|| panic!("{json} loaded")).to_string()
}

#[test]
fn unsupported_options_are_named() {
    for (json, want) in [
        (r#"{"architecture": "vit_so400m_patch14_siglip_224"}"#, "global_pool"),
        (r#"{"architecture": "vit_small_patch16_224", "model_args": {"act_layer": "silu"}}"#, "act_layer = silu"),
        (r#"{"architecture": "vit_small_patch16_224", "model_args": {"pos_embed": "none"}}"#, "pos_embed"),
        (r#"{"architecture": "vit_small_patch16_224", "model_args": {"scale_mlp_norm": true}}"#, "scale_mlp_norm"),
        (r#"{"architecture": "vit_small_patch16_224", "model_args": {"block_fn": "ParallelBlock"}}"#, "block_fn"),
        (r#"{"architecture": "vit_small_patch16_224", "model_args": {"norm_layer": "rmsnorm"}}"#, "norm_layer"),
        (r#"{"architecture": "swin_tiny_patch4_window7_224"}"#, "not a ViT"),
        (r#"{"architecture": "vit_small_patch16_224", "model_args": {"class_token": false}}"#, "needs the class token"),
        (r#"{"architecture": "vit_small_patch16_224", "model_args": {"depth": 1000000000}}"#, "depth = 1000000000"),
        (r#"{"architecture": "vit_small_patch16_224", "model_args": {"embed_dim": 1000000000000000000}}"#, "embed_dim"),
        (r#"{"architecture": "vit_small_patch16_224", "pretrained_cfg": {"crop_pct": 1e-6}}"#, "crop_pct"),
        (r#"{"architecture": "vit_small_patch16_224", "pretrained_cfg": {"input_size": [3, 448, 448], "fixed_input_size": false}}"#, "dynamic_img_size"),
    ] {
        let e = config_err(json);
        assert!(e.contains(want), "{json}: {e}");
    }
    let e = config_err(r#"{"architecture": "vit_so400m_patch14_siglip_224"}"#);
    assert!(e.contains("vit_so400m_patch14_siglip_224"), "{e}");
}

fn load_err(name: &str, config: &str, edit: impl FnOnce(&mut Weights)) -> String {
    let mut w = Weights::load(&fixture_dir(name).join("model.safetensors")).unwrap();
    edit(&mut w);
    let cfg = VitConfig::from_json(config).unwrap();
    match VisionTransformer::new(gpu(), &cfg, &w, WeightFormat::F32) {
        Ok(_) => panic!("{name}: a bad checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_and_checkpoint_must_agree() {
    let cfg = |name: &str| std::fs::read_to_string(fixture_dir(name).join("config.json")).unwrap();
    let e = load_err("vit_dinov2_reg4_test", &cfg("vit_dinov2_reg4_test"), |w| drop(w.tensors.remove("reg_token")));
    assert!(e.contains("missing tensor reg_token"), "{e}");
    let e = load_err("deit_distilled_test", &cfg("deit_distilled_test"), |w| drop(w.tensors.remove("head_dist.bias")));
    assert!(e.contains("head_dist.bias"), "{e}");
    let e = load_err("vit_qknorm_test", &cfg("vit_qknorm_test"), |w| drop(w.tensors.remove("blocks.1.attn.k_norm.weight")));
    assert!(e.contains("blocks.1.attn.k_norm.weight"), "{e}");
    // qkv_bias false while the file has qkv biases: both named.
    let e = load_err("vit_tiny_test", &cfg("vit_tiny_test").replace("\"depth\": 2", "\"depth\": 2, \"qkv_bias\": false"), |_| {});
    assert!(e.contains("blocks.0.attn.qkv.bias") && e.contains("qkv_bias is false"), "{e}");
    // LayerScale gammas without init_values: timm's strict load refuses them.
    let e = load_err("vit_layerscale_test", &cfg("vit_layerscale_test").replace("\"init_values\": 1e-05", "\"init_values\": null"), |_| {});
    assert!(e.contains("ls1.gamma") && e.contains("init_values"), "{e}");
    // A depth the checkpoint does not have, checked before anything is allocated for it.
    let e = load_err("vit_tiny_test", &cfg("vit_tiny_test").replace("\"depth\": 2", "\"depth\": 4000"), |_| {});
    assert!(e.contains("depth 4000") && e.contains("has 2 blocks"), "{e}");
    // A pos_embed that is no square grid cannot be resampled.
    let e = load_err("deit3_test", &cfg("deit3_test"), |w| w.tensors.get_mut("pos_embed").unwrap().shape = vec![1, 8, 64]);
    assert!(e.contains("pos_embed"), "{e}");
}
