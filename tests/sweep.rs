//! `tools/sweep.py`: a 2×2 recipe grid on a local Ray instance, resumed without rerunning what
//! finished, and bad cells (an unknown recipe, a missing model folder) reported in place while
//! the others finish. Skipped, saying why, where Python has no `ray` (`.ci/run` installs it).

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn python_has(module: &str) -> bool {
    Command::new("python3").args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success())
}

fn sweep(args: &[String], out: &Path) -> String {
    let o = Command::new("python3")
        .arg(root().join("tools/sweep.py"))
        .args(args)
        .args(["--out", out.to_str().unwrap(), "--lowbit", env!("CARGO_BIN_EXE_lowbit"), "--num-cpus", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "tools/sweep.py {args:?} failed:\n{text}\n{}", String::from_utf8_lossy(&o.stderr));
    text
}

fn records(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn sweep_grid_on_local_ray() {
    if !python_has("ray") {
        eprintln!("skipping the sweep test: python3 has no `ray` (pip install ray matplotlib)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("lowbit-sweep-{}", std::process::id()));
    let (images, calib) = (dir.join("images"), dir.join("calib"));
    for d in [&images, &calib] {
        std::fs::create_dir_all(d).unwrap();
    }
    for entry in std::fs::read_dir(root().join("assets/samples")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("digit-") {
            std::fs::copy(&path, images.join(&name)).unwrap();
            if name.ends_with("-0.png") {
                std::fs::copy(&path, calib.join(&name)).unwrap();
            }
        }
    }
    let model = root().join("assets/models/digits-vit");
    let (out, table, plot) = (dir.join("results.jsonl"), dir.join("QUANTIZATION.md"), dir.join("sweep.png"));
    std::fs::write(&table, "# Quantization\n\nText before the table stays.\n").unwrap();
    let grid = |recipes: &str, models: &str| {
        let mut args = vec!["--models", models, "--recipes", recipes, "--methods", "rtn,clip", "--calib-counts", "4"];
        args.extend(["--calib", calib.to_str().unwrap(), "--images", images.to_str().unwrap(), "--table", table.to_str().unwrap()]);
        if python_has("matplotlib") {
            args.extend(["--plot", plot.to_str().unwrap()]);
        }
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| sweep(&args, &out);

    let text = run(grid("w8a16,w4a16", model.to_str().unwrap()));
    assert!(text.contains("4 cells, 0 already done, 4 to run"), "{text}");
    let first = records(&out);
    assert_eq!(first.len(), 4);
    for r in &first {
        assert_eq!(r["status"], "ok", "{r}");
        let (cosine, bits) = (r["cosine"].as_f64().unwrap(), r["bits_per_weight"].as_f64().unwrap());
        // 4-bit weights cost digits-vit a little, 8-bit almost nothing (tests/quantize.rs).
        let (min_cosine, max_bits) = if r["recipe"] == "w8a16" { (0.9999, 9.0) } else { (0.99, 6.0) };
        assert!(cosine >= min_cosine && bits <= max_bits && bits > 4.0, "{r}");
    }

    // Resumed: the finished cells are skipped. Bad cells fail in place; the good one finishes.
    let missing = dir.join("gone-model");
    let models = format!("{},{}", model.display(), missing.display());
    let text = run(grid("w4a16,bogus", &models));
    assert!(text.contains("8 cells, 2 already done, 6 to run"), "{text}");
    let all = records(&out);
    assert_eq!(all.len(), 10, "each cell is recorded once per run that ran it");
    let errors: Vec<&serde_json::Value> = all.iter().filter(|r| r["status"] == "error").collect();
    assert_eq!(errors.len(), 6, "bogus on both models, and w4a16 on the missing one: {all:?}");
    for e in &errors {
        let msg = e["error"].as_str().unwrap();
        assert!(msg.contains("unknown recipe `bogus`") || msg.contains("gone-model"), "{msg}");
    }
    let doc = std::fs::read_to_string(&table).unwrap();
    assert!(doc.starts_with("# Quantization\n\nText before the table stays.") && doc.contains("<!-- sweep:begin -->"), "{doc}");
    assert_eq!(doc.matches("| digits-vit | w4a16 |").count(), 2, "{doc}");
    if python_has("matplotlib") {
        assert!(image::open(&plot).is_ok(), "no plot at {}", plot.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
