//! The whole op-check registry (`lowbit::ops_check`) on this adapter under the default plan,
//! the GPU plan forced and the fallback kernels (no f16, subgroups or packed dot): every case
//! within its bound. Failures are listed together, as a table.

mod common;
use common::*;
use lowbit::ops_check::cases;
use lowbit::Gpu;

fn run_all(label: &str, gpu: &Gpu) -> (usize, Vec<String>) {
    let cases = cases(gpu);
    let mut failures = Vec::new();
    // The largest NMSE per op, so the log shows each family's margin.
    let mut worst: Vec<(&str, f64, f64)> = Vec::new();
    for case in &cases {
        let o = case.run(gpu);
        match worst.iter_mut().find(|(op, ..)| *op == case.op) {
            Some(w) if o.nmse > w.1 => (w.1, w.2) = (o.nmse, case.bound),
            Some(_) => {}
            None => worst.push((case.op, o.nmse, case.bound)),
        }
        if !o.pass {
            let err = o.error.map(|e| format!("  ({e})")).unwrap_or_default();
            failures.push(format!(
                "{label:<10} {:<22} {:<28} {:<28} {:<14} {:>10.3e} {:>8.0e}{err}",
                case.op, case.shape, case.variant, case.format, o.nmse, case.bound
            ));
        }
    }
    for (op, nmse, bound) in worst {
        eprintln!("{label:<10} {op:<24} max nmse {nmse:.3e} (bound {bound:.0e})");
    }
    (cases.len(), failures)
}

#[test]
fn every_case_within_its_bound() {
    let start = std::time::Instant::now();
    let mut total = 0;
    let mut failures = Vec::new();
    for (label, gpu) in [("default", gpu()), ("gpu-plan", gpu_plan()), ("fallback", gpu_fallback())] {
        let (n, f) = run_all(label, gpu);
        total += n;
        failures.extend(f);
    }
    eprintln!("{total} cases in {:.1} s", start.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{:<10} {:<22} {:<28} {:<28} {:<14} {:>10} {:>8}\n{}",
        failures.len(),
        "plan",
        "op",
        "shape",
        "variant",
        "format",
        "nmse",
        "bound",
        failures.join("\n")
    );
}

#[test]
fn registry_covers_every_format_and_table_variant() {
    let cases = cases(gpu());
    for fmt in lowbit::formats::WeightFormat::all() {
        for op in ["linear", "linear_with", "conv2d"] {
            assert!(cases.iter().any(|c| c.op == op && c.format == fmt.name()), "{op} has no {} case", fmt.name());
        }
    }
    for v in lowbit::ops_check::table_variants() {
        assert!(cases.iter().any(|c| c.variant == v.name()), "no case runs {}", v.name());
    }
    // Looser bounds say why.
    for c in &cases {
        assert!(c.bound <= lowbit::ops_check::SAME_VALUES || !c.why.is_empty(), "{}: a loose bound without a reason", c.label());
    }
}
