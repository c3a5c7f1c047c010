//! timm's `resample_abs_pos_embed` on the CPU: the patch rows of a position embedding, seen as
//! an image of `dim` channels on the old grid, resized bicubically to the new grid; prefix
//! tokens are kept as they are.
//!
//! timm calls `F.interpolate(mode='bicubic', align_corners=False)` with `antialias=True` (its
//! default, both in `checkpoint_filter_fn` and for `dynamic_img_size`), which in PyTorch is
//! the Pillow-style separable filter (a = -0.5, support widened when shrinking, weights
//! normalized). The plain kernel (a = -0.75, border indices clamped) is here too since the
//! two are the same code with different weights.

/// Weights of one output index: the first input index and its weights.
type Taps = Vec<(usize, Vec<f64>)>;

fn cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// PyTorch's `_upsample_bicubic2d_aa` weights along one axis.
fn taps_antialias(inp: usize, out: usize) -> Taps {
    let scale = inp as f64 / out as f64;
    let (support, inv) = if scale >= 1.0 { (2.0 * scale, 1.0 / scale) } else { (2.0, 1.0) };
    (0..out)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            // Truncation toward zero, as the kernel's int64 cast.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(inp as i64) as usize;
            let mut w: Vec<f64> = (lo..hi).map(|j| cubic((j as f64 - center + 0.5) * inv, -0.5)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (lo, w)
        })
        .collect()
}

/// PyTorch's `upsample_bicubic2d` weights (a = -0.75, out-of-range taps clamped to the border).
fn taps_plain(inp: usize, out: usize) -> Taps {
    let scale = inp as f64 / out as f64;
    (0..out)
        .map(|i| {
            let src = scale * (i as f64 + 0.5) - 0.5;
            let f = src.floor();
            let t = src - f;
            let mut w = vec![0.0; inp];
            for k in 0..4 {
                let j = (f as i64 - 1 + k).clamp(0, inp as i64 - 1) as usize;
                w[j] += cubic(t - (k as f64 - 1.0), -0.75);
            }
            (0, w)
        })
        .collect()
}

/// `grid` [old_h · old_w, dim] (row-major patch rows) resized to [new_h · new_w, dim].
pub fn resize_grid(grid: &[f32], old: (usize, usize), new: (usize, usize), dim: usize, antialias: bool) -> Vec<f32> {
    if old == new {
        return grid.to_vec();
    }
    let taps = |i, o| if antialias { taps_antialias(i, o) } else { taps_plain(i, o) };
    let (ty, tx) = (taps(old.0, new.0), taps(old.1, new.1));
    // Width first, then height (PyTorch's order for the separable filter).
    let mut rows = vec![0f64; old.0 * new.1 * dim];
    for y in 0..old.0 {
        for (x, (lo, w)) in tx.iter().enumerate() {
            let dst = &mut rows[(y * new.1 + x) * dim..(y * new.1 + x + 1) * dim];
            for (j, wj) in w.iter().enumerate().filter(|(_, w)| **w != 0.0) {
                let src = &grid[(y * old.1 + lo + j) * dim..(y * old.1 + lo + j + 1) * dim];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += wj * *s as f64);
            }
        }
    }
    let mut out = vec![0f64; new.0 * new.1 * dim];
    for (y, (lo, w)) in ty.iter().enumerate() {
        for (j, wj) in w.iter().enumerate().filter(|(_, w)| **w != 0.0) {
            let src = &rows[(lo + j) * new.1 * dim..(lo + j + 1) * new.1 * dim];
            let dst = &mut out[y * new.1 * dim..(y + 1) * new.1 * dim];
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += wj * s);
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

/// A position embedding [prefix + old², dim] resampled to [prefix + new², dim] as timm does.
pub fn resample_pos_embed(pos: &[f32], prefix: usize, old: usize, new: usize, dim: usize) -> Vec<f32> {
    let (head, grid) = pos.split_at(prefix * dim);
    let mut out = head.to_vec();
    out.extend(resize_grid(grid, (old, old), (new, new), dim, true));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity_and_constants_stay_constant() {
        let g: Vec<f32> = (0..4 * 4 * 3).map(|i| i as f32 * 0.1).collect();
        assert_eq!(resize_grid(&g, (4, 4), (4, 4), 3, true), g);
        let ones = vec![1.5f32; 5 * 5 * 2];
        for aa in [true, false] {
            for new in [(3, 7), (9, 2)] {
                assert!(resize_grid(&ones, (5, 5), new, 2, aa).iter().all(|v| (v - 1.5).abs() < 1e-6));
            }
        }
    }

    #[test]
    fn matches_pytorch_values() {
        // torch: F.interpolate(arange(4.).view(1,1,2,2), size=(3,3), mode='bicubic',
        // align_corners=False, antialias=False / True)
        let x = [0.0f32, 1.0, 2.0, 3.0];
        let plain = resize_grid(&x, (2, 2), (3, 3), 1, false);
        let want = [-0.260417, 0.326389, 0.913194, 0.913195, 1.5, 2.086806, 2.086806, 2.673611, 3.260417];
        plain.iter().zip(want).for_each(|(a, b)| assert!((a - b).abs() < 1e-5, "{plain:?}"));
        let aa = resize_grid(&x, (2, 2), (3, 3), 1, true);
        let want = [-0.197368, 0.368421, 0.934211, 0.934211, 1.5, 2.06579, 2.06579, 2.631579, 3.197369];
        aa.iter().zip(want).for_each(|(a, b)| assert!((a - b).abs() < 1e-4, "{aa:?}"));
    }
}
