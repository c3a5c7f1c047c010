//! The post-training quantizer: each method does better than round-to-nearest where it should,
//! the mixed-precision knapsack is exact, and `lowbit quantize` writes checkpoints the other
//! commands load, refusing bad input with exit code 1 and no output folder.

mod common;
use common::lowbit;

use std::path::{Path, PathBuf};

use lowbit::quant::calibrate::pick;
use lowbit::quant::gptq::{gptq, GptqOptions, Hessian};
use lowbit::quant::mixed::{greedy, knapsack};
use lowbit::formats::WeightFormat;
use lowbit::quant::{clip, rtn};
use lowbit::synthetic::{uniform, Rng};

const Q4: WeightFormat = WeightFormat::Q4 { group: 32, zero_point: false };

/// ‖X·Wᵀ − X·Ŵᵀ‖² for row-major X [n, cols] and W, Ŵ [rows, cols] (f64 accumulation).
fn output_error(x: &[f32], w: &[f32], q: &[f32], cols: usize) -> f64 {
    let mut e = 0.0;
    for xr in x.chunks(cols) {
        for (wr, qr) in w.chunks(cols).zip(q.chunks(cols)) {
            let d: f64 = xr.iter().zip(wr.iter().zip(qr)).map(|(&a, (&b, &c))| a as f64 * (b - c) as f64).sum();
            e += d * d;
        }
    }
    e
}

#[test]
fn gptq_beats_rtn_on_layer_output_error_with_correlated_inputs() {
    // 70 columns (not a multiple of the 32-column groups), inputs mixing 8 shared factors.
    let (n, rows, cols, factors) = (400, 24, 70, 8);
    let z = uniform(n * factors, 1, 1.0);
    let mix = uniform(factors * cols, 2, 1.0);
    let noise = uniform(n * cols, 3, 0.05);
    let x: Vec<f32> = (0..n * cols).map(|i| (0..factors).map(|f| z[(i / cols) * factors + f] * mix[f * cols + i % cols]).sum::<f32>() + noise[i]).collect();
    let w = uniform(rows * cols, 4, 1.0);
    let mut h = Hessian::new(cols);
    h.add_rows(&x).unwrap();
    for format in [Q4, WeightFormat::Q4 { group: 64, zero_point: true }, WeightFormat::Ternary, WeightFormat::Fp4 { group: 32 }, WeightFormat::Q8 { group: None }] {
        let base = output_error(&x, &w, &rtn::rtn(&w, rows, cols, format).unwrap().dequantize(), cols);
        for act_order in [false, true] {
            let q = gptq(&w, rows, cols, format, &h, GptqOptions { act_order, ..Default::default() }).unwrap();
            let e = output_error(&x, &w, &q.dequantize(), cols);
            eprintln!("{} act_order {act_order}: gptq {e:.4e} vs rtn {base:.4e}", format.name());
            assert!(e < 0.7 * base, "{}: gptq {e} not below rtn {base}", format.name());
        }
    }
    // A Hessian of the wrong width, or from no inputs, is an error.
    assert!(gptq(&w, rows, cols, Q4, &Hessian::new(cols + 1), GptqOptions::default()).is_err());
    assert!(gptq(&w, rows, cols, Q4, &Hessian::new(cols), GptqOptions::default()).is_err());
    assert!(gptq(&w[1..], rows, cols, Q4, &h, GptqOptions::default()).is_err());
}

#[test]
fn clip_beats_rtn_mse_on_heavy_tailed_weights() {
    let (rows, cols) = (16, 100);
    // Ratio of uniforms: mostly small values with a few large outliers per group.
    let (a, b) = (uniform(rows * cols, 5, 1.0), uniform(rows * cols, 6, 1.0));
    let w: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x / (y.abs() + 0.05)).collect();
    for format in [Q4, WeightFormat::Q8 { group: None }, WeightFormat::Fp4 { group: 32 }, WeightFormat::Ternary] {
        let mse = |q: Vec<f32>| q.iter().zip(&w).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
        let (r, c) = (mse(rtn::rtn(&w, rows, cols, format).unwrap().dequantize()), mse(clip::clip(&w, rows, cols, format).unwrap().dequantize()));
        eprintln!("{}: clip {c:.4e} vs rtn {r:.4e}", format.name());
        // The search includes rtn's own range, so it never loses; on the coarse grids clipping
        // the tails must win clearly (an 8-bit grid's steps are already fine).
        assert!(c <= r, "{}: clip {c} above rtn {r}", format.name());
        if format.bits() <= 4 {
            assert!(c < 0.95 * r, "{}: clip {c} not clearly below rtn {r}", format.name());
        }
    }
    assert!(clip::clip(&w, rows, cols, WeightFormat::F16).is_err());
}

