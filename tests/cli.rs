//! The `lowbit` binary's contracts (subcommands, flags, tensor names in output files) on the
//! fixtures, and its behaviour on bad input: a message naming the problem, exit code 1, no panic.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_parity, lowbit};
use lowbit::models::vqgan::TokenGrid;

fn fixture(name: &str) -> PathBuf {
    common::fixture_dir(name)
}

fn ok(args: &[&str]) -> String {
    common::lowbit_ok(args)
}

/// Fails with exit code 1 and an `error:` line containing every one of `words`.
fn fails(args: &[&str], words: &[&str]) {
    let out = lowbit(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "lowbit {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "lowbit {args:?} panicked: {stderr}");
    for w in words {
        assert!(stderr.contains(w), "lowbit {args:?}: `{w}` not in: {stderr}");
    }
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lowbit-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    common::read_f32(path, name)
}

#[test]
fn classify_saves_logits_in_argument_order() {
    let out = tmp("logits.safetensors");
    let model = fixture("vit_tiny_test");
    let (exact, resized) = (model.join("image_exact.png"), model.join("image_resized.png"));
    let args = ["classify", "--model", model.to_str().unwrap(), "--topk", "3", "--save-logits", out.to_str().unwrap()];
    let stdout = ok(&[&args[..], &[exact.to_str().unwrap(), resized.to_str().unwrap()]].concat());
    assert!(stdout.contains("image_exact.png") && stdout.contains("image_resized.png"), "{stdout}");
    let (shape, logits) = tensor(&out, "logits");
    assert_eq!(shape, [2, 10]);
    let io = fixture("vit_tiny_test/io.safetensors");
    assert_parity("exact", &logits[..10], &tensor(&io, "logits_exact").1);
    assert_parity("resized", &logits[10..], &tensor(&io, "logits_resized").1);
    // f16 weights and --profile run too.
    let stdout = ok(&["classify", "--model", model.to_str().unwrap(), "--precision", "f16", "--profile", exact.to_str().unwrap()]);
    assert!(stdout.contains("per op:") && stdout.contains("blocks.0.attn.qkv"), "{stdout}");
}

#[test]
fn decode_and_encode_round_trip() {
    let model = fixture("vqgan_tiny_test");
    let png = tmp("decoded.png");
    let raw = tmp("decoded.safetensors");
    let tokens = model.join("io.safetensors");
    let args = ["decode", "--model", model.to_str().unwrap(), "--tokens", tokens.to_str().unwrap(), "--out", png.to_str().unwrap()];
    let stdout = ok(&[&args[..], &["--save-tensor", raw.to_str().unwrap()]].concat());
    // B = 2: OUT-0.png, OUT-1.png.
    assert!(stdout.contains("decoded-0.png") && stdout.contains("decoded-1.png"), "{stdout}");
    assert!(tmp("decoded-1.png").is_file());
    let (shape, image) = tensor(&raw, "image");
    assert_eq!(shape, [2, 3, 16, 16]);
    assert_parity("decode", &image, &tensor(&tokens, "image").1);

    let enc_model = fixture("vqgan_encoder_test");
    let ids = tmp("tokens.safetensors");
    ok(&["encode", "--model", enc_model.to_str().unwrap(), "--out", ids.to_str().unwrap(), tmp("decoded-0.png").to_str().unwrap()]);
    let grid = TokenGrid::load(&ids, "tokens").unwrap();
    assert_eq!(grid.shape(), [1, 8, 8]);
    let back = tmp("back.png");
    ok(&["decode", "--model", enc_model.to_str().unwrap(), "--tokens", ids.to_str().unwrap(), "--out", back.to_str().unwrap(), "--profile"]);
    assert!(back.is_file());
}

#[test]
fn info_and_bench_model_report_memory() {
    let stdout = ok(&["info", fixture("vit_tiny_test").to_str().unwrap()]);
    for want in ["parameters: 67258", "q4g32", "ternary", "planned peak GPU memory"] {
        assert!(stdout.contains(want), "{want}: {stdout}");
    }
    let stdout = ok(&["bench", "model", "--model", fixture("vqgan_tiny_test").to_str().unwrap(), "--json", "--reps", "10"]);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for key in ["median_ms", "images_per_s", "peak_gpu_bytes", "adapter"] {
        assert!(v.get(key).is_some(), "{key}: {v}");
    }
    assert!(v["median_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_input_is_a_clear_error() {
    let vit = fixture("vit_tiny_test");
    let vqgan = fixture("vqgan_tiny_test");
    let garbage = tmp("garbage.png");
    std::fs::write(&garbage, b"not an image").unwrap();
    fails(&["classify", "--model", vit.to_str().unwrap(), garbage.to_str().unwrap()], &["garbage.png"]);
    fails(&["classify", "--model", "/nonexistent", garbage.to_str().unwrap()], &["nonexistent"]);
    let truncated = tmp("truncated");
    std::fs::create_dir_all(&truncated).unwrap();
    let bytes = std::fs::read(vit.join("model.safetensors")).unwrap();
    std::fs::write(truncated.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::copy(vit.join("config.json"), truncated.join("config.json")).unwrap();
    fails(&["info", truncated.to_str().unwrap()], &["safetensors"]);
    // Token 64 in a 64-entry codebook.
    let bad = tmp("bad_tokens.safetensors");
    TokenGrid::new(&[1, 2, 2], vec![0, 1, 64, 3]).unwrap().save(&bad, "tokens").unwrap();
    let out = tmp("never.png");
    fails(&["decode", "--model", vqgan.to_str().unwrap(), "--tokens", bad.to_str().unwrap(), "--out", out.to_str().unwrap()], &["64"]);
    assert!(!out.exists());
    let encoder = fixture("vqgan_encoder_test");
    fails(&["encode", "--model", encoder.to_str().unwrap(), "--out", out.to_str().unwrap(), garbage.to_str().unwrap()], &["garbage.png"]);
    // A decoder-only checkpoint has no encoder to run.
    fails(&["encode", "--model", vqgan.to_str().unwrap(), "--out", out.to_str().unwrap(), garbage.to_str().unwrap()], &["encoder.conv_in.weight"]);
}

/// A healthy run prints nothing on stderr (issue 16: no noise in scripts and CI logs); `--verbose`
/// adds each step's time, `--quiet` keeps even warnings away.
#[test]
fn healthy_runs_are_quiet_on_stderr() {
    let vit = common::fixture_dir("vit_tiny_test");
    let image = vit.join("image_exact.png");
    let dir = std::env::temp_dir().join(format!("lowbit-quiet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("calib")).unwrap();
    std::fs::copy(&image, dir.join("calib/a.png")).unwrap();
    let run = |extra: &[&str], out: &str| {
        let mut args = vec!["quantize", "--model", vit.to_str().unwrap(), "--recipe", "w4a16", "--method", "gptq", "--calib"];
        let calib = dir.join("calib");
        let out = dir.join(out);
        args.extend([calib.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        args.extend(extra);
        let o = common::lowbit(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert_eq!(run(&[], "a"), "", "a healthy quantize printed on stderr");
    assert!(run(&["--verbose"], "b").contains("calibrating (layer inputs)"), "--verbose shows the steps");
    let o = common::lowbit(&["classify", "--model", vit.to_str().unwrap(), image.to_str().unwrap()]);
    assert!(o.status.success() && o.stderr.is_empty(), "classify: {}", String::from_utf8_lossy(&o.stderr));
    let o = common::lowbit(&["--quiet", "--verbose", "info", vit.to_str().unwrap()]);
    assert!(!o.status.success(), "--quiet and --verbose conflict");
    let _ = std::fs::remove_dir_all(&dir);
}
