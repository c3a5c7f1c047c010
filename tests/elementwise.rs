mod common;
use common::*;
use lowbit::gpu::{DType, Tensor};
use lowbit::kernels::elementwise::{activate, add_inplace, upsample_nearest2x, upsample_reference, Activation};

#[test]
fn activations_match_reference() {
    for (path, gpu) in gpus() {
        for n in [1, 255, 257, 70_001] {
            let x = random(n, n as u64, 6.0);
            for act in [Activation::Gelu, Activation::Swish, Activation::QuickGelu, Activation::GeluTanh] {
                let xt = Tensor::from_f32(gpu, &[n], &x).unwrap();
                let out = Tensor::zeros(gpu, &[n], DType::F32).unwrap();
                let mut enc = gpu.encoder();
                activate(gpu, &mut enc, act, &xt, &out).unwrap();
                gpu.submit(enc).unwrap();
                let want: Vec<f32> = x.iter().map(|&v| act.reference(v)).collect();
                assert_nmse(&format!("{act:?} n={n} {path}"), &out.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
            }
        }
    }
}

#[test]
fn residual_add() {
    let gpu = gpu();
    let n = 1000;
    let (a, b) = (random(n, 1, 1.0), random(n, 2, 1.0));
    let at = Tensor::from_f32(gpu, &[10, 100], &a).unwrap();
    let bt = Tensor::from_f32(gpu, &[10, 100], &b).unwrap();
    let mut enc = gpu.encoder();
    add_inplace(gpu, &mut enc, &at, &bt).unwrap();
    gpu.submit(enc).unwrap();
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_nmse("add", &at.to_vec_f32(gpu).unwrap(), &want, F32_NMSE);
}

#[test]
fn mismatched_sizes_are_errors() {
    let gpu = gpu();
    let a = Tensor::zeros(gpu, &[10], DType::F32).unwrap();
    let b = Tensor::zeros(gpu, &[11], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    assert!(add_inplace(gpu, &mut enc, &a, &b).is_err());
    assert!(Tensor::zeros(gpu, &[0, 3], DType::F32).is_err());
    assert!(Tensor::from_f32(gpu, &[2, 2], &[1.0; 3]).is_err());
}

#[test]
fn upsample_matches_reference() {
    for (path, gpu) in gpus() {
        for shape in [[1, 1, 1, 1], [2, 3, 5, 7], [1, 16, 33, 17]] {
            let [b, c, h, w] = shape;
            let x = random(b * c * h * w, 5, 1.0);
            let xt = Tensor::from_f32(gpu, &shape, &x).unwrap();
            let out = Tensor::zeros(gpu, &[b, c, 2 * h, 2 * w], DType::F32).unwrap();
            let mut enc = gpu.encoder();
            upsample_nearest2x(gpu, &mut enc, &xt, &out).unwrap();
            gpu.submit(enc).unwrap();
            let got = out.to_vec_f32(gpu).unwrap();
            // A copy: exact.
            assert_eq!(got, upsample_reference(&x, shape), "upsample {shape:?} {path}");
        }
    }
    let gpu = gpu();
    let x = Tensor::zeros(gpu, &[1, 2, 3, 4], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    assert!(upsample_nearest2x(gpu, &mut enc, &x, &Tensor::zeros(gpu, &[1, 2, 6, 7], DType::F32).unwrap()).is_err());
    assert!(upsample_nearest2x(gpu, &mut enc, &x.reshape(&[2, 3, 4]).unwrap(), &x).is_err());
}
