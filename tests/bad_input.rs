//! Issue 19's bad inputs, one test per item (reproducers scaled down): each is a clear error
//! naming the problem and any limit, exit code 1, no panic, and nothing half-written.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{fixture_dir, lowbit};
use lowbit::formats::{PackedMatrix, WeightFormat};
use lowbit::models::packed::{self, Description, PackedTensor};
use lowbit::models::vqgan::TokenGrid;
use lowbit::models::Weights;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn asset(name: &str) -> String {
    root().join("assets/models").join(name).to_str().unwrap().to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh scratch folder per test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lowbit-bad-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Exit code 1, no panic, an `error:` line with every one of `words`; returns stderr.
fn fails(args: &[&str], words: &[&str]) -> String {
    let out = lowbit(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "lowbit {args:?}: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("memory allocation"), "lowbit {args:?}: {stderr}");
    for w in words {
        assert!(stderr.contains(w), "lowbit {args:?}: `{w}` not in: {stderr}");
    }
    stderr
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// A PNG whose header declares `w`×`h` grayscale, with an empty image stream: enough for a
/// reader that checks the header first, and no memory to build.
fn png_header_only(path: &Path, w: u32, h: u32) {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        let body: Vec<u8> = kind.iter().chain(data).copied().collect();
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
        out
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &[]));
    png.extend(chunk(b"IEND", &[]));
    std::fs::write(path, png).unwrap();
}

// 1
#[test]
fn generate_count_is_checked_against_a_limit_before_allocating() {
    let dir = scratch("count");
    let prior = asset("digits-prior");
    for count in ["18446744073709551615", "2000000000", "1000000"] {
        let err = fails(&["generate", "--prior", &prior, "--class", "3", "--count", count, "--out", s(&dir)], &["--count", "limit"]);
        assert!(!err.contains("2000000 sequences"), "{err}");
    }
    // The limit halves with guidance (each image sampled twice), and says so.
    fails(&["generate", "--prior", &prior, "--class", "3", "--count", "100000", "--guidance", "3", "--out", s(&dir)], &["guidance"]);
}

#[test]
fn kv_bits_the_prior_cannot_use_are_refused_before_any_work() {
    let dir = scratch("kv-bits");
    let out = dir.join("g");
    for bits in ["3", "16", "0", "1"] {
        fails(&["generate", "--prior", &asset("digits-prior"), "--class", "3", "--kv-bits", bits, "--out", s(&out)], &["--kv-bits", "[8, 4, 2]"]);
        fails(&["demo", "--kv-bits", bits, "--out", s(&out)], &["--kv-bits", "[8, 4, 2]"]);
    }
    assert!(!out.exists(), "no partial output");
}

// 2, 9 (prior)
#[test]
fn prior_config_is_limited_and_checked_against_the_checkpoint() {
    let dir = scratch("prior");
    let out = scratch("prior-out");
    for (key, value, words) in [
        ("n_layer", serde_json::json!(1_000_000_000_000_000_000u64), &["n_layer", "limit"][..]),
        ("n_layer", serde_json::json!(1000), &["n_layer", "blocks.999"][..]),
        ("null_class", serde_json::json!(30), &["null_class"][..]),
    ] {
        copy_dir(&fixture_dir("prior_test"), &dir);
        edit_json(&dir.join("config.json"), |v| v[key] = value);
        let decoder = fixture_dir("vqgan_encoder_test");
        fails(&["generate", "--prior", s(&dir), "--decoder", s(&decoder), "--class", "0", "--out", s(&out)], words);
    }
}

// 3 (the resize; crop_pct's own bounds are the ViT config's)
#[test]
fn a_resize_over_the_pixel_limit_is_refused_before_allocating() {
    let cfg = lowbit::models::PreprocessConfig {
        input_size: (8, 8),
        mean: [0.5; 3],
        std: [0.5; 3],
        crop_pct: 1e-6,
        interpolation: "bicubic".into(),
    };
    let img = image::RgbImage::new(16, 12);
    let err = lowbit::models::preprocess(&img, &cfg).unwrap_err().to_string();
    assert!(err.contains("limit") && err.contains("crop_pct"), "{err}");
}

// 4
#[test]
fn huge_images_are_refused_from_their_header() {
    let dir = scratch("huge");
    let png = dir.join("huge.png");
    png_header_only(&png, 20000, 20000);
    let vit = fixture_dir("vit_tiny_test");
    fails(&["classify", "--model", s(&vit), s(&png)], &["huge.png", "20000×20000", "limit"]);
    let enc = fixture_dir("vqgan_encoder_test");
    fails(&["encode", "--model", s(&enc), "--out", s(&dir.join("t.safetensors")), s(&png)], &["huge.png", "limit"]);
}

// 5
#[test]
fn a_closed_stdout_ends_quietly() {
    let vit = fixture_dir("vit_tiny_test");
    let image = vit.join("image_exact.png");
    let args = ["classify", "--model", s(&vit), s(&image)];
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lowbit")).args(args).stdout(full).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && out.status.code() == Some(1) && stderr.contains("standard output"), "{stderr}");
    // A reader that has gone (`| head -1`): the pipe is closed before lowbit prints.
    let mut child = Command::new(env!("CARGO_BIN_EXE_lowbit")).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && out.status.success(), "{:?} {stderr}", out.status);
}

