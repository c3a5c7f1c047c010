//! The pieces of the CPU ViT (`super`): Linear and LayerNorm with their backward passes, the
//! activations' slopes, and rows split between the cores.

use super::Rule;
use crate::kernels::elementwise::Activation;
use crate::kernels::norm::reference::mean_rstd;
use crate::models::Weights;
use crate::Result;

/// A Linear: y = x·Wᵀ + b over rows.
#[derive(Clone, Copy)]
pub(super) struct Dense<'a> {
    pub(super) w: &'a [f32],
    pub(super) b: Option<&'a [f32]>,
    pub(super) out: usize,
    pub(super) inp: usize,
}

impl<'a> Dense<'a> {
    pub(super) fn load(w: &'a Weights, name: &str, out: usize, inp: usize, bias: bool) -> Result<Dense<'a>> {
        let b = if bias { Some(w.get(&format!("{name}.bias"), &[out])?) } else { None };
        Ok(Dense { w: w.get(&format!("{name}.weight"), &[out, inp])?, b, out, inp })
    }

    pub(super) fn forward(&self, x: &[f32]) -> Vec<f32> {
        let (inp, out) = (self.inp, self.out);
        let m = x.len() / inp;
        let mut y = match self.b {
            Some(b) => b.iter().copied().cycle().take(m * out).collect(),
            None => vec![0.0; m * out],
        };
        // Y += X·Wᵀ: Wᵀ is W read column-major.
        gemm(m, inp, out, Operand::rows(x, inp), Operand::cols(self.w, inp), &mut y);
        y
    }

    /// dx = dy·W.
    pub(super) fn backward(&self, dy: &[f32]) -> Vec<f32> {
        let (inp, out) = (self.inp, self.out);
        let m = dy.len() / out;
        let mut dx = vec![0.0; m * inp];
        gemm(m, out, inp, Operand::rows(dy, out), Operand::rows(self.w, inp), &mut dx);
        dx
    }

    /// dW = dyᵀ·x over the rows: the weight's gradient, [out, inp].
    pub(super) fn weight_grad(&self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let (inp, out) = (self.inp, self.out);
        let m = x.len() / inp;
        let mut dw = vec![0.0; out * inp];
        gemm(out, m, inp, Operand::cols(dy, out), Operand::rows(x, inp), &mut dw);
        dw
    }
}

/// A matrix operand of `gemm`: its values and (row stride, column stride).
pub(super) struct Operand<'a> {
    v: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Operand<'a> {
    /// Row-major with rows of `width`.
    pub(super) fn rows(v: &'a [f32], width: usize) -> Self {
        Operand { v, rs: width, cs: 1 }
    }

    /// The transpose of a row-major matrix with rows of `width`.
    pub(super) fn cols(v: &'a [f32], width: usize) -> Self {
        Operand { v, rs: 1, cs: width }
    }
}

/// C[m×n] += A[m×k]·B[k×n] (C row-major), by `matrixmultiply`'s blocked, threaded kernel.
pub(super) fn gemm(m: usize, k: usize, n: usize, a: Operand, b: Operand, c: &mut [f32]) {
    let last = |o: &Operand, rows: usize, cols: usize| (rows.max(1) - 1) * o.rs + (cols.max(1) - 1) * o.cs;
    assert!(c.len() == m * n && (m * k == 0 || (last(&a, m, k) < a.v.len() && last(&b, k, n) < b.v.len())), "gemm: operands too small for {m}×{k}·{k}×{n}");
    if m * n * k == 0 {
        return;
    }
    // SAFETY: every element the strides reach was bounds-checked above, and C is exclusive.
    unsafe {
        matrixmultiply::sgemm(m, k, n, 1.0, a.v.as_ptr(), a.rs as isize, a.cs as isize, b.v.as_ptr(), b.rs as isize, b.cs as isize, 1.0, c.as_mut_ptr(), n as isize, 1);
    }
}

#[derive(Clone, Copy)]
pub(super) struct Norm<'a> {
    w: &'a [f32],
    b: &'a [f32],
    eps: f32,
}

/// What LayerNorm's backward needs: the normalized rows and each row's 1/σ.
pub(super) struct NormCache {
    xhat: Vec<f32>,
    rstd: Vec<f32>,
}

