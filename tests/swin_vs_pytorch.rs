//! timm's Swin against PyTorch: fixtures from `tools/make_swin_fixtures.py` hold small
//! random-weight `SwinTransformer`s (shifted windows with the −100 mask, patch merging, a last
//! stage whose grid the window covers; f32 and f16 checkpoints, with and without a head), an
//! input batch and timm's logits. Plus the Swin kernels against their CPU references on odd
//! shapes, the index tables, and bad checkpoints and configs.

mod common;
use common::*;
use lowbit::formats::WeightFormat;
use lowbit::gpu::{DType, Tensor};
use lowbit::models::swin::config::SwinConfig;
use lowbit::models::swin::glue::{self, index, reference};
use lowbit::models::swin::{relative_position_index, SwinTransformer};
use lowbit::models::Weights;

const FIXTURES: [&str; 2] = ["swin_tiny_test", "swin_f16_test"];

fn run(gpu: &lowbit::Gpu, model: &SwinTransformer, io: &Weights) -> (Vec<f32>, Vec<f32>) {
    let images = &io.tensors["images"];
    let t = Tensor::from_f32(gpu, &images.shape, &images.data).unwrap();
    let plan = model.plan(gpu, images.shape[0]).unwrap();
    let got = plan.run_with(gpu, &[&t]).unwrap().remove(0).to_vec_f32(gpu).unwrap();
    (got, io.tensors["logits"].data.clone())
}

#[test]
fn logits_match_timm_under_every_plan() {
    for (path, gpu) in all_plans() {
        for name in FIXTURES {
            let dir = fixture_dir(name);
            let model = SwinTransformer::from_pretrained(gpu, &dir, None, WeightFormat::F32).unwrap();
            let io = Weights::load(&dir.join("io.safetensors")).unwrap();
            let (got, want) = run(gpu, &model, &io);
            assert_parity(&format!("{name} {path}"), &got, &want);
        }
    }
}

#[test]
fn f16_weights_stay_close() {
    let gpu = gpu();
    let dir = fixture_dir("swin_tiny_test");
    let model = SwinTransformer::from_pretrained(gpu, &dir, None, WeightFormat::F16).unwrap();
    let io = Weights::load(&dir.join("io.safetensors")).unwrap();
    let (got, want) = run(gpu, &model, &io);
    let cos = lowbit::metrics::cosine(&got, &want);
    assert!(cos > 0.999, "f16 weights: cosine {cos}");
}

#[test]
fn index_tables_are_permutations_and_invert() {
    for (res, ws, shift) in [(8, 4, 2), (6, 3, 1), (4, 4, 0), (12, 4, 0)] {
        let part = index::partition(res, res, ws, shift);
        let rev = index::reverse(res, res, ws, shift);
        let mut sorted = part.clone();
        sorted.sort();
        assert_eq!(sorted, (0..(res * res) as u32).collect::<Vec<_>>(), "partition {res} {ws} {shift}");
        for (p, &k) in rev.iter().enumerate() {
            assert_eq!(part[k as usize] as usize, p, "reverse ∘ partition {res} {ws} {shift}");
        }
    }
    // timm's `get_relative_position_index` for a 2×2 window.
    assert_eq!(relative_position_index(2), vec![4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4]);
    assert_eq!(index::merge(2, 2), vec![0, 2, 1, 3]);
}

