//! `--tune`'s saved picks reach `linear` in later runs (a process of its own: the picks are read
//! once per process).
mod common;
use common::*;
use lowbit::gpu::{DType, Tensor};
use lowbit::kernels::launch;
use lowbit::kernels::matmul::{linear, linear_reference, QLinear, Variant};
use lowbit::formats::{PackedMatrix, WeightFormat};

#[test]
fn saved_picks_are_used_and_bad_entries_ignored() {
    let dir = std::env::temp_dir().join(format!("lowbit-tuning-{}", std::process::id()));
    let file = dir.join("tuning.json");
    std::env::set_var("LOWBIT_TUNING", &file);
    let gpu = gpu();
    let table = launch::for_class(gpu.class).linear;
    // Something other than the table's choice, and a GEMM entry that is no known candidate.
    let gemv = [Variant::GemvRows { wg: 32, rows: 2 }, Variant::GemvRows { wg: 64, rows: 1 }]
        .into_iter()
        .find(|v| *v != table.gemv)
        .unwrap();
    assert_eq!(launch::save_picks(gpu, Some(gemv), Some(Variant::GemmTiled { wg: 7, tm: 3, tn: 5 })).unwrap(), file);
    let plan = launch::linear_plan(gpu);
    assert_eq!(plan.gemv, gemv);
    assert_eq!(plan.gemm, table.gemm, "an unknown variant in the file must not be used");

    // linear runs the saved variant and still matches the reference.
    let (m, k, n) = (1, 200, 37);
    let w = PackedMatrix::quantize(&random(n * k, 5, 0.1), n, k, WeightFormat::Q4 { group: 32, zero_point: false }).unwrap();
    let x = random(m * k, 6, 1.0);
    let layer = QLinear::new(gpu, &w, None).unwrap();
    let xt = Tensor::from_f32(gpu, &[m, k], &x).unwrap();
    let out = Tensor::zeros(gpu, &[m, n], DType::F32).unwrap();
    let mut enc = gpu.encoder();
    linear(gpu, &mut enc, &layer, &xt, &out, None).unwrap();
    gpu.submit(enc).unwrap();
    assert_nmse("q4 gemv with the saved variant", &out.to_vec_f32(gpu).unwrap(), &linear_reference(&w, None, &x, m, None), QUANT_NMSE);
    let _ = std::fs::remove_dir_all(dir);
}