// 6
#[test]
fn only_regular_files_are_read_and_walks_count_each_image_once() {
    let dir = scratch("files");
    let vit = fixture_dir("vit_tiny_test");
    let vq = fixture_dir("vqgan_tiny_test");
    let fifo = dir.join("fifo.png");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    fails(&["classify", "--model", s(&vit), s(&fifo)], &["fifo.png", "not a regular file"]);
    let out = dir.join("x.png");
    fails(&["decode", "--model", s(&vq), "--tokens", "/dev/zero", "--out", s(&out)], &["/dev/zero", "not a regular file"]);
    fails(&["classify", "--model", s(&vit), "--labels", "/dev/zero", s(&vit.join("image_exact.png"))], &["--labels", "/dev/zero"]);
    // A token batch over the stated limit, refused before decoding anything.
    let many = dir.join("many.safetensors");
    TokenGrid::new(&[1025, 1, 1], vec![0; 1025]).unwrap().save(&many, "tokens").unwrap();
    fails(&["decode", "--model", s(&vq), "--tokens", s(&many), "--out", s(&out)], &["1025", "limit of 1024"]);
    assert!(!dir.join("x-0.png").exists());
    // An ImageFolder with a link loop counts its one image once.
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("0")).unwrap();
    std::fs::copy(vit.join("image_exact.png"), data.join("0/a.png")).unwrap();
    std::os::unix::fs::symlink("..", data.join("0/loop")).unwrap();
    let stdout = common::lowbit_ok(&["eval", "--model", s(&vit), "--data", s(&data), "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["images"], 1, "{v}");
    // An empty folder is not called a calibration folder outside calibration.
    let empty = dir.join("empty");
    std::fs::create_dir_all(empty.join("0")).unwrap();
    let err = fails(&["eval", "--model", s(&vit), "--data", s(&empty)], &["no PNG or JPEG"]);
    assert!(!err.contains("calibration"), "{err}");
}

// 7
#[test]
fn non_finite_tensors_are_refused_at_load_naming_file_and_tensor() {
    let dir = scratch("nan");
    let vq = fixture_dir("vqgan_tiny_test");
    copy_dir(&vq, &dir);
    let w = Weights::load(&vq.join("model.safetensors")).unwrap();
    assert!(w.words.is_empty());
    let mut names: Vec<&String> = w.tensors.keys().collect();
    names.sort();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = names
        .iter()
        .map(|n| {
            let t = &w.tensors[*n];
            let mut data = t.data.clone();
            if *n == "post_quant_conv.bias" {
                data[0] = f32::NAN;
            }
            (n.to_string(), t.shape.clone(), data)
        })
        .collect();
    let views: Vec<(&str, &[usize], &[f32])> = tensors.iter().map(|(n, s, d)| (n.as_str(), &s[..], &d[..])).collect();
    lowbit::models::weights::save_f32(&dir.join("model.safetensors"), &views).unwrap();
    let tokens = vq.join("io.safetensors");
    let out = dir.join("x.png");
    fails(&["decode", "--model", s(&dir), "--tokens", s(&tokens), "--out", s(&out)], &["model.safetensors", "post_quant_conv.bias", "NaN"]);
    assert!(!out.exists() && !dir.join("x-0.png").exists());
    // Packed f16 scales too.
    let mut m = PackedMatrix::quantize(&[0.5; 64], 2, 32, WeightFormat::parse("q4g32").unwrap()).unwrap();
    m.scales[0] = 0x7E00;
    let err = load_packed(&dir, &m, |_| {}, &[]).unwrap_err().to_string();
    assert!(err.contains("w.scales") && err.contains("NaN") && err.contains("packed.safetensors"), "{err}");
}

/// Saves matrix `w` packed as `m` with `edit` applied to its description and `extra` U32
/// tensors added, then loads the file back.
fn load_packed(dir: &Path, m: &PackedMatrix, edit: impl FnOnce(&mut Description), extra: &[(&str, Vec<usize>, Vec<u32>)]) -> lowbit::Result<Weights> {
    let path = dir.join("packed.safetensors");
    let entry = PackedTensor { format: m.format.name(), shape: vec![m.rows, m.cols], extra: BTreeMap::new() };
    let desc = Description { tensors: BTreeMap::from([("w".to_string(), entry)]), ..Default::default() };
    packed::save(&path, &[("b".to_string(), vec![2], vec![0.0, 1.0])], &[("w".to_string(), m.clone())], &desc).unwrap();
    // Re-write with the edits, keeping the checksum `save` recorded.
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut desc: Description = serde_json::from_str(&header.metadata().as_ref().unwrap()[packed::METADATA_KEY]).unwrap();
    edit(&mut desc);
    let mut words: Vec<(String, Vec<usize>, Vec<u32>)> = packed::tensors("w", m);
    words.extend(extra.iter().map(|(n, s, w)| (n.to_string(), s.clone(), w.clone())));
    let b = [0.0f32, 1.0];
    let mut views = vec![("b".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], bytemuck::cast_slice(&b)).unwrap())];
    for (n, s, w) in &words {
        views.push((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::U32, s.clone(), bytemuck::cast_slice(w)).unwrap()));
    }
    let meta = HashMap::from([(packed::METADATA_KEY.to_string(), serde_json::to_string(&desc).unwrap())]);
    safetensors::serialize_to_file(views, Some(meta), &path).unwrap();
    Weights::load(&path)
}

