//! Attention rollout (Abnar & Zuidema, 2020): how much each input patch flows into the class
//! token through all layers. Per layer the heads' attention maps are averaged, the residual
//! connection is modelled by adding the identity, rows are renormalized, and the layers are
//! multiplied together. Computed on the CPU from the q and k the GPU produced: the maps are
//! tiny (65×65 for digits-vit) and this keeps the engine free of a viewer-only kernel.

/// Head `h`'s attention probabilities softmax(q·kᵀ/√d), [t, t] row-major, from one image's
/// `attn.qkv` linear output [t, 3·heads·head_dim] in timm's layout (q, k, v blocks, each
/// split into heads).
pub fn head_attention(qkv: &[f32], tokens: usize, heads: usize, head_dim: usize, h: usize) -> Vec<f64> {
    let d = heads * head_dim;
    let row = 3 * d;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut p = vec![0.0f64; tokens * tokens];
    for i in 0..tokens {
        let q = &qkv[i * row + h * head_dim..][..head_dim];
        let scores = &mut p[i * tokens..(i + 1) * tokens];
        for (j, s) in scores.iter_mut().enumerate() {
            let k = &qkv[j * row + d + h * head_dim..][..head_dim];
            *s = q.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale;
        }
        // Softmax with the maximum subtracted so large logits don't overflow.
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        scores.iter_mut().for_each(|s| *s = (*s - max).exp());
        let sum: f64 = scores.iter().sum();
        scores.iter_mut().for_each(|s| *s /= sum);
    }
    p
}

/// One layer's head-averaged attention with the identity added (the residual connection),
/// rows normalized: [t, t].
pub fn layer_attention(qkv: &[f32], tokens: usize, heads: usize, head_dim: usize) -> Vec<f64> {
    let mut avg = vec![0.0f64; tokens * tokens];
    for h in 0..heads {
        for (a, p) in avg.iter_mut().zip(head_attention(qkv, tokens, heads, head_dim, h)) {
            *a += p / heads as f64;
        }
    }
    for i in 0..tokens {
        avg[i * tokens + i] += 1.0;
        let r = &mut avg[i * tokens..(i + 1) * tokens];
        let sum: f64 = r.iter().sum();
        r.iter_mut().for_each(|v| *v /= sum);
    }
    avg
}

/// The rollout through `layers` (first layer first): the class token's row of
/// A_L · … · A_1 without its own column, i.e. one weight per patch, scaled so the largest is 1.
pub fn class_token_rollout(layers: &[Vec<f64>], tokens: usize) -> Vec<f32> {
    // Only the class token's row is needed: propagate that row vector through the layers,
    // last layer first (row · A_L · A_{L-1} · …), instead of multiplying full matrices.
    let mut row = vec![0.0f64; tokens];
    row[0] = 1.0;
    for a in layers.iter().rev() {
        let mut next = vec![0.0f64; tokens];
        for (i, &r) in row.iter().enumerate() {
            if r != 0.0 {
                for (j, n) in next.iter_mut().enumerate() {
                    *n += r * a[i * tokens + j];
                }
            }
        }
        row = next;
    }
    let patches = &row[1..];
    let max = patches.iter().cloned().fold(0.0f64, f64::max);
    patches.iter().map(|&v| if max > 0.0 { (v / max) as f32 } else { 0.0 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full matrix product, the textbook form the row-vector shortcut must match.
    fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            for k in 0..n {
                for j in 0..n {
                    c[i * n + j] += a[i * n + k] * b[k * n + j];
                }
            }
        }
        c
    }

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn rows_are_stochastic_and_rollout_matches_matrix_product() {
        let (t, heads, hd) = (5, 2, 3);
        let layers: Vec<Vec<f64>> = (0..3).map(|l| layer_attention(&pseudo_random(t * 3 * heads * hd, l + 1), t, heads, hd)).collect();
        for a in &layers {
            for i in 0..t {
                let s: f64 = a[i * t..(i + 1) * t].iter().sum();
                assert!((s - 1.0).abs() < 1e-12);
                // The identity term makes each token attend to itself at least half.
                assert!(a[i * t + i] >= 0.5);
            }
        }
        let full = matmul(&matmul(&layers[2], &layers[1], t), &layers[0], t);
        let want: Vec<f64> = full[1..t].to_vec();
        let max = want.iter().cloned().fold(0.0, f64::max);
        let got = class_token_rollout(&layers, t);
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w / max).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn uniform_keys_give_uniform_attention() {
        // q·k is the same for every key when all keys are equal: softmax is uniform.
        let (t, heads, hd) = (4, 1, 2);
        let mut qkv = vec![0.0f32; t * 3 * heads * hd];
        for i in 0..t {
            qkv[i * 6] = i as f32; // queries differ
            qkv[i * 6 + 2] = 1.0; // keys equal
        }
        let a = layer_attention(&qkv, t, heads, hd);
        for i in 0..t {
            for j in 0..t {
                let want = if i == j { (0.25 + 1.0) / 2.0 } else { 0.25 / 2.0 };
                assert!((a[i * t + j] - want).abs() < 1e-12);
            }
        }
    }
}
