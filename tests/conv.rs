mod common;
use common::*;
use lowbit::gpu::{DType, Tensor};
use lowbit::kernels::conv::{conv2d, conv2d_reference, conv2d_reference_padded, patch_embed, to_tokens, Conv2d, Padding};
use lowbit::formats::{PackedMatrix, WeightFormat};
use lowbit::{Gpu, GpuOptions};

struct Case {
    shape: [usize; 4],
    cout: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
}

/// Runs one conv on the GPU and compares with the f64 reference on the dequantized weights.
fn check(gpu: &Gpu, label: &str, c: &Case, fmt: WeightFormat, bound: f64) {
    check_padded(gpu, label, c, Padding::same(c.pad), fmt, bound);
}

/// `check` with `padding` instead of `c.pad` on every side.
fn check_padded(gpu: &Gpu, label: &str, c: &Case, padding: Padding, fmt: WeightFormat, bound: f64) {
    let [b, cin, h, w] = c.shape;
    let cols = cin * c.kernel * c.kernel;
    let x = random(b * cin * h * w, 1 + cols as u64, 1.0);
    let wt = random(c.cout * cols, 2 + c.cout as u64, 0.3);
    let bias = random(c.cout, 3, 0.5);
    let packed = PackedMatrix::quantize(&wt, c.cout, cols, fmt).unwrap();
    let conv = Conv2d::with_padding(gpu, &packed, Some(&bias), (c.kernel, c.kernel), c.stride, padding).unwrap();
    let (ho, wo) = conv.output_size(h, w).unwrap();
    let xt = Tensor::from_f32(gpu, &c.shape, &x).unwrap();
    let out = Tensor::zeros(gpu, &[b, c.cout, ho, wo], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    conv2d(gpu, &mut enc, &xt, &conv, &out).unwrap();
    gpu.submit(enc).unwrap();
    let want = conv2d_reference_padded(&x, c.shape, &packed.dequantize(), &bias, (c.kernel, c.kernel), c.stride, padding);
    let what = format!("conv {:?} {}->{} k{} s{} {padding:?} {} {label}", c.shape, cin, c.cout, c.kernel, c.stride, fmt.name());
    assert_nmse(&what, &out.to_vec_f32(gpu).unwrap(), &want, bound);
}

fn bound(fmt: WeightFormat) -> f64 {
    if fmt == WeightFormat::F32 { F32_NMSE } else { QUANT_NMSE }
}

#[test]
fn geometries_match_reference() {
    let cases = [
        Case { shape: [2, 5, 9, 7], cout: 11, kernel: 3, stride: 1, pad: 1 },
        Case { shape: [1, 6, 13, 11], cout: 9, kernel: 3, stride: 2, pad: 1 },
        Case { shape: [2, 7, 5, 6], cout: 13, kernel: 1, stride: 1, pad: 0 },
        Case { shape: [1, 4, 9, 9], cout: 3, kernel: 1, stride: 2, pad: 0 },
        Case { shape: [1, 3, 4, 3], cout: 2, kernel: 3, stride: 1, pad: 0 },
        Case { shape: [1, 1, 1, 1], cout: 1, kernel: 1, stride: 1, pad: 0 },
    ];
    for (path, gpu) in all_plans() {
        for c in &cases {
            check(gpu, path, c, WeightFormat::F32, F32_NMSE);
        }
    }
}

#[test]
fn every_weight_format() {
    // Cin·9 = 288: several scale groups per row and a partial last word for some formats.
    let c = Case { shape: [1, 32, 7, 10], cout: 10, kernel: 3, stride: 1, pad: 1 };
    let odd = Case { shape: [1, 5, 6, 5], cout: 7, kernel: 3, stride: 2, pad: 1 };
    for (path, gpu) in all_plans() {
        for fmt in WeightFormat::all() {
            check(gpu, path, &c, fmt, bound(fmt));
            // 45 columns: a partial last scale group and a partial last word.
            check(gpu, path, &odd, fmt, bound(fmt));
        }
    }
}

#[test]
fn asymmetric_padding_as_taming_downsample() {
    // taming's Downsample: F.pad(x, (0, 1, 0, 1)) then a 3×3 stride-2 conv without padding.
    let downsample = Padding { top: 0, left: 0, bottom: 1, right: 1 };
    let q4 = WeightFormat::Q4 { group: 32, zero_point: true };
    for (path, gpu) in all_plans() {
        // Even sizes halve exactly; odd ones floor like PyTorch ((h + 1 - 3) / 2 + 1).
        for shape in [[2, 6, 8, 8], [1, 5, 9, 7], [1, 3, 16, 10], [1, 4, 3, 4]] {
            let c = Case { shape, cout: 11, kernel: 3, stride: 2, pad: 0 };
            for fmt in [WeightFormat::F32, q4] {
                check_padded(gpu, path, &c, downsample, fmt, bound(fmt));
            }
        }
        // Padding on the top/left only, and different amounts per side.
        let c = Case { shape: [1, 3, 7, 6], cout: 5, kernel: 3, stride: 1, pad: 0 };
        check_padded(gpu, path, &c, Padding { top: 2, left: 1, bottom: 0, right: 3 }, WeightFormat::F32, F32_NMSE);
    }
    // The output size follows PyTorch: 8×8 → 4×4, 9×7 → 4×3.
    let w = PackedMatrix::quantize(&random(4 * 27, 1, 1.0), 4, 27, WeightFormat::F32).unwrap();
    let conv = Conv2d::with_padding(gpu(), &w, None, (3, 3), 2, downsample).unwrap();
    assert_eq!(conv.output_size(8, 8).unwrap(), (4, 4));
    assert_eq!(conv.output_size(9, 7).unwrap(), (4, 3));
    assert!(conv.output_size(1, 1).is_err(), "2×2 padded input under a 3×3 kernel");
}

#[test]
fn weights_split_over_bindings() {
    // 1 KiB bindings split the weights into parts of whole 8-channel tiles: 864 bytes a tile
    // for f32 with 3 input channels (one tile a part), 288 for q4 with 8 (three a part).
    let gpu = Gpu::with_options(&GpuOptions { max_binding_size: Some(1024), ..GpuOptions::from_env() }).unwrap();
    for (cin, fmt) in [(3, WeightFormat::F32), (8, WeightFormat::Q4 { group: 32, zero_point: true }), (8, WeightFormat::Q8 { group: None })] {
        let c = Case { shape: [1, cin, 2, 3], cout: 37, kernel: 3, stride: 1, pad: 1 };
        check(&gpu, "split", &c, fmt, bound(fmt));
    }
}

#[test]
fn patch_embed_writes_tokens() {
    for (path, gpu) in all_plans() {
        let (b, h, w, p, d) = (2, 32, 48, 16, 21);
        let cols = 3 * p * p;
        let img = random(b * 3 * h * w, 7, 1.0);
        let wt = random(d * cols, 8, 0.1);
        let bias = random(d, 9, 0.5);
        for fmt in [WeightFormat::F32, WeightFormat::Q8 { group: Some(32) }] {
            let packed = PackedMatrix::quantize(&wt, d, cols, fmt).unwrap();
            let conv = Conv2d::new(gpu, &packed, Some(&bias), (p, p), p, 0).unwrap();
            let it = Tensor::from_f32(gpu, &[b, 3, h, w], &img).unwrap();
            let tokens = (h / p) * (w / p);
            let out = Tensor::zeros(gpu, &[b, tokens, d], DType::F32).unwrap();
            let mut enc = gpu.encoder();
            patch_embed(gpu, &mut enc, &it, &conv, &out).unwrap();
            gpu.submit(enc).unwrap();
            let nchw = conv2d_reference(&img, [b, 3, h, w], &packed.dequantize(), &bias, (p, p), p, 0);
            let want = to_tokens(&nchw, b, d, tokens);
            assert_nmse(&format!("patch_embed {} {path}", fmt.name()), &out.to_vec_f32(gpu).unwrap(), &want, bound(fmt));
        }
    }
}

#[test]
fn bad_input_is_an_error() {
    let gpu = gpu();
    let w = PackedMatrix::quantize(&random(4 * 27, 1, 1.0), 4, 27, WeightFormat::F32).unwrap();
    assert!(Conv2d::new(gpu, &w, Some(&[0.0; 3]), (3, 3), 1, 1).is_err(), "bias length");
    assert!(Conv2d::new(gpu, &w, None, (2, 2), 1, 1).is_err(), "27 columns is not Cin·2·2");
    assert!(Conv2d::new(gpu, &w, None, (3, 3), 0, 1).is_err(), "stride 0");
    let conv = Conv2d::new(gpu, &w, None, (3, 3), 1, 1).unwrap();
    let mut enc = gpu.encoder();
    let x = Tensor::zeros(gpu, &[1, 3, 8, 8], DType::F32).unwrap();
    let out = Tensor::zeros(gpu, &[1, 4, 8, 8], DType::F32).unwrap();
    assert!(conv2d(gpu, &mut enc, &x, &conv, &Tensor::zeros(gpu, &[1, 4, 8, 7], DType::F32).unwrap()).is_err());
    assert!(conv2d(gpu, &mut enc, &Tensor::zeros(gpu, &[1, 2, 8, 8], DType::F32).unwrap(), &conv, &out).is_err());
    assert!(conv2d(gpu, &mut enc, &x.reshape(&[3, 8, 8]).unwrap(), &conv, &out).is_err());
    assert!(conv2d(gpu, &mut enc, &Tensor::from_u32(gpu, &[1, 3, 8, 8], &[0; 192]).unwrap(), &conv, &out).is_err());
    // Patch embedding needs kernel = stride and whole patches.
    assert!(patch_embed(gpu, &mut enc, &x, &conv, &Tensor::zeros(gpu, &[1, 64, 4], DType::F32).unwrap()).is_err());
    let pe = Conv2d::new(gpu, &PackedMatrix::quantize(&random(4 * 48, 2, 1.0), 4, 48, WeightFormat::F32).unwrap(), None, (4, 4), 4, 0).unwrap();
    let odd = Tensor::zeros(gpu, &[1, 3, 10, 8], DType::F32).unwrap();
    assert!(patch_embed(gpu, &mut enc, &odd, &pe, &Tensor::zeros(gpu, &[1, 4, 4], DType::F32).unwrap()).is_err());
    // Too small an input for the kernel.
    let tiny = Tensor::zeros(gpu, &[1, 3, 2, 2], DType::F32).unwrap();
    let pe_out = Tensor::zeros(gpu, &[1, 1, 4], DType::F32).unwrap();
    assert!(patch_embed(gpu, &mut enc, &tiny, &pe, &pe_out).is_err());
}