#[test]
fn knapsack_matches_brute_force_and_respects_the_budget() {
    let mut rng = Rng::new(9);
    let mut next = |k: f32| ((rng.next_f32() + 1.0) * 0.5 * k) as usize;
    for trial in 0..20 {
        let items = 5;
        let costs: Vec<Vec<usize>> = (0..items).map(|_| (0..3).map(|_| 1 + next(20.0)).collect()).collect();
        let values: Vec<Vec<f64>> = (0..items).map(|_| (0..3).map(|_| next(1000.0) as f64 / 100.0).collect()).collect();
        let budget = 10 + next(50.0);
        let mut brute: Option<f64> = None;
        for code in 0..3usize.pow(items as u32) {
            let pick: Vec<usize> = (0..items).map(|i| code / 3usize.pow(i as u32) % 3).collect();
            let cost: usize = pick.iter().enumerate().map(|(i, &k)| costs[i][k]).sum();
            let value: f64 = pick.iter().enumerate().map(|(i, &k)| values[i][k]).sum();
            if cost <= budget && brute.is_none_or(|b| value < b) {
                brute = Some(value);
            }
        }
        let got = knapsack(&costs, &values, budget);
        match (got, brute) {
            (None, None) => assert!(greedy(&costs, &values, budget).is_none()),
            (Some((pick, value)), Some(b)) => {
                assert!((value - b).abs() < 1e-9, "trial {trial}: dp {value} vs brute force {b}");
                let cost: usize = pick.iter().enumerate().map(|(i, &k)| costs[i][k]).sum();
                assert!(cost <= budget, "trial {trial}: cost {cost} over {budget}");
                let g = greedy(&costs, &values, budget).unwrap();
                let gcost: usize = g.iter().enumerate().map(|(i, &k)| costs[i][k]).sum();
                let gvalue: f64 = g.iter().enumerate().map(|(i, &k)| values[i][k]).sum();
                assert!(gcost <= budget && gvalue >= value - 1e-9, "trial {trial}: greedy {gvalue} @ {gcost}");
            }
            (a, b) => panic!("trial {trial}: dp {a:?} vs brute force {b:?}"),
        }
    }
}

#[test]
fn mixed_allocation_never_loses_to_a_uniform_format_that_fits() {
    use lowbit::quant::mixed::{allocate, Choice};
    let mut rng = Rng::new(11);
    let formats = [WeightFormat::Ternary, Q4, WeightFormat::Q8 { group: None }];
    let shapes = [(48, 48), (144, 48), (48, 192), (192, 48), (10, 48), (48, 100)];
    let options: Vec<Vec<Choice>> = shapes
        .iter()
        .map(|&(r, c)| {
            let base = 10.0 + 20.0 * (rng.next_f32() as f64 + 1.0);
            formats.iter().zip([0.0, 18.0, 42.0]).map(|(&f, db)| Choice { format: f, bytes: f.packed_bytes(r, c), sqnr_db: base + db }).collect()
        })
        .collect();
    let params: Vec<usize> = shapes.iter().map(|(r, c)| r * c).collect();
    let uniform_q4: usize = options.iter().map(|o| o[1].bytes).sum();
    let bits = 8.0 * uniform_q4 as f64 / params.iter().sum::<usize>() as f64;
    let a = allocate(shapes.iter().map(|s| format!("{s:?}")).collect(), params, options, uniform_q4, bits).unwrap();
    let (exact, greedy, uniform) = (a.summary(&a.exact), a.summary(&a.greedy), a.summary(&a.uniform(1).unwrap()));
    assert!(exact.0 <= uniform_q4 && greedy.0 <= uniform_q4, "{exact:?} {greedy:?}");
    assert!(exact.1 <= uniform.1 + 1e-15 && exact.1 <= greedy.1 + 1e-15, "exact {exact:?} greedy {greedy:?} uniform {uniform:?}");
    // A budget below all-ternary is an error naming the smallest allocation.
    let err = allocate(vec!["a".into()], vec![100], vec![vec![Choice { format: WeightFormat::Ternary, bytes: 40, sqnr_db: 10.0 }]], 30, 2.4).unwrap_err();
    assert!(err.to_string().contains("below the smallest allocation"), "{err}");
}

#[test]
fn calibration_picks_are_seeded() {
    assert_eq!(pick(5, 10, 1), vec![0, 1, 2, 3, 4]);
    let a = pick(100, 10, 7);
    assert_eq!(a, pick(100, 10, 7));
    assert_ne!(a, pick(100, 10, 8));
    assert_eq!(a.len(), 10);
    assert!(a.windows(2).all(|p| p[0] < p[1]) && a[9] < 100);
}

// ---- the command line ----

fn fixture(name: &str) -> PathBuf {
    common::fixture_dir(name)
}

