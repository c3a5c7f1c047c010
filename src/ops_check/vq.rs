//! Vector quantization: nearest-code search, codebook gather, LFQ bit decoding.

use super::{dims, path_name, random, run_kernel, Case, EXACT};
use crate::gpu::{DType, Tensor};
use crate::kernels::vq::reference::{gather_reference, lfq_decode_reference, normalize_rows, search_reference};
use crate::kernels::vq::{lfq_decode, CodeLayout, Codebook, FactorizedCodebook, Metric};
use crate::Gpu;

const LAYOUTS: [CodeLayout; 2] = [CodeLayout::Storage, CodeLayout::Uniform];

fn layout_name(l: CodeLayout) -> &'static str {
    match l {
        CodeLayout::Storage => "storage codes",
        CodeLayout::Uniform => "uniform codes",
    }
}

pub fn cases(gpu: &Gpu) -> Vec<Case> {
    let path = path_name(gpu);
    let mut cases = Vec::new();
    let (n, k, d) = (67, 301, 7);
    for metric in [Metric::L2, Metric::Cosine] {
        for layout in LAYOUTS {
            // The distances to the chosen codes (a near-tie flipped by rounding changes the
            // index, not the distance).
            let search = Box::new(move |gpu: &Gpu| {
                let (x, codes) = (random(n * d, 121, 1.0), random(k * d, 122, 1.0));
                let book = Codebook::with_layout(gpu, &codes, k, d, metric, layout)?;
                let xt = Tensor::from_f32(gpu, &[n, d], &x)?;
                let idx = Tensor::zeros(gpu, &[n], DType::U32)?;
                let dist = Tensor::zeros(gpu, &[n], DType::F32)?;
                let got = run_kernel(gpu, &dist, |enc| book.search(gpu, enc, &xt, &idx, Some(&dist)))?;
                Ok((got, search_reference(metric, &x, &codes, d).1))
            });
            let variant = format!("{path}, {}", layout_name(layout));
            cases.push(Case::new("vq_search", format!("{n}x{k}x{d} {metric:?}"), variant.clone(), "f32", search));
            let gather = Box::new(move |gpu: &Gpu| {
                let codes = random(k * d, 123, 1.0);
                let ids: Vec<i32> = (0..37).map(|i| (i * 89 + 5) % k as i32).collect();
                let book = Codebook::with_layout(gpu, &codes, k, d, metric, layout)?;
                let ids_t = Tensor::from_i32(gpu, &[37], &ids)?;
                let out = Tensor::zeros(gpu, &[37, d], DType::F32)?;
                let mut check = None;
                let mut got = run_kernel(gpu, &out, |enc| {
                    check = Some(book.gather(gpu, enc, &ids_t, &out)?);
                    Ok(())
                })?;
                got.id_checks.extend(check);
                // Cosine codebooks hold (and return) their normalized rows.
                let rows = if metric == Metric::Cosine { normalize_rows(&codes, d) } else { codes };
                let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
                Ok((got, gather_reference(&rows, d, &ids)))
            });
            cases.push(Case::new("vq_gather", format!("37 of {k}x{d} {metric:?}"), variant, "f32", gather).bound(EXACT, "a copy"));
        }
    }
    let (s, fk, fd) = (3, 129, 6);
    let factorized = Box::new(move |gpu: &Gpu| {
        let (x, data) = (random(45 * s * fd, 124, 1.0), random(s * fk * fd, 125, 1.0));
        let book = FactorizedCodebook::new(gpu, &data, s, fk, fd, Metric::L2)?;
        let xt = Tensor::from_f32(gpu, &[45, s * fd], &x)?;
        let idx = Tensor::zeros(gpu, &[45, s], DType::U32)?;
        let dist = Tensor::zeros(gpu, &[45, s], DType::F32)?;
        let got = run_kernel(gpu, &dist, |enc| book.search(gpu, enc, &xt, &idx, Some(&dist)))?;
        let mut want = vec![0f32; 45 * s];
        for b in 0..s {
            let sub: Vec<f32> = x.chunks(s * fd).flat_map(|r| r[b * fd..(b + 1) * fd].to_vec()).collect();
            let (_, dist_b) = search_reference(Metric::L2, &sub, &data[b * fk * fd..(b + 1) * fk * fd], fd);
            for (i, v) in dist_b.into_iter().enumerate() {
                want[i * s + b] = v;
            }
        }
        Ok((got, want))
    });
    cases.push(Case::new("vq_search factorized", format!("45x{s}x{fk}x{fd} L2"), path.clone(), "f32", factorized));
    let bits = 5;
    let lfq = Box::new(move |gpu: &Gpu| {
        let ids: Vec<u32> = (0..4 * 3).map(|i| (i * 11 + 3) % (1 << bits)).collect();
        let ids_t = Tensor::from_u32(gpu, &[4, 3], &ids)?;
        let out = Tensor::zeros(gpu, &[4, 3 * bits as usize], DType::F32)?;
        let mut check = None;
        let mut got = run_kernel(gpu, &out, |enc| {
            check = Some(lfq_decode(gpu, enc, &ids_t, bits, &out)?);
            Ok(())
        })?;
        got.id_checks.extend(check);
        Ok((got, lfq_decode_reference(&ids, bits)))
    });
    cases.push(Case::new("lfq_decode", format!("{} {bits} bits", dims(&[4, 3])), path, "f32", lfq).bound(EXACT, "signs: exact"));
    cases
}