impl<'a> Norm<'a> {
    pub(super) fn load(w: &'a Weights, name: &str, d: usize, eps: f32) -> Result<Norm<'a>> {
        Ok(Norm { w: w.get(&format!("{name}.weight"), &[d])?, b: w.get(&format!("{name}.bias"), &[d])?, eps })
    }

    pub(super) fn forward(&self, x: &[f32]) -> (Vec<f32>, NormCache) {
        let d = self.w.len();
        let (mut y, mut xhat, mut rstd) = (Vec::with_capacity(x.len()), Vec::with_capacity(x.len()), Vec::with_capacity(x.len() / d));
        for row in x.chunks(d) {
            let (mean, r) = mean_rstd(row, self.eps);
            for (i, &v) in row.iter().enumerate() {
                let h = ((v as f64 - mean) * r) as f32;
                xhat.push(h);
                y.push(h * self.w[i] + self.b[i]);
            }
            rstd.push(r as f32);
        }
        (y, NormCache { xhat, rstd })
    }

    /// The forward pass's output again, from its cache.
    pub(super) fn output(&self, cache: &NormCache) -> Vec<f32> {
        let d = self.w.len();
        cache.xhat.iter().enumerate().map(|(i, h)| h * self.w[i % d] + self.b[i % d]).collect()
    }

    /// dx = (dx̂ − mean(dx̂) − x̂·mean(dx̂ ⊙ x̂)) / σ with dx̂ = dy ⊙ γ; under `Rule::Relevance`
    /// σ is a constant, which drops the last term.
    pub(super) fn backward(&self, cache: &NormCache, dy: &[f32], rule: Rule) -> Vec<f32> {
        let d = self.w.len();
        let mut dx = Vec::with_capacity(dy.len());
        for ((g, h), &r) in dy.chunks(d).zip(cache.xhat.chunks(d)).zip(&cache.rstd) {
            let dh: Vec<f32> = g.iter().zip(self.w).map(|(g, w)| g * w).collect();
            let m1 = dh.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let m2 = match rule {
                Rule::Gradient => dh.iter().zip(h).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / d as f64,
                Rule::Relevance => 0.0,
            };
            dx.extend(dh.iter().zip(h).map(|(&a, &b)| ((a as f64 - m1 - b as f64 * m2) * r as f64) as f32));
        }
        dx
    }
}

/// d/dx of the activation (what `Activation::reference` computes), or act(x)/x under
/// `Rule::Relevance`.
pub(super) fn slope(act: Activation, x: f32, rule: Rule) -> f32 {
    if rule == Rule::Relevance {
        return if x == 0.0 { slope(act, 0.0, Rule::Gradient) } else { act.reference(x) / x };
    }
    let x = x as f64;
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    (match act {
        Activation::Gelu => {
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            0.5 * (1.0 + crate::kernels::elementwise::erf(x / std::f64::consts::SQRT_2)) + x * pdf
        }
        Activation::Swish => sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x))),
        Activation::QuickGelu => sigmoid(1.702 * x) * (1.0 + 1.702 * x * (1.0 - sigmoid(1.702 * x))),
        Activation::GeluTanh => {
            let a = (2.0 / std::f64::consts::PI).sqrt();
            let u = a * (x + 0.044715 * x.powi(3));
            0.5 * (1.0 + u.tanh()) + 0.5 * x * (1.0 - u.tanh().powi(2)) * a * (1.0 + 3.0 * 0.044715 * x * x)
        }
    }) as f32
}

pub(super) fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    x.iter_mut().for_each(|v| {
        *v = (*v - max).exp();
        sum += *v;
    });
    x.iter_mut().for_each(|v| *v /= sum);
}

/// x += γ ⊙ branch (LayerScale) or x += branch.
pub(super) fn add_scaled(x: &mut [f32], branch: &[f32], gamma: Option<&[f32]>) {
    match gamma {
        Some(g) => x.iter_mut().zip(branch).enumerate().for_each(|(i, (a, b))| *a += g[i % g.len()] * b),
        None => x.iter_mut().zip(branch).for_each(|(a, b)| *a += b),
    }
}

pub(super) fn scaled(x: &[f32], gamma: Option<&[f32]>) -> Vec<f32> {
    match gamma {
        Some(g) => x.iter().enumerate().map(|(i, v)| g[i % g.len()] * v).collect(),
        None => x.to_vec(),
    }
}

/// Part `which` (0: q, 1: k, 2: v) of timm's fused qkv rows [.., 3·D], as rows of D.
pub(super) fn part(qkv: &[f32], d: usize, which: usize) -> Vec<f32> {
    qkv.chunks(3 * d).flat_map(|r| r[which * d..(which + 1) * d].iter().copied()).collect()
}

pub(super) fn set_part(qkv: &mut [f32], d: usize, which: usize, rows: &[f32]) {
    for (r, src) in qkv.chunks_mut(3 * d).zip(rows.chunks(d)) {
        r[which * d..(which + 1) * d].copy_from_slice(src);
    }
}

pub(super) fn half_sum(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(a, b)| 0.5 * (a + b)).collect()
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `f(row index, row)` over the rows of `out` (width `width`), split between the cores.
pub(super) fn par_rows(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = out.len() / width.max(1);
    let per = rows.div_ceil(threads()).max(1);
    std::thread::scope(|scope| {
        for (chunk, part) in out.chunks_mut(per * width).enumerate() {
            let f = &f;
            scope.spawn(move || part.chunks_mut(width).enumerate().for_each(|(r, row)| f(chunk * per + r, row)));
        }
    });
}

/// act(x) for every value of `x`, on every core (a 518-px ViT-S/14's fc1 outputs are 17 M
/// values per block and pass of 8 images).
pub(super) fn activate(act: Activation, x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    let chunk = x.len().div_ceil(threads()).max(1);
    std::thread::scope(|scope| {
        for (o, x) in out.chunks_mut(chunk).zip(x.chunks(chunk)) {
            scope.spawn(move || o.iter_mut().zip(x).for_each(|(o, &v)| *o = act.reference(v)));
        }
    });
    out
}