fn ok(args: &[&str]) -> String {
    common::lowbit_ok(args)
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lowbit-quantize-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `n` seeded random-noise PNGs of `size`², some in a sub-folder (calibration is recursive).
fn calibration_images(dir: &Path, n: usize, size: u32) -> PathBuf {
    let root = dir.join("calib");
    std::fs::create_dir_all(root.join("nested")).unwrap();
    for i in 0..n {
        let v = uniform((size * size * 3) as usize, 100 + i as u64, 1.0);
        let img = image::RgbImage::from_fn(size, size, |x, y| {
            let p = ((y * size + x) * 3) as usize;
            image::Rgb([0, 1, 2].map(|c| ((v[p + c] + 1.0) * 127.5) as u8))
        });
        let sub = if i % 2 == 0 { root.clone() } else { root.join("nested") };
        img.save(sub.join(format!("img{i}.png"))).unwrap();
    }
    root
}

fn logits(model: &Path, image: &Path, out: &Path) -> Vec<f32> {
    ok(&["classify", "--model", model.to_str().unwrap(), "--save-logits", out.to_str().unwrap(), "--force", image.to_str().unwrap()]);
    let bytes = std::fs::read(out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor("logits").unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn quantize_then_classify_round_trip() {
    let dir = scratch("vit");
    let calib = calibration_images(&dir, 6, 32);
    let vit = fixture("vit_tiny_test");
    let image = vit.join("image_exact.png");
    let reference = logits(&vit, &image, &dir.join("ref.safetensors"));
    let cases: [(&str, &str, Option<&str>, f64); 5] = [
        ("w8a16", "rtn", None, 30.0),
        ("w4a16", "gptq,clip", None, 12.0),
        ("fp4", "clip", None, 8.0),
        ("mixed:4.5", "gptq", None, 12.0),
        ("mixed:4.5", "clip", Some("output"), 12.0),
    ];
    for (recipe, method, sensitivity, min_sqnr) in cases {
        let out = dir.join(format!("{}{}", recipe.replace(':', "_"), sensitivity.map(|s| format!("-{s}")).unwrap_or_default()));
        let mut args = vec![
            "quantize", "--model", vit.to_str().unwrap(), "--recipe", recipe, "--method", method, "--calib", calib.to_str().unwrap(),
            "--calib-count", "4", "--seed", "3", "--out", out.to_str().unwrap(),
        ];
        if let Some(s) = sensitivity {
            args.extend(["--sensitivity", s]);
        }
        let stdout = ok(&args);
        assert!(stdout.contains("blocks.0.mlp.fc1.weight") && stdout.contains("MB packed"), "{stdout}");
        // The folder holds the checkpoint, the config and the readable description.
        let desc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("quantization.json")).unwrap()).unwrap();
        assert_eq!(desc["recipe"], recipe);
        assert_eq!(desc["calibration"]["count"], 4);
        assert!(out.join("config.json").is_file());
        assert!(std::fs::metadata(out.join("model.safetensors")).unwrap().len() < std::fs::metadata(vit.join("model.safetensors")).unwrap().len());
        if recipe.starts_with("mixed") {
            assert!(stdout.contains("exact (knapsack DP)") && stdout.contains("greedy"), "{stdout}");
            assert!(desc["mixed"]["exact"]["average_bits"].as_f64().unwrap() <= 4.5);
            assert_eq!(desc["mixed"]["sensitivity"], sensitivity.unwrap_or("hessian"));
        } else {
            // Below 8 bits the weight-only recipes keep the first and last layers at 8 bits.
            let block = if recipe == "fp4" { "fp4g32" } else if recipe == "w4a16" { "q4g32" } else { "q8" };
            assert_eq!(desc["tensors"]["blocks.0.mlp.fc1.weight"]["format"], block, "{desc}");
            for key in ["patch_embed.proj.weight", "head.weight"] {
                assert_eq!(desc["tensors"][key]["format"], "q8", "{key}: {desc}");
            }
        }
        let got = logits(&out, &image, &dir.join("q.safetensors"));
        let sqnr = lowbit::metrics::sqnr_db(&got, &reference);
        eprintln!("{recipe} {method}: logits SQNR {sqnr:.1} dB");
        assert!(sqnr > min_sqnr, "{recipe}: logits SQNR {sqnr} dB");
        let info = ok(&["info", out.to_str().unwrap()]);
        assert!(info.contains("q4g32") || info.contains("q8") || info.contains("fp4"), "{info}");
    }
    // The same seed gives the same bytes.
    let again = dir.join("again");
    ok(&["quantize", "--model", vit.to_str().unwrap(), "--recipe", "w4a16", "--method", "gptq,clip", "--calib", calib.to_str().unwrap(), "--calib-count", "4", "--seed", "3", "--out", again.to_str().unwrap()]);
    assert_eq!(std::fs::read(again.join("model.safetensors")).unwrap(), std::fs::read(dir.join("w4a16/model.safetensors")).unwrap());
}

/// The loss-aware options, from the CPU backward pass of `models::vit::backprop`:
/// `--sensitivity fisher|lrp` for mixed precision and `--method fisher` for GPTQ; and what
/// they refuse (models without that backward pass, contradicting methods).
#[test]
fn loss_aware_sensitivities_and_gptq() {
    let dir = scratch("loss-aware");
    let calib = calibration_images(&dir, 6, 32);
    let vit = fixture("vit_tiny_test");
    let image = vit.join("image_exact.png");
    let reference = logits(&vit, &image, &dir.join("ref.safetensors"));
    let (v, c) = (vit.to_str().unwrap(), calib.to_str().unwrap());
    for (recipe, method, sensitivity, label) in [
        ("mixed:4.5", "gptq", Some("fisher"), "predicted from its gradient-weighted Hessian"),
        ("mixed:3.5", "gptq", Some("lrp"), "less its relevance share"),
        ("w4a16", "gptq,clip,fisher", None, "MB packed"),
    ] {
        let out = dir.join(format!("{}-{}", recipe.replace(':', "_"), sensitivity.unwrap_or("method")));
        let mut args = vec!["quantize", "--model", v, "--recipe", recipe, "--method", method, "--calib", c, "--calib-count", "6", "--seed", "3", "--out", out.to_str().unwrap()];
        if let Some(s) = sensitivity {
            args.extend(["--sensitivity", s]);
        }
        let stdout = ok(&args);
        assert!(stdout.contains(label), "{stdout}");
        let desc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("quantization.json")).unwrap()).unwrap();
        match sensitivity {
            Some(s) => assert_eq!(desc["mixed"]["sensitivity"], s, "{desc}"),
            None => assert_eq!(desc["methods"], "gptq+clip+fisher", "{desc}"),
        }
        let sqnr = lowbit::metrics::sqnr_db(&logits(&out, &image, &dir.join("q.safetensors")), &reference);
        eprintln!("{recipe} {method} {sensitivity:?}: logits SQNR {sqnr:.1} dB");
        assert!(sqnr > 10.0, "{recipe} {method} {sensitivity:?}: logits SQNR {sqnr} dB");
    }
    let bad = dir.join("bad");
    let b = bad.to_str().unwrap();
    let quantize = |model: &str, recipe: &'static str, extra: &[&'static str]| {
        let mut a = vec!["quantize".to_string(), "--model".into(), fixture(model).to_str().unwrap().into(), "--recipe".into(), recipe.into(), "--calib".into(), c.into(), "--out".into(), b.into()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let cases: [(&str, &str, &[&str], &[&str]); 5] = [
        ("swin_tiny_test", "mixed:4.5", &["--sensitivity", "fisher"], &["--sensitivity fisher", "ViT-family"]),
        ("vqgan_tiny_test", "mixed:4.5", &["--sensitivity", "lrp"], &["--sensitivity lrp", "ViT-family"]),
        ("swin_tiny_test", "w4a16", &["--method", "gptq,fisher"], &["method fisher", "ViT-family"]),
        ("vit_tiny_test", "w4a16", &["--method", "clip,fisher"], &["method fisher", "add gptq"]),
        ("vit_tiny_test", "w4a16", &["--method", "sequential,gptq,fisher"], &["fisher and sequential"]),
    ];
    for (model, recipe, extra, words) in cases {
        let args = quantize(model, recipe, extra);
        refused(&args.iter().map(String::as_str).collect::<Vec<_>>(), words, &bad);
    }
    refused(&["quantize", "--model", v, "--recipe", "mixed:4.5", "--calib", c, "--sensitivity", "relevance", "--out", b], &["--sensitivity relevance", "lrp", "fisher"], &bad);
}

#[test]
fn sequential_gptq_calibrates_the_blocks_in_order() {
    let dir = scratch("sequential");
    let calib = calibration_images(&dir, 6, 32);
    let vit = fixture("vit_tiny_test");
    let image = vit.join("image_exact.png");
    let reference = logits(&vit, &image, &dir.join("ref.safetensors"));
    let out = dir.join("seq");
    let (v, c, o) = (vit.to_str().unwrap(), calib.to_str().unwrap(), out.to_str().unwrap());
    ok(&["quantize", "--model", v, "--recipe", "w4a16", "--method", "sequential,gptq,clip", "--calib", c, "--calib-count", "6", "--seed", "3", "--out", o]);
    let desc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("quantization.json")).unwrap()).unwrap();
    assert_eq!(desc["methods"], "gptq+clip+sequential", "{desc}");
    assert_eq!(desc["tensors"]["blocks.1.mlp.fc2.weight"]["method"], "gptq+clip+sequential", "{desc}");
    let sqnr = lowbit::metrics::sqnr_db(&logits(&out, &image, &dir.join("q.safetensors")), &reference);
    eprintln!("w4a16 sequential,gptq,clip: logits SQNR {sqnr:.1} dB");
    assert!(sqnr > 12.0, "logits SQNR {sqnr} dB");
    // Deterministic: the same bytes again.
    let again = dir.join("again");
    ok(&["quantize", "--model", v, "--recipe", "w4a16", "--method", "sequential,gptq,clip", "--calib", c, "--calib-count", "6", "--seed", "3", "--out", again.to_str().unwrap()]);
    assert_eq!(std::fs::read(again.join("model.safetensors")).unwrap(), std::fs::read(out.join("model.safetensors")).unwrap());
    let bad = dir.join("bad");
    let b = bad.to_str().unwrap();
    refused(&["quantize", "--model", v, "--recipe", "w4a16", "--method", "sequential,clip", "--calib", c, "--out", b], &["sequential", "add gptq"], &bad);
    refused(&["quantize", "--model", v, "--recipe", "w4a4", "--method", "dynamic,rotate,sequential,gptq", "--calib", c, "--out", b], &["sequential", "rotate"], &bad);
    refused(&["quantize", "--model", v, "--recipe", "mixed:4.5", "--method", "sequential,gptq", "--calib", c, "--out", b], &["sequential", "mixed:4.5"], &bad);
    let vq = fixture("vqgan_tiny_test");
    refused(&["quantize", "--model", vq.to_str().unwrap(), "--recipe", "w4a16", "--method", "sequential,gptq", "--calib", vq.join("io.safetensors").to_str().unwrap(), "--out", b], &["sequential", "classifiers"], &bad);
}

