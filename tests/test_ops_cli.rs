//! `lowbit test-ops`: the op-check registry on the user's adapter, its filter, JSON and errors.

mod common;
use common::*;

#[test]
fn test_ops_reports_every_case_and_filters() {
    let text = lowbit_ok(&["test-ops", "--filter", "layer_norm"]);
    assert!(text.contains("layer_norm") && text.contains(" ok"), "{text}");
    assert!(text.contains("cases passed"), "{text}");
    assert!(!text.contains("conv2d"), "the filter keeps only layer_norm: {text}");
    let json = lowbit_ok(&["--plan", "gpu", "test-ops", "--filter", "gemm_workgroup", "--json"]);
    let rows: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!rows.is_empty());
    for row in &rows {
        for key in ["op", "shape", "variant", "format", "nmse", "bound", "pass", "adapter"] {
            assert!(row.get(key).is_some(), "{key} missing: {row}");
        }
        assert_eq!(row["pass"], true, "{row}");
        assert!(row["nmse"].as_f64().unwrap() <= row["bound"].as_f64().unwrap(), "{row}");
    }
}

#[test]
fn a_filter_matching_nothing_is_an_error() {
    let out = lowbit(&["test-ops", "--filter", "no-such-op"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("matches none"), "{err}");
}
