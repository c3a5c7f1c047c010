//! Normalizations and softmax.

use super::{dims, path_name, random, run_graph, run_kernel, Case};
use crate::gpu::{DType, Tensor};
use crate::graph::Norm;
use crate::kernels::norm::{reference, softmax, softmax_inplace};
use crate::{Gpu, Result};

fn norm(gpu: &Gpu, c: usize, seed: u64) -> Result<(Norm, Vec<f32>, Vec<f32>)> {
    let (w, b) = (random(c, seed, 1.0), random(c, seed + 1, 0.5));
    let n = Norm { weight: Tensor::from_f32(gpu, &[c], &w)?, bias: Tensor::from_f32(gpu, &[c], &b)? };
    Ok((n, w, b))
}

/// GroupNorm input; `degenerate`: every group a large offset plus tiny noise (a near-constant
/// feature map), where folding the mean into the bias would cancel catastrophically.
fn group_input(shape: [usize; 4], degenerate: bool) -> Vec<f32> {
    let n = shape.iter().product();
    if degenerate {
        random(n, 61, 1e-3).iter().map(|v| 1000.0 + v).collect()
    } else {
        random(n, 62, 3.0)
    }
}

pub fn cases(gpu: &Gpu) -> Vec<Case> {
    let path = path_name(gpu);
    let mut cases = Vec::new();
    // A few long rows (a workgroup per row) and many short ones (a row per lane on CPUs).
    // A mean of 10 (the variance must not cancel) and near-constant rows of 1000 ± 0.001.
    for (shape, near_constant) in [([1, 3, 301], false), ([3, 197, 77], false), ([2, 5, 33], true)] {
        let check = Box::new(move |gpu: &Gpu| {
            let c = shape[2];
            let (n, w, b) = norm(gpu, c, 51)?;
            let (offset, spread) = if near_constant { (1000.0, 1e-3) } else { (10.0, 2.0) };
            let x: Vec<f32> = random(shape.iter().product(), 52, spread).iter().map(|v| v + offset).collect();
            let got = run_graph(gpu, &[(&shape, &x)], |g, v| g.layer_norm("ln", v[0], &n, 1e-6))?;
            Ok((got, reference::layer_norm(&x, &w, &b, 1e-6)))
        });
        let name = format!("{}{}", dims(&shape), if near_constant { " near-constant" } else { "" });
        cases.push(Case::new("layer_norm", name, path.clone(), "f32", check));
    }
    for (shape, groups, swish, degenerate) in
        [([2, 12, 7, 9], 4, false, false), ([2, 12, 7, 9], 4, true, false), ([1, 6, 5, 3], 3, false, true), ([1, 6, 5, 3], 3, true, true)]
    {
        let check = Box::new(move |gpu: &Gpu| {
            let (n, w, b) = norm(gpu, shape[1], 53)?;
            let x = group_input(shape, degenerate);
            let got = run_graph(gpu, &[(&shape, &x)], |g, v| g.group_norm("gn", v[0], &n, groups, 1e-6, swish))?;
            Ok((got, reference::group_norm(&x, shape, groups, &w, &b, 1e-6, swish)))
        });
        let op = if swish { "group_norm+swish" } else { "group_norm" };
        let shape_name = format!("{} g{groups}{}", dims(&shape), if degenerate { " near-constant" } else { "" });
        cases.push(Case::new(op, shape_name, path.clone(), "f32", check));
    }
    for (shape, inplace) in [([2, 3, 197], false), ([1, 5, 1029], false), ([3, 1, 77], true)] {
        let check = Box::new(move |gpu: &Gpu| {
            let c = shape[2];
            let x = random(shape.iter().product(), 55 + c as u64, 8.0);
            let xt = Tensor::from_f32(gpu, &shape, &x)?;
            let got = if inplace {
                run_kernel(gpu, &xt, |enc| softmax_inplace(gpu, enc, &xt))?
            } else {
                let out = Tensor::zeros(gpu, &shape, DType::F32)?;
                run_kernel(gpu, &out, |enc| softmax(gpu, enc, &xt, &out))?
            };
            Ok((got, reference::softmax(&x, c)))
        });
        cases.push(Case::new(if inplace { "softmax_inplace" } else { "softmax" }, dims(&shape), path.clone(), "f32", check));
    }
    cases
}