// 8
#[test]
fn packed_descriptions_must_match_their_tensors() {
    let dir = scratch("packed");
    let m = PackedMatrix::quantize(&(0..64).map(|i| i as f32 / 64.0).collect::<Vec<_>>(), 2, 32, WeightFormat::parse("q4g32").unwrap()).unwrap();
    load_packed(&dir, &m, |_| {}, &[]).unwrap();
    let relabelled = load_packed(&dir, &m, |d| d.tensors.get_mut("w").unwrap().format = "fp4g32".into(), &[]).unwrap_err().to_string();
    assert!(relabelled.contains("fp4g32") && relabelled.contains("checksum"), "{relabelled}");
    let extra = load_packed(&dir, &m, |_| {}, &[("w.zeros", vec![1], vec![0])]).unwrap_err().to_string();
    assert!(extra.contains("w.zeros"), "{extra}");
    let for_float = |d: &mut Description| {
        let t = d.tensors["w"].clone();
        d.tensors.insert("b".into(), PackedTensor { shape: vec![2, 1], ..t });
    };
    let float = load_packed(&dir, &m, for_float, &[]).unwrap_err().to_string();
    assert!(float.contains(" b ") && float.contains("floats"), "{float}");
    let absent = |d: &mut Description| {
        let t = d.tensors["w"].clone();
        d.tensors.insert("ghost".into(), t);
    };
    let absent = load_packed(&dir, &m, absent, &[]).unwrap_err().to_string();
    assert!(absent.contains("ghost"), "{absent}");
    // The codes' words with their length right and their shape wrong.
    let mut flat = m.clone();
    flat.row_words *= flat.rows;
    flat.rows = 1;
    let shape = load_packed(&dir, &m, |_| {}, &[]).map(|_| ());
    assert!(shape.is_ok());
    let path = dir.join("packed.safetensors");
    let w = Weights::load(&path).unwrap();
    let mut words = w.words.clone();
    let (s0, d0) = words.remove("w").unwrap();
    assert_eq!(s0, [2, 4]);
    let b = [0.0f32, 1.0];
    let mut views = vec![("b".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], bytemuck::cast_slice(&b)).unwrap())];
    views.push(("w".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::U32, vec![8], bytemuck::cast_slice(&d0)).unwrap()));
    for (n, (s, d)) in &words {
        views.push((n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::U32, s.clone(), bytemuck::cast_slice(d)).unwrap()));
    }
    safetensors::serialize_to_file(views, Some(w.metadata.clone()), &path).unwrap();
    let err = Weights::load(&path).unwrap_err().to_string();
    assert!(err.contains("[8]") && err.contains("[2, 4]"), "{err}");
}

