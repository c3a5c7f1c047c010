//! The CPU ViT of `models::vit::backprop` (what `--method fisher` differentiates): its forward
//! pass against timm's logits on the family fixtures, and its backward pass against finite
//! differences of that forward pass, layer by layer (a bias moves every row of a layer's
//! output, so ∂(rᵀy)/∂b_j is the sum of the output gradient's column j).

mod common;
use common::*;
use lowbit::models::vit::backprop::{CpuVit, Rule};
use lowbit::models::{VitConfig, Weights};
use lowbit::synthetic::uniform;

fn load(name: &str) -> (VitConfig, Weights, Weights) {
    let dir = fixture_dir(name);
    let config = VitConfig::load(&dir.join("config.json")).unwrap();
    let weights = Weights::load(&dir.join("model.safetensors")).unwrap();
    let io = Weights::load(&dir.join("io.safetensors")).unwrap();
    (config, weights, io)
}

/// The family fixtures: class token, distilled, GAP, registers, LayerScale, QuickGELU with a
/// pre-norm, qk_norm with max pooling, unpooled tokens and a resampled position embedding.
const SUPPORTED: [&str; 9] = [
    "vit_tiny_test",
    "vit_qknorm_test",
    "vit_dinov2_reg4_test",
    "vit_clip_quickgelu_test",
    "deit_distilled_test",
    "deit3_test",
    "vit_gap_test",
    "vit_tokens_test",
    "vit_resampled_test",
];

