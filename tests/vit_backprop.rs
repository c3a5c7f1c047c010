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
        // 1e-2, 0.0119 at 1e-3, about 0.0102 below, as the backward pass), so a small step.
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
            let analytic_at = |j: usize| -> f64 { g.chunks(*width).map(|row| row[j] as f64).sum() };
            // A step of 3e-4 moves the f32 objective (≈ 3) by 6e-4 × the gradient, against
            // rounding noise of a few 1e-7 in each forward pass: for a gradient of 0.01 that
            // noise is tens of percent (measured: 0.0089 … 0.0133 for 0.0102, by the step).
            // So for max pooling, the three channels with the largest gradient (0.6 … 1.7;
            // measured within 0.6 %).
            let channels = if max_pool {
                let mut by_size: Vec<usize> = (0..*width).collect();
                by_size.sort_by(|&a, &b| analytic_at(b).abs().total_cmp(&analytic_at(a).abs()));
                by_size[..3].to_vec()
            } else {
                vec![0, width / 2 + 1, width - 1]
            };
            for j in channels {
                let analytic = analytic_at(j);
                let eps = if max_pool { 3e-4 } else { 1e-2 };
                let mut moved = w.clone();
                moved.tensors.get_mut(&key).unwrap().data[j] += eps;
                let up = objective(&c, &moved, images, &r);
                moved.tensors.get_mut(&key).unwrap().data[j] -= 2.0 * eps;
                let down = objective(&c, &moved, images, &r);
                let numeric = (up - down) / (2.0 * eps as f64);
                let scale = analytic.abs().max(numeric.abs()).max(1e-2);
                assert!((analytic - numeric).abs() <= 2e-2 * scale, "{name} {key}[{j}]: backward {analytic}, finite difference {numeric}");
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

/// `block_weight_grads` against central differences of `run_block`: ⟨r, block(x)⟩ moved by a
/// few weight elements of each Linear, on a LayerScale, a qk_norm and a QuickGELU block; and
/// the blocks chained from `embed` give `forward`'s logits' input (the last block's output).
#[test]
fn block_weight_gradients_match_finite_differences() {
    use lowbit::models::vit::backprop::BLOCK_LINEARS;
    fn linears(ws: &[Vec<f32>]) -> [&[f32]; 4] {
        [&ws[0], &ws[1], &ws[2], &ws[3]]
    }
    for name in ["deit3_test", "vit_qknorm_test", "vit_clip_quickgelu_test"] {
        let (c, w, io) = load(name);
        let vit = CpuVit::new(&c, &w).unwrap();
        let x = vit.embed(&io.tensors["images"].data).unwrap();
        let block = vit.depth() - 1;
        let owned: Vec<Vec<f32>> = BLOCK_LINEARS.iter().map(|l| w.tensors[&format!("blocks.{block}.{l}.weight")].data.clone()).collect();
        let (y, cache) = vit.run_block(block, linears(&owned), &x).unwrap();
        let r = uniform(y.len(), 9, 1.0);
        let grads = vit.block_weight_grads(block, linears(&owned), &cache, &r).unwrap();
        let objective = |ws: &[Vec<f32>]| -> f64 {
            let (y, _) = vit.run_block(block, linears(ws), &x).unwrap();
            y.iter().zip(&r).map(|(&a, &b)| a as f64 * b as f64).sum()
        };
        for (l, g) in grads.iter().enumerate() {
            assert_eq!(g.len(), owned[l].len());
            // The largest gradient element and two fixed ones.
            let top = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
            for at in [top, 7, g.len() / 2 + 3] {
                let h = 1e-2;
                let mut plus = owned.clone();
                plus[l][at] += h;
                let mut minus = owned.clone();
                minus[l][at] -= h;
                let fd = (objective(&plus) - objective(&minus)) / (2.0 * h as f64);
                let tol = 2e-2 * g[top].abs() as f64 + 1e-4;
                assert!((fd - g[at] as f64).abs() <= tol, "{name} {} [{at}]: backward {} vs finite difference {fd}", BLOCK_LINEARS[l], g[at]);
            }
        }
        assert!(vit.run_block(block, [&owned[0], &owned[0], &owned[2], &owned[3]], &x).is_err(), "a qkv-sized proj is refused");
        assert!(vit.run_block(block, linears(&owned), &x[..5]).is_err(), "a partial image is refused");
    }
}

/// Input maps (`--method recon`'s model of the W4A8/W4A4 kernel): a block whose Linears store
/// W·H and rotate their input computes what the plain block does; its weight gradients still
/// match finite differences; a per-token quantizer changes the output by about its step, and
/// a map on something that is no block Linear is refused.
#[test]
fn input_maps_rotate_and_quantize_block_linears() {
    use lowbit::kernels::hadamard;
    use lowbit::kernels::w4a8::ActInput;
    use lowbit::models::vit::backprop::{InputMap, BLOCK_LINEARS};
    use std::collections::HashMap;
    fn linears(ws: &[Vec<f32>]) -> [&[f32]; 4] {
        [&ws[0], &ws[1], &ws[2], &ws[3]]
    }
    let (c, w, io) = load("vit_tiny_test");
    let plain = CpuVit::new(&c, &w).unwrap();
    let x = plain.embed(&io.tensors["images"].data).unwrap();
    let block = 1;
    let node = |l: &str| format!("blocks.{block}.{l}");
    let float: Vec<Vec<f32>> = BLOCK_LINEARS.iter().map(|l| w.tensors[&format!("{}.weight", node(l))].data.clone()).collect();
    let widths = [c.embed_dim, c.embed_dim, c.embed_dim, c.mlp_hidden()];
    let blocks: Vec<usize> = widths.iter().map(|&k| hadamard::block_for(k)).collect();
    let rotated_w: Vec<Vec<f32>> = float.iter().zip(widths.iter().zip(&blocks)).map(|(w, (&k, &b))| hadamard::reference(w, k, b).unwrap()).collect();
    let maps: HashMap<String, InputMap> = BLOCK_LINEARS.iter().zip(&blocks).map(|(l, &b)| (node(l), InputMap { hadamard: Some(b), ..Default::default() })).collect();
    let rotated = CpuVit::new(&c, &w).unwrap().with_input_maps(&maps).unwrap();
    let (y, _) = plain.run_block(block, linears(&float), &x).unwrap();
    let (yr, cache) = rotated.run_block(block, linears(&rotated_w), &x).unwrap();
    let diff = y.iter().zip(&yr).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "rotation changed the block by {diff}");
    // Finite differences through the rotated inputs.
    let r = uniform(y.len(), 5, 1.0);
    let grads = rotated.block_weight_grads(block, linears(&rotated_w), &cache, &r).unwrap();
    let objective = |ws: &[Vec<f32>]| -> f64 { rotated.run_block(block, linears(ws), &x).unwrap().0.iter().zip(&r).map(|(&a, &b)| a as f64 * b as f64).sum() };
    for (l, g) in grads.iter().enumerate() {
        let top = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
        for at in [top, 11] {
            let (mut plus, mut minus) = (rotated_w.clone(), rotated_w.clone());
            plus[l][at] += 1e-2;
            minus[l][at] -= 1e-2;
            let fd = (objective(&plus) - objective(&minus)) / 2e-2;
            assert!((fd - g[at] as f64).abs() <= 2e-2 * g[top].abs() as f64 + 1e-4, "{}: {} vs {fd}", BLOCK_LINEARS[l], g[at]);
        }
    }
    // Per-token 4-bit inputs: a visible but bounded change; 8-bit: far smaller.
    let err_at = |bits: u32| -> f64 {
        let maps: HashMap<String, InputMap> = BLOCK_LINEARS.iter().map(|l| (node(l), InputMap { quant: Some(ActInput::PerToken { bits, zero_point: true }), ..Default::default() })).collect();
        let q = CpuVit::new(&c, &w).unwrap().with_input_maps(&maps).unwrap();
        let (yq, _) = q.run_block(block, linears(&float), &x).unwrap();
        lowbit::metrics::sqnr_db(&yq, &y)
    };
    let (a4, a8) = (err_at(4), err_at(8));
    assert!(a4 > 5.0 && a8 > a4 + 15.0, "4-bit {a4} dB, 8-bit {a8} dB");
    // QDrop: keeping every float value gives the float block, keeping none the quantized
    // one; keeping half lands in between, with a fresh draw per seed.
    let maps: HashMap<String, InputMap> = BLOCK_LINEARS.iter().map(|l| (node(l), InputMap { quant: Some(ActInput::PerToken { bits: 4, zero_point: true }), ..Default::default() })).collect();
    let mut q = CpuVit::new(&c, &w).unwrap().with_input_maps(&maps).unwrap();
    let quantized = q.run_block(block, linears(&float), &x).unwrap().0;
    let mut dropped = |keep: Option<f32>, seed: u64| -> Vec<f32> {
        q.set_qdrop(keep, seed);
        q.run_block(block, linears(&float), &x).unwrap().0
    };
    let all_float = dropped(Some(1.0), 7);
    let diff = y.iter().zip(&all_float).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-5, "QDrop keeping every float value moved the block by {diff}");
    assert_eq!(dropped(Some(0.0), 7), quantized);
    let (half7, half8) = (dropped(Some(0.5), 7), dropped(Some(0.5), 8));
    let (h7, h8) = (lowbit::metrics::sqnr_db(&half7, &y), lowbit::metrics::sqnr_db(&half8, &y));
    assert!(h7 > a4 + 1.0 && h8 > a4 + 1.0 && half7 != half8, "QDrop 0.5: {h7} / {h8} dB, quantized {a4} dB");
    assert_eq!(dropped(None, 7), quantized);
    // A post-softmax quantizer: a step far below the probabilities leaves the block as it was,
    // an 8-bit uniform one on [0, 1] moves it, and only attention nodes take one.
    use lowbit::kernels::act_quant::ActQuantizer;
    let softmax_err = |bits: u32, scale: f32| -> f64 {
        let q: HashMap<String, ActQuantizer> = [(format!("blocks.{block}.attn"), ActQuantizer::Uniform { bits, scale, zero: 0.0 })].into();
        let vit = CpuVit::new(&c, &w).unwrap().with_attention_quantizers(&q).unwrap();
        lowbit::metrics::sqnr_db(&vit.run_block(block, linears(&float), &x).unwrap().0, &y)
    };
    let (fine, coarse) = (softmax_err(20, 1e-6), softmax_err(8, 1.0 / 255.0));
    eprintln!("post-softmax quantizer: 20 bits of 1e-6 {fine:.1} dB, 8 bits of 1/255 {coarse:.1} dB");
    assert!(coarse > 10.0 && coarse < fine - 10.0, "1/255: {coarse} dB, tiny step: {fine} dB");
    let q: HashMap<String, ActQuantizer> = [(node("mlp.fc1"), ActQuantizer::Uniform { bits: 8, scale: 0.01, zero: 0.0 })].into();
    assert!(CpuVit::new(&c, &w).unwrap().with_attention_quantizers(&q).is_err());
    let bad: HashMap<String, InputMap> = [("head".to_string(), InputMap::default())].into();
    assert!(CpuVit::new(&c, &w).unwrap().with_input_maps(&bad).is_err());
    let odd: HashMap<String, InputMap> = [(node("mlp.fc2"), InputMap { hadamard: Some(7), ..Default::default() })].into();
    assert!(CpuVit::new(&c, &w).unwrap().with_input_maps(&odd).is_err());
}