/// `--method recon`: every block of a weight recipe and of the rotated, per-token W4A4 default
/// is reconstructed (the block error never rises: the start is kept otherwise), the folder
/// loads and classifies, the run is deterministic, and what it cannot do is refused.
#[test]
fn block_reconstruction_refines_the_rounding() {
    let dir = scratch("recon");
    let calib = calibration_images(&dir, 6, 32);
    let vit = fixture("vit_tiny_test");
    let image = vit.join("image_exact.png");
    let reference = logits(&vit, &image, &dir.join("ref.safetensors"));
    let (v, c) = (vit.to_str().unwrap(), calib.to_str().unwrap());
    // (recipe, methods, their name, logits SQNR floor on the held-out image: ternary weights
    // calibrated on 6 noise images stay far from f32, but reconstruction must cut its block
    // errors the most).
    for (recipe, method, name, floor) in [
        ("w4a16", "gptq,clip,recon", "gptq+clip+recon", 10.0),
        ("w4a4", "dynamic,asymmetric,rotate,smoothq,gptq,clip,recon", "gptq+clip+smoothq+dynamic+asymmetric+rotate+recon", 10.0),
        ("ternary", "clip,recon", "clip+recon", 3.0),
    ] {
        let out = dir.join(recipe);
        let stdout = ok(&["quantize", "--model", v, "--recipe", recipe, "--method", method, "--calib", c, "--calib-count", "6", "--seed", "3", "--recon-iters", "24", "--out", out.to_str().unwrap()]);
        assert!(stdout.contains("block reconstruction"), "{stdout}");
        let desc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("quantization.json")).unwrap()).unwrap();
        assert_eq!(desc["methods"], name, "{desc}");
        let blocks = desc["reconstruction"].as_array().unwrap_or_else(|| panic!("{desc}"));
        assert_eq!(blocks.len(), 2, "{desc}");
        let settings = &desc["reconstruction_settings"];
        assert_eq!((settings["iters"].as_u64(), settings["qdrop"].as_f64()), (Some(24), Some(0.5)), "{desc}");
        for b in blocks {
            let (start, end) = (b["error_start"].as_f64().unwrap(), b["error_end"].as_f64().unwrap());
            assert!(start > 0.0 && end <= start, "{recipe}: {b}");
            let applied = b["applied"].as_bool().unwrap();
            assert_eq!(applied, end < start, "{recipe}: {b}");
            assert_eq!(applied, b["codes_changed"].as_u64().unwrap() > 0, "{recipe}: {b}");
        }
        assert!(blocks.iter().any(|b| b["applied"].as_bool().unwrap()), "{recipe}: nothing moved: {desc}");
        if recipe == "ternary" {
            let last = &blocks[1];
            assert!(last["error_end"].as_f64().unwrap() < 0.5 * last["error_start"].as_f64().unwrap(), "{last}");
        }
        let sqnr = lowbit::metrics::sqnr_db(&logits(&out, &image, &dir.join("q.safetensors")), &reference);
        eprintln!("{recipe} {method}: logits SQNR {sqnr:.1} dB, {blocks:?}");
        assert!(sqnr > floor, "{recipe}: logits SQNR {sqnr} dB");
    }
    let again = dir.join("again");
    ok(&["quantize", "--model", v, "--recipe", "w4a16", "--method", "gptq,clip,recon", "--calib", c, "--calib-count", "6", "--seed", "3", "--recon-iters", "24", "--out", again.to_str().unwrap()]);
    assert_eq!(std::fs::read(again.join("model.safetensors")).unwrap(), std::fs::read(dir.join("w4a16").join("model.safetensors")).unwrap());
    // Without --calib-count, recon calibrates on 128 images (other methods on 32), and with
    // fewer it says that it may overfit them.
    let many = calibration_images(&dir.join("many"), 130, 16);
    for (method, count) in [("gptq,clip,recon", 128), ("gptq,clip", 32)] {
        let out = dir.join(format!("count-{count}"));
        let mut args = vec!["quantize", "--model", v, "--recipe", "w4a16", "--method", method, "--calib", many.to_str().unwrap(), "--out", out.to_str().unwrap()];
        if method.contains("recon") {
            args.extend(["--recon-iters", "1"]);
        }
        let run = common::lowbit(&args);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        assert!(!String::from_utf8_lossy(&run.stderr).contains("overfit"), "{}", String::from_utf8_lossy(&run.stderr));
        let desc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("quantization.json")).unwrap()).unwrap();
        assert_eq!(desc["calibration"]["count"], count, "{method}: {desc}");
    }
    let few = common::lowbit(&["quantize", "--model", v, "--recipe", "w4a16", "--method", "gptq,clip,recon", "--calib", c, "--recon-iters", "1", "--out", dir.join("few").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&few.stderr);
    assert!(few.status.success() && stderr.contains("warning") && stderr.contains("6 calibration images") && stderr.contains("overfit"), "{stderr}");
    let bad = dir.join("bad");
    let b = bad.to_str().unwrap();
    refused(&["quantize", "--model", v, "--recipe", "w4a16", "--method", "clip,recon", "--out", b], &["recon", "--calib"], &bad);
    refused(&["quantize", "--model", v, "--recipe", "w4a16", "--method", "gptq,clip", "--recon-iters", "5", "--calib", c, "--out", b], &["--recon-iters", "add recon"], &bad);
    refused(&["quantize", "--model", v, "--recipe", "w4a4", "--method", "svdquant,gptq,recon", "--calib", c, "--out", b], &["recon", "svdquant"], &bad);
    refused(&["quantize", "--model", v, "--recipe", "w6a6", "--method", "repq,clip,recon", "--calib", c, "--out", b], &["recon", "w6a6"], &bad);
    let swin = fixture("swin_tiny_test");
    refused(&["quantize", "--model", swin.to_str().unwrap(), "--recipe", "w4a16", "--method", "gptq,recon", "--calib", c, "--out", b], &["recon", "ViT-family"], &bad);
}

