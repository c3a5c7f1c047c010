mod common;
use common::*;
use lowbit::gpu::{DType, Tensor};
use lowbit::kernels::norm::{group_norm, layer_norm, reference, softmax, softmax_inplace};
use lowbit::Gpu;

fn run(gpu: &Gpu, f: impl FnOnce(&mut lowbit::Encoder) -> lowbit::Result<()>) {
    let mut enc = gpu.encoder();
    f(&mut enc).unwrap();
    gpu.submit(enc).unwrap();
}

#[test]
fn layer_norm_matches_reference() {
    for (path, gpu) in gpus() {
        for (rows, c) in [(1, 1), (3, 7), (197, 768), (5, 1000)] {
            // An offset mean checks the two-pass variance.
            let x: Vec<f32> = random(rows * c, 11, 3.0).iter().map(|v| v + 20.0).collect();
            let (w, b) = (random(c, 12, 1.0), random(c, 13, 0.5));
            let xt = Tensor::from_f32(gpu, &[rows, c], &x).unwrap();
            let wt = Tensor::from_f32(gpu, &[c], &w).unwrap();
            let bt = Tensor::from_f32(gpu, &[c], &b).unwrap();
            let out = Tensor::zeros(gpu, &[rows, c], DType::F32).unwrap();
            run(gpu, |enc| layer_norm(gpu, enc, &xt, &wt, &bt, 1e-6, &out));
            let want = reference::layer_norm(&x, &w, &b, 1e-6);
            assert_nmse(&format!("layer_norm {rows}x{c} {path}"), &out.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
        }
    }
}

#[test]
fn group_norm_matches_reference() {
    for (path, gpu) in gpus() {
        for (shape, groups) in [([1, 32, 1, 1], 32), ([2, 64, 9, 7], 32), ([1, 96, 17, 13], 32), ([3, 6, 5, 3], 3)] {
            let n: usize = shape.iter().product();
            let c = shape[1];
            let x = random(n, 21, 2.0);
            let (w, b) = (random(c, 22, 1.0), random(c, 23, 0.5));
            let xt = Tensor::from_f32(gpu, &shape, &x).unwrap();
            let wt = Tensor::from_f32(gpu, &[c], &w).unwrap();
            let bt = Tensor::from_f32(gpu, &[c], &b).unwrap();
            for swish in [false, true] {
                let out = Tensor::zeros(gpu, &shape, DType::F32).unwrap();
                run(gpu, |enc| group_norm(gpu, enc, &xt, groups, &wt, &bt, 1e-6, &out, swish));
                let want = reference::group_norm(&x, shape, groups, &w, &b, 1e-6, swish);
                assert_nmse(&format!("group_norm {shape:?}/{groups} swish={swish} {path}"), &out.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
            }
        }
    }
}

#[test]
fn softmax_matches_reference() {
    for (path, gpu) in gpus() {
        for (rows, c) in [(1, 1), (4, 3), (197, 197), (7, 1500)] {
            let x = random(rows * c, 31, 30.0);
            let want = reference::softmax(&x, c);
            let xt = Tensor::from_f32(gpu, &[rows, c], &x).unwrap();
            let out = Tensor::zeros(gpu, &[rows, c], DType::F32).unwrap();
            run(gpu, |enc| softmax(gpu, enc, &xt, &out));
            assert_nmse(&format!("softmax {rows}x{c} {path}"), &out.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
            run(gpu, |enc| softmax_inplace(gpu, enc, &xt));
            assert_nmse(&format!("softmax_inplace {rows}x{c} {path}"), &xt.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
            // softmax(x, x) takes the in-place path too.
            let again = Tensor::from_f32(gpu, &[rows, c], &x).unwrap();
            run(gpu, |enc| softmax(gpu, enc, &again, &again));
            assert_nmse(&format!("softmax(x, x) {rows}x{c} {path}"), &again.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
        }
    }
}

#[test]
fn bad_input_is_an_error() {
    let gpu = gpu();
    let mut enc = gpu.encoder();
    let x = Tensor::zeros(gpu, &[2, 48, 4, 4], DType::F32).unwrap();
    let c48 = Tensor::zeros(gpu, &[48], DType::F32).unwrap();
    let c8 = Tensor::zeros(gpu, &[8], DType::F32).unwrap();
    let out = Tensor::zeros(gpu, &[2, 48, 4, 4], DType::F32).unwrap();
    // 48 channels do not split into 32 groups.
    assert!(group_norm(gpu, &mut enc, &x, 32, &c48, &c48, 1e-6, &out, false).is_err());
    assert!(group_norm(gpu, &mut enc, &x, 0, &c48, &c48, 1e-6, &out, false).is_err());
    assert!(group_norm(gpu, &mut enc, &x, 16, &c8, &c48, 1e-6, &out, false).is_err());
    assert!(group_norm(gpu, &mut enc, &x.reshape(&[96, 16]).unwrap(), 16, &c48, &c48, 1e-6, &out, false).is_err());
    let rows = Tensor::zeros(gpu, &[3, 8], DType::F32).unwrap();
    let rows_out = Tensor::zeros(gpu, &[3, 9], DType::F32).unwrap();
    assert!(layer_norm(gpu, &mut enc, &rows, &c8, &c48, 1e-6, &rows).is_err());
    assert!(layer_norm(gpu, &mut enc, &rows, &c8, &c8, 1e-6, &rows_out).is_err());
    assert!(layer_norm(gpu, &mut enc, &rows, &c8, &c8, 0.0, &rows).is_err());
    assert!(layer_norm(gpu, &mut enc, &rows, &c8, &c8, 1e-6, &rows).is_err(), "in place");
    assert!(softmax(gpu, &mut enc, &rows, &rows_out).is_err());
    let ids = Tensor::from_u32(gpu, &[3, 8], &[0; 24]).unwrap();
    assert!(softmax_inplace(gpu, &mut enc, &ids).is_err());
}
