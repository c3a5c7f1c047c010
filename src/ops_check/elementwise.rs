//! Element-wise ops, static activation quantizers and the models' layout glue.

use super::{dims, path_name, random, run_graph, run_kernel, Case, EXACT};
use crate::gpu::{DType, Tensor};
use crate::kernels::act_quant::{act_quant_noise, example_inputs, example_quantizers, noise_reference, ActQuantizer};
use crate::kernels::elementwise::{upsample_reference, Activation};
use crate::models::vit::glue::{self, embed_tokens, layer_scale_add, take_token};
use crate::models::vqgan::glue::{tokens_to_nchw, tokens_to_nchw_reference};
use crate::Gpu;

pub fn cases(gpu: &Gpu) -> Vec<Case> {
    let path = path_name(gpu);
    let mut cases = Vec::new();
    let n = 1003;
    for act in [Activation::Gelu, Activation::Swish] {
        let check = Box::new(move |gpu: &Gpu| {
            let x = random(n, 71, 6.0);
            let got = run_graph(gpu, &[(&[n], &x)], |g, v| Ok(g.activation("act", v[0], act)))?;
            Ok((got, x.iter().map(|&v| act.reference(v)).collect()))
        });
        let op = if act == Activation::Gelu { "gelu" } else { "swish" };
        cases.push(Case::new(op, n.to_string(), path.clone(), "f32", check));
    }
    let check = Box::new(move |gpu: &Gpu| {
        let (x, y) = (random(n, 72, 2.0), random(n, 73, 2.0));
        let got = run_graph(gpu, &[(&[n], &x), (&[n], &y)], |g, v| g.add("add", v[0], v[1]))?;
        // One f32 addition on both sides: the same bits.
        Ok((got, x.iter().zip(&y).map(|(a, b)| a + b).collect()))
    });
    cases.push(Case::new("add", n.to_string(), path.clone(), "f32", check).bound(EXACT, "one f32 addition: exact"));
    let shape = [2, 3, 5, 7];
    let check = Box::new(move |gpu: &Gpu| {
        let x = random(shape.iter().product(), 74, 1.0);
        let got = run_graph(gpu, &[(&shape, &x)], |g, v| g.upsample2x("up", v[0]))?;
        Ok((got, upsample_reference(&x, shape)))
    });
    cases.push(Case::new("upsample2x", dims(&shape), path.clone(), "f32", check).bound(EXACT, "a copy"));

    // Odd lengths: one value, rows of 257 (noise per column), a length past a workgroup.
    for (k, q) in example_quantizers().into_iter().enumerate() {
        for (rows_shape, noise) in [([1, 1], false), ([3, 257], false), ([1, 4099], false), ([3, 257], true)] {
            let check = Box::new(move |gpu: &Gpu| {
                let cols = rows_shape[1];
                let x = example_inputs(rows_shape[0] * cols, 75 + k as u64);
                let noise_v = random(cols, 76, 0.01);
                let noise_t = if noise { Some(Tensor::from_f32(gpu, &[cols], &noise_v)?) } else { None };
                let got = run_graph(gpu, &[(&rows_shape, &x)], |g, v| g.act_quant("aq", v[0], q, noise_t))?;
                let want = if noise { noise_reference(&x, &noise_v, &q) } else { q.reference(&x) };
                Ok((got, want))
            });
            let op = if noise { "act_quant+noise" } else { "act_quant" };
            cases.push(Case::new(op, dims(&rows_shape), path.clone(), format!("{} {}b", q.kind(), q.bits()), check));
        }
    }
    // act_quant_noise as a kernel call too (NoisyQuant's entry point outside graphs).
    let check = Box::new(move |gpu: &Gpu| {
        let q = ActQuantizer::Uniform { bits: 6, scale: 0.05, zero: 31.0 };
        let (x, noise) = (example_inputs(5 * 33, 77), random(33, 78, 0.02));
        let (xt, nt) = (Tensor::from_f32(gpu, &[5, 33], &x)?, Tensor::from_f32(gpu, &[33], &noise)?);
        let got = run_kernel(gpu, &xt, |enc| act_quant_noise(gpu, enc, &xt, &nt, &q))?;
        Ok((got, noise_reference(&x, &noise, &q)))
    });
    cases.push(Case::new("act_quant_noise", "5x33", path.clone(), "uniform 6b", check));
    cases.extend(glue_cases(&path));
    cases
}

/// The ViT and VQGAN glue kernels: copies and single f32 operations, so exact.
fn glue_cases(path: &str) -> Vec<Case> {
    let (b, p, d) = (2, 7, 13);
    let embed = Box::new(move |gpu: &Gpu| {
        let (patches, cls, pos) = (random(b * p * d, 81, 1.0), random(d, 82, 1.0), random((p + 1) * d, 83, 1.0));
        let t = |s: &[usize], v: &[f32]| Tensor::from_f32(gpu, s, v);
        let (pt, ct, qt) = (t(&[b, p, d], &patches)?, t(&[d], &cls)?, t(&[p + 1, d], &pos)?);
        let out = Tensor::zeros(gpu, &[b, p + 1, d], DType::F32)?;
        let got = run_kernel(gpu, &out, |enc| embed_tokens(gpu, enc, &pt, &ct, &qt, &out))?;
        Ok((got, glue::reference::embed_tokens(&patches, b, p, d, &cls, &pos)))
    });
    let scale_add = Box::new(move |gpu: &Gpu| {
        let (res, x, gamma) = (random(b * p * d, 84, 1.0), random(b * p * d, 85, 1.0), random(d, 86, 0.1));
        let rt = Tensor::from_f32(gpu, &[b, p, d], &res)?;
        let (xt, gt) = (Tensor::from_f32(gpu, &[b, p, d], &x)?, Tensor::from_f32(gpu, &[d], &gamma)?);
        let got = run_kernel(gpu, &rt, |enc| layer_scale_add(gpu, enc, &rt, &xt, &gt))?;
        Ok((got, glue::reference::layer_scale_add(&res, &x, &gamma)))
    });
    let take = Box::new(move |gpu: &Gpu| {
        let x = random(b * p * d, 87, 1.0);
        let (xt, out) = (Tensor::from_f32(gpu, &[b, p, d], &x)?, Tensor::zeros(gpu, &[b, d], DType::F32)?);
        let got = run_kernel(gpu, &out, |enc| take_token(gpu, enc, &xt, &out))?;
        Ok((got, glue::reference::take_token(&x, b, p, d)))
    });
    let (h, w, c) = (3, 5, 7);
    let nchw = Box::new(move |gpu: &Gpu| {
        let x = random(b * h * w * c, 88, 1.0);
        let xt = Tensor::from_f32(gpu, &[b, h * w, c], &x)?;
        let out = Tensor::zeros(gpu, &[b, c, h, w], DType::F32)?;
        let got = run_kernel(gpu, &out, |enc| tokens_to_nchw(gpu, enc, &xt, &out, false))?;
        Ok((got, tokens_to_nchw_reference(&x, b, h * w, c)))
    });
    vec![
        Case::new("embed_tokens", dims(&[b, p, d]), path, "f32", embed).bound(EXACT, "one f32 addition per element: exact"),
        // gamma·x + r may fuse into an FMA on the GPU (one rounding instead of two).
        Case::new("layer_scale_add", dims(&[b, p, d]), path, "f32", scale_add),
        Case::new("take_token", dims(&[b, p, d]), path, "f32", take).bound(EXACT, "a copy"),
        Case::new("tokens_to_nchw", dims(&[b, h * w, c]), path, "f32", nchw).bound(EXACT, "a copy"),
    ]
}