#[test]
fn w8a8_runs_int8_activations_through_the_w8a8_kernel() {
    let dir = scratch("w8a8");
    let vit = fixture("vit_tiny_test");
    let image = vit.join("image_exact.png");
    let (a8, a16) = (dir.join("w8a8"), dir.join("w8a16"));
    for (recipe, out) in [("w8a8", &a8), ("w8a16", &a16)] {
        ok(&["quantize", "--model", vit.to_str().unwrap(), "--recipe", recipe, "--method", "clip", "--out", out.to_str().unwrap()]);
    }
    let desc = std::fs::read_to_string(a8.join("quantization.json")).unwrap();
    assert!(desc.contains("int8 per-token dynamic"), "{desc}");
    // Same int8 weights; only the activations differ: close, but not identical.
    let (x, y) = (logits(&a8, &image, &dir.join("a.safetensors")), logits(&a16, &image, &dir.join("b.safetensors")));
    let sqnr = lowbit::metrics::sqnr_db(&x, &y);
    eprintln!("w8a8 vs w8a16 logits: {sqnr:.1} dB");
    assert!(sqnr > 25.0 && sqnr.is_finite(), "{sqnr}");
    // SmoothQuant's maps folded into the weights (the kernel unchanged): as close to w8a16.
    let calib = calibration_images(&dir, 4, 32);
    let smooth = dir.join("w8a8-smooth");
    ok(&["quantize", "--model", vit.to_str().unwrap(), "--recipe", "w8a8", "--method", "smoothq,clip", "--calib", calib.to_str().unwrap(), "--out", smooth.to_str().unwrap()]);
    let smooth_desc = std::fs::read_to_string(smooth.join("quantization.json")).unwrap();
    assert!(smooth_desc.contains("smoothq") && smooth_desc.contains("int8 per-token dynamic"), "{smooth_desc}");
    let z = logits(&smooth, &image, &dir.join("c.safetensors"));
    let sqnr_smooth = lowbit::metrics::sqnr_db(&z, &y);
    eprintln!("w8a8 smoothq vs w8a16 logits: {sqnr_smooth:.1} dB");
    assert!(sqnr_smooth > 25.0 && sqnr_smooth.is_finite(), "{sqnr_smooth}");
    refused(&["quantize", "--model", vit.to_str().unwrap(), "--recipe", "w8a8", "--method", "smoothq", "--out", dir.join("nc").to_str().unwrap()], &["smoothq", "--calib"], &dir.join("nc"));
    refused(&["quantize", "--model", vit.to_str().unwrap(), "--recipe", "w8a8", "--method", "smoothq,adalog", "--calib", calib.to_str().unwrap(), "--out", dir.join("al").to_str().unwrap()], &["adalog", "w8a8"], &dir.join("al"));
    let profile = ok(&["classify", "--model", a8.to_str().unwrap(), "--profile", image.to_str().unwrap()]);
    assert!(profile.contains("w8a8_linear      blocks.0.mlp.fc1"), "{profile}");
    // Attention runs in the low-bit attention kernel (SageAttention), and says so.
    assert!(desc.contains("SageAttention"), "{desc}");
    assert!(profile.lines().any(|l| l.contains("sage_attention") && l.contains("blocks.0.attn")), "{profile}");
    // Convolutions have no int8-activation path.
    let vq = fixture("vqgan_tiny_test");
    refused(&["quantize", "--model", vq.to_str().unwrap(), "--recipe", "w8a8", "--out", dir.join("vq").to_str().unwrap()], &["w8a8", "ViT"], &dir.join("vq"));
}

