//! Issue 14 item 5: every command that writes files (decode, generate, encode, demo, quantize,
//! compress, decompress)
//! writes under temporary names and renames at the end, so an interrupted run leaves no
//! partial file under a final name. Each command is interrupted here while its outputs are
//! half written (`LOWBIT_FAULT_WRITE_DELAY_MS` pauses after each staged file, so the kill
//! lands between them), by SIGINT (the temporaries are removed, exit 130), by SIGKILL (hidden
//! `.lowbit-tmp` temporaries may stay, swept by the next run) and by a lost device
//! (`LOWBIT_FAULT_LOSE_DEVICE_AFTER`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fixture_dir;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lowbit-interrupt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Each command: its arguments writing into `dir`, and whether it stages several files (a
/// kill between staged files is then possible) or writes one temporary folder (quantize).
fn command(name: &str, dir: &Path) -> Vec<String> {
    let f = |n: &str| s(&fixture_dir(n));
    let out = |n: &str| s(&dir.join(n));
    let args: Vec<String> = match name {
        "decode" => vec!["decode".into(), "--model".into(), f("vqgan_tiny_test"), "--tokens".into(), s(&fixture_dir("vqgan_tiny_test/io.safetensors")), "--out".into(), out("x.png"), "--save-tensor".into(), out("x.safetensors")],
        "generate" => vec!["generate".into(), "--prior".into(), f("prior_test"), "--decoder".into(), f("vqgan_encoder_test"), "--class".into(), "0".into(), "--count".into(), "2".into(), "--out".into(), out("g")],
        "encode" => vec!["encode".into(), "--model".into(), f("vqgan_encoder_test"), "--out".into(), out("t.safetensors"), s(&fixture_dir("vit_tiny_test/image_exact.png")), s(&fixture_dir("vit_tiny_test/image_exact.png"))],
        "demo" => vec!["demo".into(), "--out".into(), out("demo"), "--precisions".into(), "f32".into(), "--per-class".into(), "1".into(), "--photo-size".into(), "32".into()],
        "compress" => vec!["compress".into(), "--tokenizer".into(), f("vqgan_encoder_test"), "--out".into(), out("c.lbt"), s(&fixture_dir("vit_tiny_test/image_exact.png")), s(&fixture_dir("vit_tiny_test/image_exact.png"))],
        "decompress" => vec!["decompress".into(), s(source_lbt()), "--out".into(), out("d")],
        // A decoder calibrated on tokens: its calibration passes run on the GPU (a ViT's run on
        // the CPU where the adapter is lavapipe, and would never see the device lost).
        "quantize" => vec!["quantize".into(), "--model".into(), f("vqgan_tiny_test"), "--recipe".into(), "w8a16".into(), "--calib".into(), s(&fixture_dir("vqgan_tiny_test/io.safetensors")), "--out".into(), out("q")],
        _ => unreachable!(),
    };
    args
}

/// A `.lbt` for the decompress runs, compressed once (without faults) by the same command.
fn source_lbt() -> &'static Path {
    static LBT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LBT.get_or_init(|| {
        let dir = scratch("lbt-source");
        let out = spawn(&command("compress", &dir), &[]).wait_with_output().unwrap();
        assert!(out.status.success(), "compress: {}", String::from_utf8_lossy(&out.stderr));
        dir.join("c.lbt")
    })
}

