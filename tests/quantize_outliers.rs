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

/// Bundled calibration crops of photo-vit's training region (8 of the 64 the tool exports; the
/// engine checks use 4 of them, to stay fast).
fn calib_dir() -> PathBuf {
    model_dir("calib")
}

/// Largest channel max / median channel max of |x| over all tokens of the calibration crops,
/// per node input (the measure), as the engine computes the values.
fn ratios(name: &str, nodes: &[String]) -> HashMap<String, f64> {
    let gpu = common::gpu();
    let model = Model::load(&model_dir(name)).unwrap();
    let calib = Calibration::load(gpu, &model, &calib_dir(), 4, 0).unwrap();
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
    let calib = Calibration::load(gpu, &model, &calib_dir(), 4, 0).unwrap();
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

#[test]
fn rotated_hessian_is_the_hessian_of_rotated_inputs() {
    use lowbit::kernels::hadamard;
    use lowbit::quant::gptq::Hessian;
    let (n, d) = (50, 96);
    let x = lowbit::synthetic::outlier_activations(n, d, 4);
    let block = hadamard::block_for(d);
    let mut h = Hessian::new(d);
    h.add_rows(&x).unwrap();
    let mut hr = Hessian::new(d);
    hr.add_rows(&hadamard::reference(&x, d, block).unwrap()).unwrap();
    let (got, want) = (h.rotated(block).unwrap().matrix(), hr.matrix());
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let top = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    // The rows were rotated in f32, the Hessian in f64.
    assert!(err <= 1e-6 * top, "max error {err} of {top}");
    assert!(h.rotated(7).is_err());
}

/// `lowbit quantize` with per-token activations (`dynamic`) and the Hadamard rotation
/// (`rotate`) on the LayerNorm-outlier fixture: the description says how it runs, the engine
/// runs it, and the logits stay close to the fixture's f32 ones.
#[test]
fn dynamic_and_rotated_w4_checkpoints_run_on_the_outlier_fixture() {
    let dir = std::env::temp_dir().join(format!("lowbit-outliers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = model_dir("outlier-ln");
    let image = calib_dir().join("calib-000.png");
    let logits = |m: &std::path::Path, name: &str| {
        let out = dir.join(format!("{name}.safetensors"));
        common::lowbit_ok(&["classify", "--model", m.to_str().unwrap(), "--save-logits", out.to_str().unwrap(), "--force", image.to_str().unwrap()]);
        common::read_f32(&out, "logits").1
    };
    let reference = logits(&model, "ref");
    for (recipe, method, runtime, min_cos) in [
        ("w4a8", "dynamic,adalog,clip", "int8_per_token", 0.99),
        ("w4a4", "dynamic,rotate,adalog,clip", "int4_per_token", 0.9),
        // A zero point per row (the w4a4 default): the kernel's ASYM quantizer.
        ("w4a4", "dynamic,asymmetric,rotate,adalog,clip", "int4_per_token_asymmetric", 0.9),
    ] {
        let out = dir.join(format!("{recipe}-{}", method.replace(',', "_")));
        common::lowbit_ok(&[
            "quantize", "--model", model.to_str().unwrap(), "--recipe", recipe, "--method", method, "--calib", calib_dir().to_str().unwrap(),
            "--calib-count", "4", "--out", out.to_str().unwrap(),
        ]);
        let desc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("quantization.json")).unwrap()).unwrap();
        assert_eq!(desc["runtime"]["activations"], runtime, "{desc}");
        assert_eq!(desc["runtime"]["hadamard"].as_bool().unwrap_or(false), method.contains("rotate"));
        // The planted LayerNorm outliers are what the rotation is for: some layers take it.
        let rotated = desc["tensors"].as_object().map_or(0, |t| t.values().filter(|v| v.get("hadamard").is_some()).count());
        eprintln!("{recipe} {method}: {rotated} rotated layers");
        assert_eq!(rotated > 0, method.contains("rotate"), "{desc}");
        // `lowbit info` says how it runs.
        let info = common::lowbit_ok(&["info", out.to_str().unwrap()]);
        let want = if method.contains("asymmetric") { "runtime: activations int4 per token with a zero point per row" } else { "per token, symmetric" };
        assert!(info.contains(want) && info.contains(&format!("recipe {recipe}")), "{info}");
        assert_eq!(info.contains("rotated (Hadamard)"), method.contains("rotate"), "{info}");
        // Only the post-softmax quantizers stay static.
        assert!(desc["activation_quantizers"].as_array().unwrap().iter().all(|p| p["node"].as_str().unwrap().ends_with(".attn")), "{desc}");
        let got = logits(&out, recipe);
        let cos = lowbit::metrics::cosine(&got, &reference);
        eprintln!("outlier-ln {recipe} {method}: logits cosine {cos:.5}");
        assert!(cos > min_cos, "{recipe} {method}: cosine {cos}");
    }
    // Refused before any work: rotate or asymmetric without dynamic, dynamic with noisy or on w8a8.
    for (recipe, method, words) in [("w4a4", "rotate,clip", "add dynamic"), ("w4a4", "asymmetric,clip", "add dynamic"), ("w4a8", "dynamic,noisy", "noisy"), ("w8a8", "dynamic", "w4a8 or w4a4")] {
        let out = dir.join("refused");
        let o = common::lowbit(&["quantize", "--model", model.to_str().unwrap(), "--recipe", recipe, "--method", method, "--calib", calib_dir().to_str().unwrap(), "--out", out.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{recipe} {method}: {err}");
        assert!(err.contains(words), "{recipe} {method}: {err}");
        assert!(!out.exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
