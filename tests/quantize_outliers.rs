//! The outlier fixtures (tests/fixtures/outlier, made by tools/make_outlier_fixtures.py from
//! photo-vit): the statistics each one plants are really there when the engine runs it, and the
//! function-preserving ones compute photo-vit's logits.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use lowbit::quant::calibrate::{Calibration, Model};

fn model_dir(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if name == "photo-vit" {
        root.join("assets/models/photo-vit")
    } else {
        root.join("tests/fixtures/outlier").join(name)
    }
}

/// Bundled calibration crops of photo-vit's training region (8 of the 64 the tool exports).
fn calib_dir() -> PathBuf {
    model_dir("calib")
}

/// Largest channel max / median channel max of |x| over all tokens of the calibration crops,
/// per node input (the measure), as the engine computes the values.
fn ratios(name: &str, nodes: &[String]) -> HashMap<String, f64> {
    let gpu = common::gpu();
    let model = Model::load(&model_dir(name)).unwrap();
    let calib = Calibration::load(gpu, &model, &calib_dir(), 8, 0).unwrap();
    let mut max: HashMap<String, Vec<f32>> = HashMap::new();
    model
        .visit_inputs(gpu, &model.weights, &calib, nodes, |node, x, shape| {
            let width = *shape.last().unwrap();
            let m = max.entry(node.to_string()).or_insert_with(|| vec![0.0; width]);
            for row in x.chunks_exact(width) {
                for (m, v) in m.iter_mut().zip(row) {
                    *m = m.max(v.abs());
                }
            }
            Ok(())
        })
        .unwrap();
    max.into_iter()
        .map(|(node, mut m)| {
            let top = m.iter().cloned().fold(0.0f32, f32::max) as f64;
            m.sort_by(|a, b| a.total_cmp(b));
            (node, top / m[m.len() / 2] as f64)
        })
        .collect()
}

/// Every block's node `point` (`norm1` reads the residual stream).
fn nodes(point: &str) -> Vec<String> {
    (0..4).map(|i| format!("blocks.{i}.{point}")).collect()
}

fn smallest(r: &HashMap<String, f64>, point: &str) -> f64 {
    nodes(point).iter().map(|n| r[n]).fold(f64::INFINITY, f64::min)
}

#[test]
fn planted_ratios_are_there_and_photo_vit_has_none() {
    let all: Vec<String> = ["norm1", "attn.qkv", "mlp.fc1", "mlp.fc2"].iter().flat_map(|p| nodes(p)).collect();
    let base = ratios("photo-vit", &all);
    let largest = base.values().cloned().fold(0.0, f64::max);
    eprintln!("photo-vit: largest ratio {largest:.2}");
    // photo-vit is tame: post-LN and residual ratios ~2, post-GELU 5-9.
    assert!(smallest(&base, "attn.qkv") < 4.0 && largest < 12.0, "{base:?}");

    let ln = ratios("outlier-ln", &all);
    eprintln!("outlier-ln: qkv {:.1}, fc1 {:.1}", smallest(&ln, "attn.qkv"), smallest(&ln, "mlp.fc1"));
    // Planted 15x (the calibration subset here is 8 of the tool's 64 crops: a little margin).
    assert!(smallest(&ln, "attn.qkv") > 10.0 && smallest(&ln, "mlp.fc1") > 10.0, "{ln:?}");

    let gelu = ratios("outlier-gelu", &all);
    eprintln!("outlier-gelu: fc2 {:.1}", smallest(&gelu, "mlp.fc2"));
    assert!(smallest(&gelu, "mlp.fc2") > 10.0, "{gelu:?}");

    let massive = ratios("massive", &all);
    eprintln!("massive: residual {:.1}", smallest(&massive, "norm1"));
    assert!(smallest(&massive, "norm1") > 40.0, "{massive:?}");
}

fn logits(name: &str) -> Vec<f32> {
    let gpu = common::gpu();
    let model = Model::load(&model_dir(name)).unwrap();
    let calib = Calibration::load(gpu, &model, &calib_dir(), 8, 0).unwrap();
    model.outputs(gpu, &model.weights, &calib).unwrap()
}

#[test]
fn function_preserving_fixtures_compute_photo_vits_logits() {
    let reference = logits("photo-vit");
    for name in ["outlier-ln", "layerscale"] {
        let got = logits(name);
        common::assert_parity(name, &got, &reference);
    }
    // outlier-gelu changes GELU's negative lobe slightly: close, not equal.
    let gelu = logits("outlier-gelu");
    let cos = lowbit::metrics::cosine(&gelu, &reference);
    eprintln!("outlier-gelu: logits cosine to photo-vit {cos:.6}");
    assert!(cos > 0.999, "outlier-gelu cosine {cos}");
}