#[test]
fn static_activation_recipes_round_trip() {
    let dir = scratch("static-act");
    let calib = calibration_images(&dir, 6, 32);
    let vit = fixture("vit_tiny_test");
    let image = vit.join("image_exact.png");
    let reference = logits(&vit, &image, &dir.join("ref.safetensors"));
    for (recipe, method, min_sqnr) in [("w4a8", "repq,gptq", 12.0), ("w6a6", "smoothq,clip", 12.0), ("w4a4", "twin,noisy,clip", 3.0), ("w4a8", "adalog,gptq", 10.0)] {
        let out = dir.join(format!("{recipe}-{}", method.replace(',', "_")));
        ok(&["quantize", "--model", vit.to_str().unwrap(), "--recipe", recipe, "--method", method, "--calib", calib.to_str().unwrap(), "--calib-count", "4", "--out", out.to_str().unwrap()]);
        let desc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("quantization.json")).unwrap()).unwrap();
        // W4: the block Linears' uniform input quantizers run inside the integer kernel; W6
        // (q8-stored 6-bit weights) stays simulated.
        let activations = desc["activations"].as_str().unwrap();
        if recipe.starts_with("w4") {
            assert!(activations.starts_with("integer"), "{desc}");
            assert_eq!(desc["runtime"]["activations"], "int_static", "{desc}");
        } else {
            assert!(activations.starts_with("simulated") && desc["runtime"].is_null(), "{desc}");
        }
        let points = desc["activation_quantizers"].as_array().unwrap();
        assert_eq!(points.len(), 2 * 5, "{desc}");
        let softmax = points.iter().find(|p| p["node"] == "blocks.0.attn").unwrap();
        let want_kind = match method.split(',').next().unwrap() {
            "repq" => "log_sqrt2",
            "twin" => "twin",
            "adalog" => "adalog",
            _ => "uniform",
        };
        assert_eq!(softmax["kind"], want_kind, "{desc}");
        let block_format = desc["tensors"]["blocks.0.attn.qkv.weight"]["format"].as_str().unwrap().to_string();
        assert_eq!(block_format, if recipe.starts_with("w4") { "q4g32" } else { "q8" });
        let got = logits(&out, &image, &dir.join("q.safetensors"));
        let sqnr = lowbit::metrics::sqnr_db(&got, &reference);
        eprintln!("{recipe} {method}: logits SQNR {sqnr:.1} dB");
        assert!(sqnr > min_sqnr && sqnr < 80.0, "{recipe} {method}: logits SQNR {sqnr} dB");
        let profile = ok(&["classify", "--model", out.to_str().unwrap(), "--profile", image.to_str().unwrap()]);
        // 2 blocks × 4 Linear inputs: all simulated at W6; at W4 only twin's post-GELU ones.
        match (recipe, method.starts_with("twin")) {
            ("w6a6", _) => assert!(profile.contains("act_quant        (8 nodes)") && !profile.contains("w4_linear"), "{profile}"),
            (_, true) => assert!(profile.contains("act_quant        (2 nodes)") && profile.contains("w4_linear        (6 nodes)"), "{profile}"),
            _ => assert!(!profile.contains("act_quant ") && profile.contains("w4_linear        (8 nodes)"), "{profile}"),
        }
    }
    // Calibration is deterministic for a seed: the same bytes again.
    let again = dir.join("again");
    ok(&["quantize", "--model", vit.to_str().unwrap(), "--recipe", "w4a4", "--method", "twin,noisy,clip", "--calib", calib.to_str().unwrap(), "--calib-count", "4", "--out", again.to_str().unwrap()]);
    assert_eq!(std::fs::read(again.join("model.safetensors")).unwrap(), std::fs::read(dir.join("w4a4-twin_noisy_clip/model.safetensors")).unwrap());
}