#[test]
fn kernels_match_reference_on_odd_shapes() {
    for (path, gpu) in gpus() {
        // gather: 3 images, 7 input rows each, 5 output rows, width 13.
        let (b, tin, dim) = (3, 7, 13);
        let idx: Vec<u32> = vec![6, 0, 3, 3, 1];
        let x = random(b * tin * dim, 1, 1.0);
        let xt = Tensor::from_f32(gpu, &[b, tin, dim], &x).unwrap();
        let it = Tensor::from_u32(gpu, &[idx.len()], &idx).unwrap();
        let out = Tensor::zeros(gpu, &[b, idx.len(), dim], DType::F32).unwrap();
        // window attention: 6 windows of 5 tokens, 3 heads of 7, bias over 2 windows.
        let (windows, n, heads, hd, nw) = (6, 5, 3, 7, 2);
        let qkv = random(windows * n * 3 * heads * hd, 2, 1.5);
        let bias = random(nw * heads * n * n, 3, 2.0);
        let qt = Tensor::from_f32(gpu, &[windows, n, 3 * heads * hd], &qkv).unwrap();
        let bt = Tensor::from_f32(gpu, &[nw, heads, n, n], &bias).unwrap();
        let at = Tensor::zeros(gpu, &[windows, n, heads * hd], DType::F32).unwrap();
        let mut enc = gpu.encoder();
        glue::gather_rows(gpu, &mut enc, &xt, &it, &out).unwrap();
        glue::window_attention(gpu, &mut enc, &qt, &bt, heads, &at).unwrap();
        gpu.submit(enc).unwrap();
        // A copy: exact.
        assert_eq!(out.to_vec_f32(gpu).unwrap(), reference::gather_rows(&x, dim, &idx, b), "gather_rows {path}");
        let want = reference::window_attention(&qkv, windows, n, heads, &bias, nw);
        assert_nmse(&format!("window_attention {path}"), &at.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
    }
}

#[test]
fn kernels_reject_bad_shapes() {
    let gpu = gpu();
    let t = |shape: &[usize]| Tensor::zeros(gpu, shape, DType::F32).unwrap();
    let ids = Tensor::from_u32(gpu, &[4], &[0; 4]).unwrap();
    let mut enc = gpu.encoder();
    assert!(glue::gather_rows(gpu, &mut enc, &t(&[2, 3, 5]), &ids, &t(&[2, 3, 5])).is_err());
    assert!(glue::window_attention(gpu, &mut enc, &t(&[4, 5, 18]), &t(&[2, 3, 5, 5]), 3, &t(&[4, 5, 6])).is_ok());
    assert!(glue::window_attention(gpu, &mut enc, &t(&[4, 5, 18]), &t(&[3, 3, 5, 5]), 3, &t(&[4, 5, 6])).is_err());
    assert!(glue::window_attention(gpu, &mut enc, &t(&[4, 5, 18]), &t(&[2, 3, 4, 4]), 3, &t(&[4, 5, 6])).is_err());
    assert!(glue::window_attention(gpu, &mut enc, &t(&[4, 5, 3 * 65]), &t(&[1, 1, 5, 5]), 1, &t(&[4, 5, 65])).is_err());
}

fn load_err(config: &str, edit: impl FnOnce(&mut Weights)) -> String {
    let dir = fixture_dir("swin_tiny_test");
    let mut w = Weights::load(&dir.join("model.safetensors")).unwrap();
    edit(&mut w);
    let err = SwinConfig::from_json(config).and_then(|c| SwinTransformer::new(gpu(), &c, &w, WeightFormat::F32).map(|_| ()));
    err.expect_err("should be refused").to_string()
}

#[test]
fn bad_checkpoints_and_configs_are_named() {
    let config = std::fs::read_to_string(fixture_dir("swin_tiny_test").join("config.json")).unwrap();
    let err = load_err(&config, |w| {
        w.tensors.remove("layers.1.downsample.reduction.weight");
    });
    assert!(err.contains("layers.1.downsample.reduction.weight"), "{err}");
    let err = load_err(&config, |w| {
        w.tensors.remove("layers.0.blocks.1.attn.relative_position_bias_table");
    });
    assert!(err.contains("relative_position_bias_table"), "{err}");
    // An option lowbit does not implement is named with the architecture.
    let odd = config.replace("\"mlp_ratio\": 2.0", "\"mlp_ratio\": 2.0, \"always_partition\": true");
    let err = SwinConfig::from_json(&odd).unwrap_err().to_string();
    assert!(err.contains("always_partition") && err.contains("swin_tiny_patch4_window7_224"), "{err}");
    // A grid that is not whole windows.
    let err = SwinConfig::from_json(&config.replace("\"window_size\": 4", "\"window_size\": 3")).unwrap_err().to_string();
    assert!(err.contains("windows"), "{err}");
    // A ViT config is not a Swin.
    let vit = std::fs::read_to_string(fixture_dir("vit_tiny_test").join("config.json")).unwrap();
    assert!(SwinConfig::from_json(&vit).unwrap_err().to_string().contains("not a Swin"));
}