fn spawn(args: &[String], env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lowbit"));
    c.current_dir(env!("CARGO_MANIFEST_DIR")).args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// Every file and folder under `dir`, as paths relative to it.
fn entries(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if p.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A staged file (`.NAME.PID.lowbit-tmp`), quantize's folder (`.NAME.tmp-PID`) or inside it.
fn is_temporary(name: &str) -> bool {
    name.split('/').any(|c| c.starts_with('.') && (c.ends_with(".lowbit-tmp") || c.contains(".tmp-")))
}

/// quantize's one output is a folder renamed into place whole: absent, or complete (weights,
/// description, and the source's config: the taming decoder quantized here has config.yaml).
fn assert_absent_or_complete(what: &str, q: &Path) {
    if q.exists() {
        for f in ["model.safetensors", "config.yaml", "quantization.json"] {
            assert!(q.join(f).is_file(), "{what}: q/ exists without {f}");
        }
    }
}

/// Waits until `dir` holds a temporary (the run is writing its outputs), up to `limit`.
fn wait_for_temporary(child: &mut Child, dir: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if entries(dir).iter().any(|e| is_temporary(e)) {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Sends SIGINT (a run that already ended has nothing to interrupt: `kill` then fails).
fn sigint(child: &Child) {
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).stderr(Stdio::null()).status();
}

/// Nothing under a final name: only temporaries (hidden, `.lowbit-tmp` / `.tmp-PID`) and the
/// folders the command creates before its work (`g`, `demo`).
fn assert_no_final_outputs(what: &str, dir: &Path) {
    let finals: Vec<String> = entries(dir).into_iter().filter(|e| !is_temporary(e) && !dir.join(e).is_dir()).collect();
    assert!(finals.is_empty(), "{what}: outputs under their final names after the interruption: {finals:?}");
}

/// SIGINT while the outputs are half written: exit 130, a message, no output, no temporary.
fn sigint_while_writing(name: &str) {
    let dir = scratch(&format!("{name}-int"));
    let mut child = spawn(&command(name, &dir), &[("LOWBIT_FAULT_WRITE_DELAY_MS", "3000")]);
    let caught = wait_for_temporary(&mut child, &dir, Duration::from_secs(240));
    sigint(&child);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if name == "quantize" {
        // Its folder is written in one go (no pause to aim at): the signal may land before,
        // during or after the rename, and whichever it was, q/ is absent or whole.
        assert_absent_or_complete(name, &dir.join("q"));
        if out.status.code() == Some(130) {
            assert!(entries(&dir).iter().all(|e| !is_temporary(e)), "{name}: temporaries left after SIGINT: {:?}", entries(&dir));
        }
        return;
    }
    // Staged commands pause after each file: the signal always lands mid-write.
    assert!(caught, "{name}: never saw a temporary output: {stderr}");
    {
        assert_eq!(out.status.code(), Some(130), "{name}: {stderr}");
        assert!(stderr.contains("interrupted") && !stderr.contains("panicked"), "{name}: {stderr}");
        assert_no_final_outputs(name, &dir);
        let left: Vec<String> = entries(&dir).into_iter().filter(|e| is_temporary(e)).collect();
        assert!(left.is_empty(), "{name}: temporaries left after SIGINT: {left:?}");
    }
}

/// SIGKILL (nothing can be cleaned up) while writing: no output under its final name.
fn sigkill_while_writing(name: &str) -> PathBuf {
    let dir = scratch(&format!("{name}-kill"));
    let mut child = spawn(&command(name, &dir), &[("LOWBIT_FAULT_WRITE_DELAY_MS", "3000")]);
    let caught = wait_for_temporary(&mut child, &dir, Duration::from_secs(240));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    if name == "quantize" {
        assert_absent_or_complete(name, &dir.join("q"));
    } else {
        assert!(caught, "{name}: never saw a temporary output: {}", String::from_utf8_lossy(&out.stderr));
        assert_no_final_outputs(name, &dir);
    }
    dir
}

/// A device lost mid-run (before its second submission): exit 1 naming the loss, nothing written.
fn device_lost_mid_run(name: &str) {
    let dir = scratch(&format!("{name}-lost"));
    let out = spawn(&command(name, &dir), &[("LOWBIT_FAULT_LOSE_DEVICE_AFTER", "1")]).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
    assert!(stderr.contains("device was lost") && !stderr.contains("panicked"), "{name}: {stderr}");
    assert!(entries(&dir).iter().all(|e| dir.join(e).is_dir()), "{name}: files after a lost device: {:?}", entries(&dir));
}

#[test]
fn decode_interrupted() {
    sigint_while_writing("decode");
    sigkill_while_writing("decode");
    device_lost_mid_run("decode");
}

#[test]
fn generate_interrupted() {
    sigint_while_writing("generate");
    sigkill_while_writing("generate");
    device_lost_mid_run("generate");
}

#[test]
fn encode_interrupted_and_the_next_run_sweeps_the_killed_ones_temporaries() {
    sigint_while_writing("encode");
    let dir = sigkill_while_writing("encode");
    assert!(entries(&dir).iter().any(|e| e.ends_with(".lowbit-tmp")), "SIGKILL left no temporary: {:?}", entries(&dir));
    let args = command("encode", &dir);
    let out = spawn(&args, &[]).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(entries(&dir), ["t.safetensors"], "the killed run's temporary is still there");
    device_lost_mid_run("encode");
}

#[test]
fn quantize_interrupted() {
    sigint_while_writing("quantize");
    sigkill_while_writing("quantize");
    device_lost_mid_run("quantize");
    // Killed at any moment, the output folder is absent or complete.
    for delay in [100, 250, 400, 550] {
        let dir = scratch(&format!("quantize-at-{delay}"));
        let mut child = spawn(&command("quantize", &dir), &[]);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_absent_or_complete(&format!("killed after {delay} ms"), &dir.join("q"));
    }
}

#[test]
fn demo_interrupted() {
    // SIGINT mid-run (during the models' work, before any file), then SIGKILL mid-write.
    let dir = scratch("demo-early");
    let child = spawn(&command("demo", &dir), &[]);
    std::thread::sleep(Duration::from_secs(3));
    sigint(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert_no_final_outputs("demo", &dir);
    sigkill_while_writing("demo");
    device_lost_mid_run("demo");
}

#[test]
fn compress_interrupted() {
    sigint_while_writing("compress");
    sigkill_while_writing("compress");
    device_lost_mid_run("compress");
}

#[test]
fn decompress_interrupted() {
    sigint_while_writing("decompress");
    sigkill_while_writing("decompress");
    device_lost_mid_run("decompress");
}