#[test]
fn svdquant_adds_a_low_rank_branch_the_integer_kernel_runs() {
    let dir = scratch("svdquant");
    let calib = calibration_images(&dir, 6, 32);
    let vit = fixture("vit_tiny_test");
    let image = vit.join("image_exact.png");
    let reference = logits(&vit, &image, &dir.join("ref.safetensors"));
    let (mut sqnr, mut weight_db) = (Vec::new(), Vec::new());
    for (method, rank) in [("noisy,adalog,gptq,clip", None), ("svdquant,noisy,adalog,gptq,clip", Some("8"))] {
        let out = dir.join(format!("w4a8-{}", rank.unwrap_or("none")));
        let mut args = vec!["quantize", "--model", vit.to_str().unwrap(), "--recipe", "w4a8", "--method", method, "--calib", calib.to_str().unwrap(), "--calib-count", "4", "--out", out.to_str().unwrap()];
        if let Some(r) = rank {
            args.extend(["--rank", r]);
        }
        let stdout = ok(&args);
        // The per-layer weight SQNR the quantizer prints (codes plus the branch, if any).
        let layer_db: Vec<f64> = stdout.lines().filter(|l| l.starts_with("blocks.")).filter_map(|l| l.split_whitespace().rev().nth(1)?.parse().ok()).collect();
        assert_eq!(layer_db.len(), 8, "{stdout}");
        weight_db.push(layer_db.iter().sum::<f64>() / 8.0);
        let got = logits(&out, &image, &dir.join("q.safetensors"));
        sqnr.push(lowbit::metrics::sqnr_db(&got, &reference));
        if rank.is_some() {
            let desc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("quantization.json")).unwrap()).unwrap();
            assert_eq!(desc["svdquant"]["rank"], 8, "{desc}");
            assert_eq!(desc["svdquant"]["layers"], 8, "{desc}");
            let (shape, _) = common::read_f32(&out.join("model.safetensors"), "blocks.0.attn.qkv.lowrank_down");
            assert_eq!(shape[0], 8);
            let (shape, _) = common::read_f32(&out.join("model.safetensors"), "blocks.0.mlp.fc2.lowrank_up");
            assert_eq!(shape[1], 8);
        }
    }
    eprintln!("w4a8 logits SQNR: {:.1} dB, with svdquant rank 8: {:.1} dB; mean layer weight SQNR {:.1} → {:.1} dB", sqnr[0], sqnr[1], weight_db[0], weight_db[1]);
    // The branch takes the largest directions out of what the codes must cover. The fixture's
    // weights are random (a flat spectrum, no outliers), so the logits barely move here; on
    // digits-vit they gain several dB (docs/QUANTIZATION.md).
    assert!(weight_db[1] > weight_db[0] + 0.5, "{weight_db:?}");
    assert!(sqnr[1] > sqnr[0] - 1.0 && sqnr[1] > 12.0, "{sqnr:?}");
    // Refused before anything is written: a rank larger than a layer, rank 0, --rank without
    // svdquant, svdquant on a recipe without the integer kernel or with a non-uniform quantizer.
    let out = dir.join("bad");
    let (v, c, o) = (vit.to_str().unwrap(), calib.to_str().unwrap(), out.to_str().unwrap());
    refused(&["quantize", "--model", v, "--recipe", "w4a8", "--method", "svdquant", "--rank", "4096", "--calib", c, "--out", o], &["--rank 4096", "1 to"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w4a8", "--method", "svdquant", "--rank", "0", "--calib", c, "--out", o], &["--rank 0"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w4a8", "--rank", "8", "--calib", c, "--out", o], &["--rank", "svdquant"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w6a6", "--method", "svdquant,clip", "--calib", c, "--out", o], &["svdquant", "w6a6"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w4a16", "--method", "svdquant", "--out", o], &["svdquant", "w4a16"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w4a4", "--method", "svdquant,twin", "--calib", c, "--out", o], &["svdquant", "uniform"], &out);
}

#[test]
fn quantize_vqgan_decoder_with_tokens_then_decode() {
    let dir = scratch("vqgan");
    let vq = fixture("vqgan_tiny_test");
    let tokens = vq.join("io.safetensors");
    let out = dir.join("q");
    ok(&["quantize", "--model", vq.to_str().unwrap(), "--recipe", "w4a16", "--calib", tokens.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(out.join("config.yaml").is_file());
    let desc = std::fs::read_to_string(out.join("quantization.json")).unwrap();
    assert!(desc.contains("decoder.mid.attn_1.q.weight") && desc.contains("gptq+clip"), "{desc}");
    // Norms and the codebook stay f32.
    assert!(!desc.contains("quantize.embedding") && !desc.contains("norm1.weight"), "{desc}");
    let png = dir.join("out.png");
    ok(&["decode", "--model", out.to_str().unwrap(), "--tokens", tokens.to_str().unwrap(), "--out", png.to_str().unwrap()]);
    assert!(dir.join("out-0.png").is_file());
    // Mixed precision keeps q, k and v of an attention block in one format (one stacked conv).
    let mixed = dir.join("mixed");
    let stdout = ok(&["quantize", "--model", vq.to_str().unwrap(), "--recipe", "mixed:4.5", "--method", "clip", "--calib", tokens.to_str().unwrap(), "--out", mixed.to_str().unwrap()]);
    assert!(stdout.contains("decoder.mid.attn_1.q/k/v"), "{stdout}");
    let desc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(mixed.join("quantization.json")).unwrap()).unwrap();
    let fmt = |k: &str| desc["tensors"][format!("decoder.mid.attn_1.{k}.weight")]["format"].clone();
    assert!(fmt("q") == fmt("k") && fmt("k") == fmt("v"), "{desc}");
    ok(&["decode", "--model", mixed.to_str().unwrap(), "--tokens", tokens.to_str().unwrap(), "--out", png.to_str().unwrap(), "--force"]);
    // A VQModel with its encoder, calibrated on images: GPTQ sees the encoder's convs too
    // (including the stride-2 downsample), and `lowbit encode` loads the result.
    let full = fixture("vqgan_encoder_test");
    let calib = calibration_images(&dir, 3, 20);
    let out = dir.join("qe");
    ok(&["quantize", "--model", full.to_str().unwrap(), "--recipe", "fp4", "--method", "gptq", "--calib", calib.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let desc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("quantization.json")).unwrap()).unwrap();
    assert_eq!(desc["tensors"]["encoder.down.0.downsample.conv.weight"]["method"], "gptq", "{desc}");
    assert_eq!(desc["tensors"]["decoder.conv_out.weight"]["format"], "fp4g32", "{desc}");
    let tokens = dir.join("tokens.safetensors");
    ok(&["encode", "--model", out.to_str().unwrap(), "--out", tokens.to_str().unwrap(), full.join("../vit_tiny_test/image_exact.png").to_str().unwrap()]);
    assert!(tokens.is_file());
}

/// Exit code 1, every word in the message, no panic, and nothing written next to `out`.
fn refused(args: &[&str], words: &[&str], out: &Path) {
    let o = lowbit(args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "lowbit {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for w in words {
        assert!(stderr.contains(w), "lowbit {args:?}: `{w}` not in: {stderr}");
    }
    assert!(!out.exists(), "{} was written", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).collect();
    assert!(leftovers.is_empty(), "temporary folders left: {leftovers:?}");
}

#[test]
fn bad_input_is_refused_without_output() {
    let dir = scratch("bad");
    let vit = fixture("vit_tiny_test");
    let v = vit.to_str().unwrap();
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    let empty = dir.join("empty");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    std::fs::write(empty.join("notes.txt"), "not an image").unwrap();
    let calib = calibration_images(&dir, 2, 32);
    let c = calib.to_str().unwrap();
    refused(&["quantize", "--model", v, "--recipe", "w4a16", "--method", "gptq", "--calib", empty.to_str().unwrap(), "--out", o], &["no PNG or JPEG", "empty"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w4a16", "--method", "gptq", "--calib", "/nonexistent/calib", "--out", o], &["/nonexistent/calib"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w3a16", "--out", o], &["unknown recipe `w3a16`"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w4a16", "--method", "rtn,magic", "--out", o], &["unknown method `magic`"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w4a16", "--method", "adalog", "--out", o], &["adalog", "f32 activations"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w8a8", "--method", "repq", "--out", o], &["repq", "w8a8", "per token"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w6a6", "--method", "repq,gptq", "--calib", c, "--out", o], &["gptq", "w6a6"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w6a6", "--method", "gptq", "--calib", c, "--out", o], &["gptq", "w6a6"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w4a8", "--method", "repq,smoothq", "--calib", c, "--out", o], &["repq", "smoothq"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w4a8", "--method", "log2,twin", "--calib", c, "--out", o], &["post-softmax"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w4a8", "--method", "repq,magic", "--calib", c, "--out", o], &["unknown method `magic`"], &out);
    let vq = fixture("vqgan_tiny_test");
    refused(&["quantize", "--model", vq.to_str().unwrap(), "--recipe", "w4a4", "--calib", vq.join("io.safetensors").to_str().unwrap(), "--out", o], &["w4a4", "ViT"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w4a16", "--method", "gptq", "--out", o], &["gptq", "--calib"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w4a4", "--out", o], &["w4a4", "activation"], &out);
    refused(&["quantize", "--model", v, "--recipe", "mixed:1.5", "--calib", c, "--out", o], &["mixed:1.5", "below the smallest allocation"], &out);
    refused(&["quantize", "--model", v, "--recipe", "mixed:abc", "--out", o], &["mixed:abc"], &out);
    refused(&["quantize", "--model", v, "--recipe", "w4a16", "--calib", c, "--calib-count", "0", "--out", o], &["--calib-count"], &out);
    // An already quantized model.
    let q = dir.join("q");
    ok(&["quantize", "--model", v, "--recipe", "w8a16", "--method", "rtn", "--out", q.to_str().unwrap()]);
    refused(&["quantize", "--model", q.to_str().unwrap(), "--recipe", "w4a16", "--method", "rtn", "--out", o], &["already quantized"], &out);
    // An existing --out is not overwritten.
    let before = std::fs::read(q.join("model.safetensors")).unwrap();
    let o2 = lowbit(&["quantize", "--model", v, "--recipe", "w4a16", "--method", "rtn", "--out", q.to_str().unwrap()]);
    assert_eq!(o2.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o2.stderr).contains("already exists"));
    assert_eq!(std::fs::read(q.join("model.safetensors")).unwrap(), before);
}