// 9 (taming)
#[test]
fn taming_configs_are_checked_against_the_checkpoint() {
    use lowbit::models::vqgan::VqganConfig;
    let vq = fixture_dir("vqgan_tiny_test");
    let yaml = std::fs::read_to_string(vq.join("config.yaml")).unwrap();
    let err = VqganConfig::from_yaml(&yaml.replace("taming.models.vqgan.VQModel", "foo.Bar"), "c.yaml").unwrap_err().to_string();
    assert!(err.contains("foo.Bar"), "{err}");
    let c = VqganConfig::from_yaml(&yaml, "c.yaml").unwrap();
    let res = format!("resolution: {}", c.ddconfig.resolution);
    assert!(yaml.contains(&res), "{yaml}");
    for bad in ["resolution: 1", "resolution: 1000000000", &format!("resolution: {}", c.ddconfig.resolution + 1)] {
        let err = VqganConfig::from_yaml(&yaml.replace(&res, bad), "c.yaml").unwrap_err().to_string();
        assert!(err.contains("resolution"), "{bad}: {err}");
    }
    let dir = scratch("taming");
    copy_dir(&vq, &dir);
    std::fs::write(dir.join("config.yaml"), yaml.replace(&res, &format!("{res}\n      resamp_with_conv: false"))).unwrap();
    let out = dir.join("x.png");
    fails(&["decode", "--model", s(&dir), "--tokens", s(&vq.join("io.safetensors")), "--out", s(&out)], &["resamp_with_conv", "upsample.conv.weight"]);
}