#[test]
fn cpu_forward_matches_timm() {
    for name in SUPPORTED {
        let (c, w, io) = load(name);
        let vit = CpuVit::new(&c, &w).unwrap();
        let (logits, _) = vit.forward(&io.tensors["images"].data).unwrap();
        assert_parity(name, &logits, &io.tensors["logits"].data);
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let (c, w, _) = load("vit_tiny_test");
    let vit = CpuVit::new(&c, &w).unwrap();
    let err = vit.forward(&[0.0; 7]).err().expect("7 values are no image").to_string();
    assert!(err.contains("not 3×"), "{err}");
}

/// rᵀ·forward(images) in f64.
fn objective(c: &VitConfig, w: &Weights, images: &[f32], r: &[f32]) -> f64 {
    let (y, _) = CpuVit::new(c, w).unwrap().forward(images).unwrap();
    y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

#[test]
fn backward_matches_finite_differences() {
    for name in ["deit3_test", "vit_gap_test", "deit_distilled_test", "vit_clip_quickgelu_test", "vit_tokens_test", "vit_qknorm_test"] {
        let (mut c, mut w, io) = load(name);
        // Zero biases where the model has none (same function), so that every block Linear
        // has one to move.
        for i in 0..c.depth {
            for (layer, width) in [("attn.qkv", 3 * c.embed_dim), ("attn.proj", c.embed_dim), ("mlp.fc1", c.mlp_hidden()), ("mlp.fc2", c.embed_dim)] {
                let t = lowbit::models::weights::WeightTensor { shape: vec![width], data: vec![0.0; width] };
                w.tensors.entry(format!("blocks.{i}.{layer}.bias")).or_insert(t);
            }
        }
        (c.qkv_bias, c.proj_bias) = (true, true);
        let images = &io.tensors["images"].data;
        let vit = CpuVit::new(&c, &w).unwrap();
        let (y, trace) = vit.forward(images).unwrap();
        let r = uniform(y.len(), 7, 1.0);
        let mut grads = std::collections::HashMap::new();
        vit.backward(&trace, &r, Rule::Gradient, &mut |v| {
            grads.insert(v.node, (v.grad.to_vec(), v.width));
        })
        .unwrap();
        let last = c.depth - 1;
        // Max pooling is piecewise linear: a step of 1e-2 moves some channel's maximum to
        // another token (the difference quotient of vit_qknorm_test's fc1 bias: 0.0170 at
        // 1e-2, 0.0119 at 1e-3, 0.0102 from 3e-4 on, as the backward pass), so a small step,
        // where f32 rounding needs a looser bound.
        let max_pool = matches!(c.global_pool, lowbit::models::vit::config::Pool::Max | lowbit::models::vit::config::Pool::AvgMax);
        let mut layers = vec![format!("blocks.0.mlp.fc1"), format!("blocks.{last}.mlp.fc2"), "blocks.0.attn.proj".into(), format!("blocks.{last}.attn.proj"), "blocks.0.attn.qkv".into()];
        if !c.pre_norm {
            layers.push("patch_embed.proj".into());
        }
        if c.num_classes > 0 {
            layers.push("head".into());
        }
        for layer in layers {
            let (g, width) = &grads[&layer];
            let key = format!("{layer}.bias");
            for j in [0, width / 2 + 1, width - 1] {
                let analytic: f64 = g.chunks(*width).map(|row| row[j] as f64).sum();
                let eps = if max_pool { 3e-4 } else { 1e-2 };
                let mut moved = w.clone();
                moved.tensors.get_mut(&key).unwrap().data[j] += eps;
                let up = objective(&c, &moved, images, &r);
                moved.tensors.get_mut(&key).unwrap().data[j] -= 2.0 * eps;
                let down = objective(&c, &moved, images, &r);
                let numeric = (up - down) / (2.0 * eps as f64);
                let scale = analytic.abs().max(numeric.abs()).max(1e-2);
                assert!((analytic - numeric).abs() <= if max_pool { 5e-2 } else { 2e-2 } * scale, "{name} {key}[{j}]: backward {analytic}, finite difference {numeric}");
            }
        }
        // Every Linear of the model got its rows.
        let t = c.tokens();
        let n = io.tensors["images"].shape[0];
        assert_eq!(grads["blocks.0.attn.qkv"].0.len(), n * t * 3 * c.embed_dim, "{name}");
        assert_eq!(grads["patch_embed.proj"].0.len(), n * c.grid() * c.grid() * c.embed_dim, "{name}");
    }
}

#[test]
fn sensitivity_has_one_value_per_row_and_sees_the_pooling() {
    let (c, w, io) = load("deit3_test");
    let images = &io.tensors["images"].data;
    let n = io.tensors["images"].shape[0];
    let s = CpuVit::new(&c, &w).unwrap().sensitivity(images, 0).unwrap().rows;
    let t = c.tokens();
    let last = format!("blocks.{}.mlp.fc2", c.depth - 1);
    assert_eq!(s[&last].len(), n * t);
    assert_eq!(s["head"].len(), n);
    assert!(s.values().flatten().all(|v| v.is_finite() && *v >= 0.0));
    // A class-token model reads only the class token after the last block's attention: the
    // last MLP's patch rows move nothing, its class-token rows do.
    for i in 0..n {
        assert!(s[&last][i * t] > 0.0, "class token of image {i}");
        assert!(s[&last][i * t + 1..(i + 1) * t].iter().all(|&v| v == 0.0), "patch tokens of image {i}");
    }
}

/// Without biases (and with zero position embeddings and class token), every part of the ViT
/// is linear once LayerNorm's σ, the attention probabilities and the activation's slope
/// act(x)/x are held fixed: the conservative LRP rules then hand the patch embedding's output
/// exactly the relevance y_c of the explained output (Ali et al., 2022).
#[test]
fn relevance_is_conserved_without_biases() {
    for name in ["deit3_test", "vit_gap_test"] {
        let (c, mut w, io) = load(name);
        for (key, t) in w.tensors.iter_mut() {
            if key.ends_with(".bias") || key == "pos_embed" || key == "cls_token" {
                t.data.iter_mut().for_each(|v| *v = 0.0);
            }
        }
        let images = &io.tensors["images"].data;
        let vit = CpuVit::new(&c, &w).unwrap();
        let (y, trace) = vit.forward(images).unwrap();
        let dim = vit.output_dim();
        let n = y.len() / dim;
        let mut seed = vec![0.0; y.len()];
        (0..n).for_each(|i| seed[i * dim + i % dim] = 1.0);
        let mut at_patches = Vec::new();
        vit.backward(&trace, &seed, Rule::Relevance, &mut |v| {
            if v.node == "patch_embed.proj" {
                at_patches = v.grad.iter().zip(v.output).map(|(g, o)| g * o).collect();
            }
        })
        .unwrap();
        let per_image = at_patches.len() / n;
        for i in 0..n {
            let got: f32 = at_patches[i * per_image..(i + 1) * per_image].iter().sum();
            let want = y[i * dim + i % dim];
            assert!((got - want).abs() <= 1e-3 * want.abs().max(1.0), "{name} image {i}: relevance {got}, output {want}");
        }
        // The per-layer scores are finite, positive, and cover every Linear.
        let scores = vit.relevance(images).unwrap();
        assert_eq!(scores.len(), 4 * c.depth + 1 + usize::from(c.num_classes > 0), "{name}: {:?}", scores.keys());
        assert!(scores.values().all(|v| v.is_finite() && *v > 0.0), "{name}");
    }
}
