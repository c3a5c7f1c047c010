mod common;
use common::*;
use lowbit::gpu::{DType, Tensor};
use lowbit::kernels::vq::reference::{distance, gather_reference, lfq_decode_reference, lfq_encode_reference, normalize_rows, search_reference};
use lowbit::kernels::vq::{check_gather, check_ids, lfq_decode, CodeLayout, Codebook, FactorizedCodebook, Metric};

const LAYOUTS: [CodeLayout; 2] = [CodeLayout::Storage, CodeLayout::Uniform];
use lowbit::{Error, Gpu, GpuOptions};

/// Runs the search and returns (indices, distances).
fn run_search(gpu: &Gpu, book: &Codebook, x: &[f32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let xt = Tensor::from_f32(gpu, &[n, book.d], x).unwrap();
    let idx = Tensor::zeros(gpu, &[n], DType::U32).unwrap();
    let dist = Tensor::zeros(gpu, &[n], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    book.search(gpu, &mut enc, &xt, &idx, Some(&dist)).unwrap();
    gpu.submit(enc).unwrap();
    (idx.to_vec_u32(gpu).unwrap(), dist.to_vec_f32(gpu).unwrap())
}

/// The GPU's pick must be as near as the reference's up to f32 rounding (random data has
/// near-ties whose order rounding may flip), nearly always the same index, and the distances
/// must match to f32 accuracy.
fn assert_search(what: &str, metric: Metric, x: &[f32], codes: &[f32], d: usize, got: &(Vec<u32>, Vec<f32>)) {
    let (want_idx, want_dist) = search_reference(metric, x, codes, d);
    let mut same = 0;
    for (i, row) in x.chunks(d).enumerate() {
        let g = got.0[i] as usize;
        assert!(g < codes.len() / d, "{what}: index {g} out of range");
        let dg = distance(metric, row, &codes[g * d..(g + 1) * d]);
        let dw = want_dist[i] as f64;
        assert!(dg <= dw + 1e-5 * (1.0 + dw), "{what}: vector {i} got code {g} at {dg}, best is {} at {dw}", want_idx[i]);
        same += (got.0[i] == want_idx[i]) as usize;
    }
    assert!(same * 100 >= x.len() / d * 99, "{what}: only {same} of {} indices match", x.len() / d);
    assert_nmse(&format!("{what} distances"), &got.1, &want_dist, F32_NMSE);
}

#[test]
fn search_matches_reference_on_odd_shapes() {
    for (path, gpu) in gpus() {
        for (n, k, d) in [(1, 1, 1), (3, 5, 3), (67, 301, 7), (130, 1029, 33)] {
            let x = random(n * d, (n + k + d) as u64, 1.0);
            let codes = random(k * d, (k * d) as u64, 1.0);
            for (metric, layout) in [Metric::L2, Metric::Cosine].into_iter().flat_map(|m| LAYOUTS.map(|l| (m, l))) {
                let book = Codebook::with_layout(gpu, &codes, k, d, metric, layout).unwrap();
                let got = run_search(gpu, &book, &x, n);
                assert_search(&format!("{metric:?} {layout:?} {n}x{k}x{d} {path}"), metric, &x, &codes, d, &got);
            }
        }
    }
}

#[test]
fn exact_matches_and_ties_pick_the_lowest_index() {
    let gpu = gpu();
    let (k, d) = (50, 5);
    let mut codes = random(k * d, 7, 1.0);
    // Codes 40..50 repeat codes 10..20; code 3 is a scaled copy of code 2 (a cosine tie).
    let copy: Vec<f32> = codes[10 * d..20 * d].to_vec();
    codes[40 * d..].copy_from_slice(&copy);
    for j in 0..d {
        codes[3 * d + j] = codes[2 * d + j] * 2.0;
    }
    // Each x is exactly a code (a duplicated one for rows 0..10).
    let picks: Vec<usize> = (40..50).chain([2, 3, 0, 49]).collect();
    let x: Vec<f32> = picks.iter().flat_map(|&c| codes[c * d..(c + 1) * d].to_vec()).collect();
    let want: Vec<u32> = picks.iter().map(|&c| if c >= 40 { c as u32 - 30 } else { c as u32 }).collect();
    for layout in LAYOUTS {
        let (idx, dist) = run_search(gpu, &Codebook::with_layout(gpu, &codes, k, d, Metric::L2, layout).unwrap(), &x, picks.len());
        assert_eq!(idx, want, "{layout:?}");
        assert!(dist.iter().all(|&v| v < 1e-5), "{dist:?}");
        let book = Codebook::with_layout(gpu, &codes, k, d, Metric::Cosine, layout).unwrap();
        let (idx, _) = run_search(gpu, &book, &x, picks.len());
        assert_eq!(idx[10..12], [2, 2], "{layout:?} cosine: scaled copies tie, lowest index wins");
    }
}

#[test]
fn chunked_codebook_matches_single_binding() {
    let small = GpuOptions { max_binding_size: Some(8192), ..GpuOptions::from_env() };
    let gpu = Gpu::with_options(&small).unwrap();
    let (n, k, d) = (77, 1003, 9);
    let mut x = random(n * d, 11, 1.0);
    let mut codes = random(k * d, 12, 1.0);
    // Code 900 (a later chunk) repeats code 5 and x[0] is that code: the tie spans chunks.
    let c5 = codes[5 * d..6 * d].to_vec();
    codes[900 * d..901 * d].copy_from_slice(&c5);
    x[..d].copy_from_slice(&c5);
    for metric in [Metric::L2, Metric::Cosine] {
        let book = Codebook::with_layout(&gpu, &codes, k, d, metric, CodeLayout::Storage).unwrap();
        assert!(book.num_chunks() >= 5, "{} chunks", book.num_chunks());
        let got = run_search(&gpu, &book, &x, n);
        assert_eq!(got.0[0], 5, "{metric:?}: a tie across chunks goes to the lowest index");
        assert_search(&format!("chunked {metric:?}"), metric, &x, &codes, d, &got);
    }
}

#[test]
fn llamagen_sized_codebook_100k_by_8() {
    let gpu = gpu();
    let (n, k, d) = (300, 100_000, 8);
    let x = random(n * d, 21, 1.0);
    let codes = random(k * d, 22, 1.0);
    for layout in LAYOUTS {
        let book = Codebook::with_layout(gpu, &codes, k, d, Metric::Cosine, layout).unwrap();
        let got = run_search(gpu, &book, &x, n);
        assert_search(&format!("100k x 8 cosine {layout:?}"), Metric::Cosine, &x, &codes, d, &got);
    }
}

#[test]
fn factorized_search_and_lookup() {
    for (path, gpu) in gpus() {
        let (n, s, k, d) = (45, 3, 129, 6);
        let x = random(n * s * d, 31, 1.0);
        let data = random(s * k * d, 32, 1.0);
        let fq = FactorizedCodebook::new(gpu, &data, s, k, d, Metric::L2).unwrap();
        let xt = Tensor::from_f32(gpu, &[n, s * d], &x).unwrap();
        let idx = Tensor::zeros(gpu, &[n, s], DType::U32).unwrap();
        let dist = Tensor::zeros(gpu, &[n, s], DType::F32).unwrap();
        let out = Tensor::zeros(gpu, &[n, s * d], DType::F32).unwrap();
        let mut enc = gpu.encoder();
        fq.search(gpu, &mut enc, &xt, &idx, Some(&dist)).unwrap();
        let check = fq.gather(gpu, &mut enc, &idx, &out).unwrap();
        gpu.submit(enc).unwrap();
        check.check(gpu).unwrap();
        let (gi, gd) = (idx.to_vec_u32(gpu).unwrap(), dist.to_vec_f32(gpu).unwrap());
        let mut want_lookup = vec![0f32; n * s * d];
        for b in 0..s {
            let sub_x: Vec<f32> = x.chunks(s * d).flat_map(|r| r[b * d..(b + 1) * d].to_vec()).collect();
            let book = &data[b * k * d..(b + 1) * k * d];
            let got_b: (Vec<u32>, Vec<f32>) = (0..n).map(|i| (gi[i * s + b], gd[i * s + b])).unzip();
            assert_search(&format!("factorized book {b} {path}"), Metric::L2, &sub_x, book, d, &got_b);
            for i in 0..n {
                let row = gather_reference(book, d, &[got_b.0[i]]);
                want_lookup[i * s * d + b * d..][..d].copy_from_slice(&row);
            }
        }
        assert_nmse(&format!("factorized lookup {path}"), &out.to_vec_f32(gpu).unwrap(), &want_lookup, 0.0);
    }
}

#[test]
fn gather_by_u32_and_i32_ids() {
    for (path, gpu) in gpus() {
        let (k, d) = (1000, 13);
        let codes = random(k * d, 41, 1.0);
        let ids: Vec<u32> = (0..37).map(|i| (i * 389 + 5) % k as u32).collect();
        for (metric, layout) in [Metric::L2, Metric::Cosine].into_iter().flat_map(|m| LAYOUTS.map(|l| (m, l))) {
            let book = Codebook::with_layout(gpu, &codes, k, d, metric, layout).unwrap();
            let rows = if metric == Metric::Cosine { normalize_rows(&codes, d) } else { codes.clone() };
            let want = gather_reference(&rows, d, &ids);
            let ids_u = Tensor::from_u32(gpu, &[37], &ids).unwrap();
            let ids_i = Tensor::from_i32(gpu, &[37], &ids.iter().map(|&v| v as i32).collect::<Vec<_>>()).unwrap();
            for ids_t in [ids_u, ids_i] {
                let out = Tensor::zeros(gpu, &[37, d], DType::F32).unwrap();
                let mut enc = gpu.encoder();
                let check = book.gather(gpu, &mut enc, &ids_t, &out).unwrap();
                gpu.submit(enc).unwrap();
                check_gather(gpu, &check).unwrap();
                assert_nmse(&format!("gather {metric:?} {layout:?} {:?} {path}", ids_t.dtype), &out.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
            }
            let out = Tensor::zeros(gpu, &[37, d], DType::F32).unwrap();
            let mut enc = gpu.encoder();
            book.gather_host(gpu, &mut enc, &ids, &out).unwrap();
            gpu.submit(enc).unwrap();
            assert_nmse(&format!("gather_host {metric:?} {layout:?} {path}"), &out.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
        }
    }
}

#[test]
fn gather_from_a_chunked_codebook() {
    let gpu = Gpu::with_options(&GpuOptions { max_binding_size: Some(4096), ..GpuOptions::from_env() }).unwrap();
    let (k, d) = (500, 5);
    let codes = random(k * d, 51, 1.0);
    let book = Codebook::with_layout(&gpu, &codes, k, d, Metric::L2, CodeLayout::Storage).unwrap();
    assert!(book.num_chunks() >= 3, "{} chunks", book.num_chunks());
    let ids: Vec<u32> = (0..150).map(|i| (i * 7) % k as u32).collect();
    let ids_t = Tensor::from_u32(&gpu, &[10, 15], &ids).unwrap();
    let out = Tensor::zeros(&gpu, &[10, 15, d], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    let check = book.gather(&gpu, &mut enc, &ids_t, &out).unwrap();
    gpu.submit(enc).unwrap();
    check.check(&gpu).unwrap();
    assert_nmse("chunked gather", &out.to_vec_f32(&gpu).unwrap(), &gather_reference(&codes, d, &ids), 0.0);
}

#[test]
fn out_of_range_ids_are_reported() {
    let gpu = gpu();
    let (k, d) = (16384, 4);
    let book = Codebook::new(gpu, &random(k * d, 61, 1.0), k, d, Metric::L2).unwrap();
    let mut ids: Vec<u32> = (0..20).collect();
    ids[12] = 70000;
    ids[15] = 80000;
    let t = Tensor::from_u32(gpu, &[20], &ids).unwrap();
    let out = Tensor::zeros(gpu, &[20, d], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    let check = book.gather(gpu, &mut enc, &t, &out).unwrap();
    gpu.submit(enc).unwrap();
    let msg = check_gather(gpu, &check).unwrap_err().to_string();
    assert!(msg.contains("token id 70000 at position 12 is outside the codebook of 16384 entries"), "{msg}");
    assert!(out.to_vec_f32(gpu).unwrap()[12 * d..13 * d].iter().all(|&v| v == 0.0), "bad ids give zero rows");

    let neg = Tensor::from_i32(gpu, &[3], &[1, -3, 2]).unwrap();
    let out = Tensor::zeros(gpu, &[3, d], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    let check = book.gather(gpu, &mut enc, &neg, &out).unwrap();
    gpu.submit(enc).unwrap();
    let msg = check.check(gpu).unwrap_err().to_string();
    assert!(msg.contains("token id -3 at position 1"), "{msg}");

    // Ids known on the CPU are refused before anything runs.
    let mut enc = gpu.encoder();
    let err = book.gather_host(gpu, &mut enc, &ids, &Tensor::zeros(gpu, &[20, d], DType::F32).unwrap()).unwrap_err();
    assert!(matches!(err, Error::Invalid(ref m) if m.contains("70000 at position 12")), "{err}");
    assert!(check_ids(&[0i32, -1], k).is_err());
    assert!(check_ids(&[0usize, 16383], k).is_ok());
}

#[test]
fn lfq_decode_matches_reference_and_round_trips() {
    for (path, gpu) in gpus() {
        let (n, g, bits) = (23, 3, 7);
        let x = random(n * g * bits as usize, 71, 1.0);
        let ids = lfq_encode_reference(&x, bits);
        assert!(ids.iter().all(|&i| i < 1 << bits));
        let t = Tensor::from_u32(gpu, &[n, g], &ids).unwrap();
        let out = Tensor::zeros(gpu, &[n, g * bits as usize], DType::F32).unwrap();
        let mut enc = gpu.encoder();
        let check = lfq_decode(gpu, &mut enc, &t, bits, &out).unwrap();
        gpu.submit(enc).unwrap();
        check.check(gpu).unwrap();
        let got = out.to_vec_f32(gpu).unwrap();
        assert_eq!(got, lfq_decode_reference(&ids, bits), "{path}");
        // Decoding the encoded signs gives back the signs.
        let signs: Vec<f32> = x.iter().map(|&v| if v > 0.0 { 1.0 } else { -1.0 }).collect();
        assert_eq!(got, signs, "{path}");
    }
    let gpu = gpu();
    let t = Tensor::from_u32(gpu, &[2, 2], &[1, 2, 300, 4]).unwrap();
    let out = Tensor::zeros(gpu, &[2, 16], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    let check = lfq_decode(gpu, &mut enc, &t, 8, &out).unwrap();
    gpu.submit(enc).unwrap();
    let msg = check.check(gpu).unwrap_err().to_string();
    assert!(msg.contains("token id 300 at position 2 is outside the codebook of 256 entries"), "{msg}");
}

#[test]
fn bad_inputs_are_errors() {
    let gpu = gpu();
    assert!(Codebook::new(gpu, &[], 0, 4, Metric::L2).is_err());
    assert!(Codebook::new(gpu, &[1.0; 7], 2, 4, Metric::L2).is_err());
    assert!(FactorizedCodebook::new(gpu, &[1.0; 20], 3, 2, 4, Metric::L2).is_err());
    assert!(FactorizedCodebook::new(gpu, &[], 3, 0, 4, Metric::L2).is_err());
    let book = Codebook::new(gpu, &random(40, 1, 1.0), 10, 4, Metric::L2).unwrap();
    let mut enc = gpu.encoder();
    let x = Tensor::zeros(gpu, &[5, 3], DType::F32).unwrap();
    let idx = Tensor::zeros(gpu, &[5], DType::U32).unwrap();
    assert!(matches!(book.search(gpu, &mut enc, &x, &idx, None), Err(Error::Shape(_))), "wrong D");
    let x = Tensor::zeros(gpu, &[5, 4], DType::F32).unwrap();
    assert!(book.search(gpu, &mut enc, &x, &Tensor::zeros(gpu, &[6], DType::U32).unwrap(), None).is_err(), "wrong N");
    assert!(book.search(gpu, &mut enc, &x, &Tensor::zeros(gpu, &[5], DType::F32).unwrap(), None).is_err(), "f32 indices");
    let ids_f = Tensor::zeros(gpu, &[5], DType::F32).unwrap();
    assert!(book.gather(gpu, &mut enc, &ids_f, &Tensor::zeros(gpu, &[5, 4], DType::F32).unwrap()).is_err(), "f32 ids");
    assert!(book.gather(gpu, &mut enc, &idx, &Tensor::zeros(gpu, &[5, 3], DType::F32).unwrap()).is_err(), "wrong out");
    assert!(lfq_decode(gpu, &mut enc, &idx, 0, &Tensor::zeros(gpu, &[5], DType::F32).unwrap()).is_err(), "0 bits");
    assert!(lfq_decode(gpu, &mut enc, &idx, 4, &Tensor::zeros(gpu, &[5, 3], DType::F32).unwrap()).is_err(), "wrong out");
    let scalar = Tensor::from_u32(gpu, &[], &[1]).unwrap();
    assert!(lfq_decode(gpu, &mut enc, &scalar, 4, &Tensor::zeros(gpu, &[4], DType::F32).unwrap()).is_err(), "no group dim");
    let fq = FactorizedCodebook::new(gpu, &random(2 * 10 * 4, 3, 1.0), 2, 10, 4, Metric::L2).unwrap();
    assert!(fq.gather(gpu, &mut enc, &scalar, &Tensor::zeros(gpu, &[8], DType::F32).unwrap()).is_err(), "no S dim");
    let x = Tensor::zeros(gpu, &[5, 7], DType::F32).unwrap();
    assert!(fq.search(gpu, &mut enc, &x, &Tensor::zeros(gpu, &[5, 2], DType::U32).unwrap(), None).is_err(), "wrong S*d");
}

#[test]
fn quick_bench_cases_run() {
    let gpu = gpu();
    let mut cases = lowbit::kernels::vq::bench_cases(gpu, lowbit::kernels::BenchSize::Quick).unwrap();
    assert_eq!(cases.len(), 2);
    let mut enc = gpu.encoder();
    for case in &mut cases {
        assert!(case.flops > 0 && case.bytes > 0);
        (case.step)(gpu, &mut enc).unwrap();
    }
    gpu.submit(enc).unwrap();
    gpu.wait().unwrap();
}