// 10
#[test]
fn generate_refuses_a_decoder_of_another_vocabulary() {
    let out = scratch("vocab");
    fails(
        &["generate", "--prior", &asset("digits-prior"), "--decoder", &asset("photo-vqgan"), "--class", "3", "--out", s(&out)],
        &["photo-vqgan", "512", "256"],
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

// 11
#[test]
fn quantization_json_is_checked_against_the_header() {
    let dir = scratch("qjson");
    copy_dir(&root().join("assets/models/digits-vit-w4a8"), &dir);
    common::lowbit_ok(&["info", s(&dir)]);
    edit_json(&dir.join("quantization.json"), |v| v["recipe"] = serde_json::json!("edited"));
    // The record carries checksums, so any edit is refused as such; past that check
    // (--no-verify) it must still equal the header's description.
    fails(&["info", s(&dir)], &["quantization.json", "edited"]);
    fails(&["info", "--no-verify", s(&dir)], &["quantization.json", "differs"]);
    std::fs::write(dir.join("quantization.json"), "garbage").unwrap();
    fails(&["info", s(&dir)], &["quantization.json"]);
    // The header is the description; its readable copy may be removed.
    std::fs::remove_file(dir.join("quantization.json")).unwrap();
    common::lowbit_ok(&["info", s(&dir)]);
}

// 12
#[test]
fn outputs_never_replace_inputs_or_existing_files_without_force() {
    let dir = scratch("force");
    let enc = fixture_dir("vqgan_encoder_test");
    let img = dir.join("in.png");
    std::fs::copy(fixture_dir("vit_tiny_test/image_exact.png"), &img).unwrap();
    let before = std::fs::read(&img).unwrap();
    fails(&["encode", "--model", s(&enc), "--out", s(&img), s(&img)], &["in.png", "input"]);
    assert_eq!(std::fs::read(&img).unwrap(), before);
    let tokens = dir.join("t.safetensors");
    common::lowbit_ok(&["encode", "--model", s(&enc), "--out", s(&tokens), s(&img)]);
    fails(&["encode", "--model", s(&enc), "--out", s(&tokens), s(&img)], &["already exists", "--force"]);
    common::lowbit_ok(&["encode", "--model", s(&enc), "--out", s(&tokens), s(&img), "--force"]);
    let png = dir.join("x.png");
    common::lowbit_ok(&["decode", "--model", s(&enc), "--tokens", s(&tokens), "--out", s(&png)]);
    fails(&["decode", "--model", s(&enc), "--tokens", s(&tokens), "--out", s(&png)], &["already exists", "--force"]);
    common::lowbit_ok(&["decode", "--model", s(&enc), "--tokens", s(&tokens), "--out", s(&png), "--force"]);
    let vit = fixture_dir("vit_tiny_test");
    fails(&["classify", "--model", s(&vit), "--topk", "0", s(&img)], &["--topk"]);
}

// 13
#[test]
fn failures_leave_no_partial_outputs() {
    let dir = scratch("partial");
    let vq = fixture_dir("vqgan_tiny_test");
    // x-1.png cannot be written (a folder has its name): nothing is, x-0.png included.
    std::fs::create_dir_all(dir.join("x-1.png")).unwrap();
    fails(&["decode", "--model", s(&vq), "--tokens", s(&vq.join("io.safetensors")), "--out", s(&dir.join("x.png"))], &["x-1.png", "folder"]);
    assert!(!dir.join("x-0.png").exists());
    // generate --out naming a file fails before loading anything.
    let file = dir.join("file");
    std::fs::write(&file, b"").unwrap();
    fails(&["generate", "--prior", &asset("digits-prior"), "--class", "3", "--out", s(&file)], &["--out", "is a file"]);
    // classify prints nothing and writes no logits when one image of many is bad.
    let vit = fixture_dir("vit_tiny_test");
    let bad = dir.join("bad.png");
    std::fs::write(&bad, b"not an image").unwrap();
    let logits = dir.join("l.safetensors");
    let good = vit.join("image_exact.png");
    let out = lowbit(&["classify", "--model", s(&vit), "--save-logits", s(&logits), s(&good), s(&good), s(&bad)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.png"));
    assert!(!logits.exists());
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("lowbit-tmp")));
}

// 14
#[test]
fn messages_speak_in_the_users_terms() {
    let dir = scratch("messages");
    let vit = fixture_dir("vit_tiny_test");
    let vq = fixture_dir("vqgan_tiny_test");
    let tokens = vq.join("io.safetensors");
    fails(&["decode", "--model", s(&vit), "--tokens", s(&tokens), "--out", s(&dir.join("x.png"))], &["ViT", "VQGAN"]);
    fails(&["decode", "--model", s(&vq), "--tokens", s(&tokens), "--out", s(&dir)], &["folder"]);
    // One `invalid input` at most, and no Rust debug dumps.
    let bad = dir.join("model");
    copy_dir(&fixture_dir("prior_test"), &bad);
    edit_json(&bad.join("config.json"), |v| v["n_head"] = serde_json::json!(7));
    let err = fails(&["generate", "--prior", s(&bad), "--class", "0", "--out", s(&dir.join("g"))], &["n_head"]);
    assert!(err.matches("invalid input").count() <= 1 && !err.contains("Config {"), "{err}");
}

// Issue 14: what fuzzing the parsers (fuzz/, docs/RELIABILITY.md) found, each now an error.
#[test]
fn fuzz_findings_are_clear_errors() {
    let dir = scratch("fuzz");
    let m = PackedMatrix::quantize(&(0..64).map(|i| i as f32 / 64.0).collect::<Vec<_>>(), 2, 32, WeightFormat::parse("q4g32").unwrap()).unwrap();
    // A description shape whose element count overflows: its words cannot exist.
    let huge = load_packed(&dir, &m, |d| d.tensors.get_mut("w").unwrap().shape = vec![2, 1 << 62, 8], &[]).unwrap_err().to_string();
    assert!(huge.contains("too large"), "{huge}");
}
