//! `lowbit bench roofline` and the `roofline_pct` column of `lowbit bench kernels`; the
//! cooperative-matrix probe shader, validated by naga everywhere and run where the adapter has
//! the feature.

mod common;

use lowbit::gpu::preprocess;
use lowbit::kernels::roofline::{coopmat_tiles, CoopConfig};

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line: {l}: {e}")))
        .collect()
}

#[test]
fn bench_roofline_json_has_positive_probes() {
    let rows = json_lines(&common::lowbit_ok(&["bench", "roofline", "--json", "--quick"]));
    for row in &rows {
        for key in ["probe", "value", "unit", "adapter"] {
            assert!(row.get(key).is_some(), "{row}: no `{key}`");
        }
        let value = row["value"].as_f64().unwrap_or_else(|| panic!("{row}: value is not a number"));
        assert!(value > 0.0 && value.is_finite(), "{row}: value {value}");
    }
    let probes: Vec<&str> = rows.iter().filter_map(|r| r["probe"].as_str()).collect();
    eprintln!("probes: {probes:?}");
    // Every adapter has these two; the others depend on features.
    assert!(probes.contains(&"copy_bandwidth") && probes.contains(&"f32_fma"), "{probes:?}");
    let gpu = common::gpu();
    assert_eq!(probes.contains(&"f16_fma"), gpu.caps.f16);
    assert_eq!(probes.contains(&"int8_dot"), gpu.caps.packed_dot);
}

#[test]
fn bench_roofline_table_lists_unavailable_probes() {
    let out = common::lowbit_ok(&["bench", "roofline", "--quick", "--disable", "f16,packed_dot,coopmat"]);
    for probe in ["copy_bandwidth", "f32_fma", "f16_fma", "int8_dot", "coopmat"] {
        assert!(out.contains(probe), "no {probe} row in:\n{out}");
    }
    assert!(out.matches("unavailable").count() >= 3, "f16, int8 and coopmat should be unavailable:\n{out}");
}

#[test]
fn bench_kernels_rows_have_roofline_pct() {
    let rows = json_lines(&common::lowbit_ok(&["bench", "kernels", "--quick", "--json", "--only", "matmul", "--reps", "2"]));
    assert!(!rows.is_empty());
    for row in &rows {
        for key in ["kernel", "format", "shape", "ms", "gbps", "gflops", "adapter", "roofline_pct"] {
            assert!(row.get(key).is_some(), "{row}: no `{key}`");
        }
        let pct = row["roofline_pct"].as_f64().unwrap_or_else(|| panic!("{row}: roofline_pct is not a number"));
        assert!(pct > 0.0 && pct.is_finite(), "{row}: roofline_pct {pct}");
    }
}

#[test]
fn unknown_disable_name_is_an_error() {
    let out = common::lowbit(&["bench", "roofline", "--quick", "--disable", "warp_drive"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warp_drive"));
}

/// Both coopmat variants of the probe parse and validate with naga's cooperative-matrix
/// capability (with f16 where the tile needs it), on any machine.
#[test]
fn coopmat_probe_validates_with_naga() {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let source = include_str!("../shaders/roofline.wgsl");
    for (define, caps) in [
        ("COOP_F32", Capabilities::COOPERATIVE_MATRIX),
        ("COOP_F16", Capabilities::COOPERATIVE_MATRIX | Capabilities::SHADER_FLOAT16),
    ] {
        let text = preprocess(source, &[define]).unwrap();
        let module = naga::front::wgsl::parse_str(&text).unwrap_or_else(|e| panic!("{define}: {}", e.emit_to_string(&text)));
        assert!(module.entry_points.iter().any(|e| e.name == "coop_gemm"), "{define}: no coop_gemm");
        Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{define}: {}", e.emit_to_string(&text)));
        // Without the capability the same module must be rejected: the test checks the right thing.
        assert!(Validator::new(ValidationFlags::all(), caps - Capabilities::COOPERATIVE_MATRIX).validate(&module).is_err());
    }
}

/// C + iters·A·B from the cooperative-matrix tiles against a CPU reference, where the adapter
/// has cooperative matrices; elsewhere the test says why it did nothing.
#[test]
fn coopmat_tiles_match_reference() {
    let gpu = common::gpu();
    let cfg = match CoopConfig::pick(gpu) {
        Ok(cfg) => cfg,
        Err(why) => {
            eprintln!("skipped: {why} on {}", gpu.adapter_name());
            return;
        }
    };
    let t = cfg.side();
    // Values exact in f16, so both configurations have one reference.
    let a: Vec<f32> = (0..t * t).map(|i| ((i * 7 % 17) as f32 - 8.0) / 8.0).collect();
    let b: Vec<f32> = (0..t * t).map(|i| ((i * 5 % 13) as f32 - 6.0) / 4.0).collect();
    let c: Vec<f32> = (0..4 * t * t).map(|i| (i % 11) as f32 - 5.0).collect();
    let iters = 3;
    let got = coopmat_tiles(gpu, cfg, &a, &b, &c, iters).unwrap();
    let mut want = Vec::with_capacity(4 * t * t);
    for j in 0..4 {
        for r in 0..t {
            for col in 0..t {
                let ab: f32 = (0..t).map(|k| a[r * t + k] * b[k * t + col]).sum();
                want.push(c[j * t * t + r * t + col] + iters as f32 * ab);
            }
        }
    }
    common::assert_nmse(&format!("coopmat {cfg:?}"), &got, &want, common::F32_NMSE);
}
