//! `lowbit compress` / `lowbit decompress` (src/codec): tokens restored exactly, the prior
//! beating the uniform model, and every kind of bad input an error that writes nothing.

mod common;

use std::path::{Path, PathBuf};

use common::{lowbit, lowbit_ok};
use lowbit::codec::format::Container;
use lowbit::codec::{self, Model};
use lowbit::models::vqgan::TokenGrid;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn asset(p: &str) -> String {
    root().join("assets").join(p).to_string_lossy().into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lowbit-codec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Fails with exit code 1, no panic, an error naming every one of `words`, and no `out`.
fn fails(args: &[&str], words: &[&str], out: &Path) {
    let o = lowbit(args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "lowbit {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "lowbit {args:?} panicked: {stderr}");
    for w in words {
        assert!(stderr.contains(w), "lowbit {args:?}: `{w}` not in: {stderr}");
    }
    assert!(!out.exists(), "lowbit {args:?} wrote {}", out.display());
}

/// `model`: `--prior PATH`, `--uniform`, or nothing (the adaptive model).
fn compress(tokenizer: &str, model: &[&str], images: &[String], out: &Path) -> serde_json::Value {
    let mut args = vec!["compress", "--json", "--tokenizer", tokenizer, "--out", s(out)];
    args.extend(model);
    args.extend(images.iter().map(String::as_str));
    serde_json::from_str(&lowbit_ok(&args)).unwrap()
}

fn encode(tokenizer: &str, images: &[String], out: &Path) -> TokenGrid {
    let mut args = vec!["encode", "--model", tokenizer, "--out", s(out)];
    args.extend(images.iter().map(String::as_str));
    lowbit_ok(&args);
    TokenGrid::load(out, "tokens").unwrap()
}

#[test]
fn digits_round_trip_exactly_and_the_prior_beats_the_uniform_model() {
    let tok = asset("models/digits-vqgan");
    let prior = asset("models/digits-prior");
    let images: Vec<String> = ["digit-0-0", "digit-1-0", "digit-4-1", "digit-7-0"].iter().map(|n| asset(&format!("samples/{n}.png"))).collect();
    let want = encode(&tok, &images, &tmp("digits.safetensors"));

    let (with, without) = (tmp("prior.lbt"), tmp("uniform.lbt"));
    let p = compress(&tok, &["--prior", &prior], &images, &with);
    let u = compress(&tok, &["--uniform"], &images, &without);
    let (bp, bu) = (p["payload_bpp"].as_f64().unwrap(), u["payload_bpp"].as_f64().unwrap());
    eprintln!("digits: prior {bp:.4} bpp, uniform {bu:.4} bpp, PSNR {} dB, SSIM {}", p["mean_psnr_db"], p["mean_ssim"]);
    // The uniform model spends exactly log2(256) = 8 bits per 4×4 cell, plus rANS's flush.
    assert!((0.5..0.55).contains(&bu), "{bu}");
    assert!(bp < 0.8 * bu, "the prior gives {bp} bpp, the uniform model {bu}");
    assert!(p["mean_psnr_db"].as_f64().unwrap() > 20.0 && p["mean_ssim"].as_f64().unwrap() > 0.8, "{p}");

    for (file, dir) in [(&with, "out-prior"), (&without, "out-uniform")] {
        let out = tmp(dir);
        lowbit_ok(&["decompress", s(file), "--out", s(&out)]);
        assert_eq!(TokenGrid::load(&out.join("tokens.safetensors"), "tokens").unwrap(), want, "{}", file.display());
        assert_eq!(image::open(out.join("image-3.png")).unwrap().to_rgb8().dimensions(), (32, 32));
    }

    bad_files(&with, &without);
}

/// Every damaged or mismatched file fails before anything is written.
fn bad_files(with: &Path, without: &Path) {
    let bytes = std::fs::read(with).unwrap();
    let out = tmp("never");
    let bad = tmp("bad.lbt");
    std::fs::write(&bad, &bytes[..bytes.len() - 3]).unwrap();
    fails(&["decompress", s(&bad), "--out", s(&out)], &["truncated"], &out);
    std::fs::write(&bad, &bytes[..20]).unwrap();
    fails(&["decompress", s(&bad), "--out", s(&out)], &["truncated"], &out);
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 1;
    std::fs::write(&bad, &flipped).unwrap();
    fails(&["decompress", s(&bad), "--out", s(&out)], &["checksum", "corrupted"], &out);
    std::fs::write(&bad, b"not a codec file").unwrap();
    fails(&["decompress", s(&bad), "--out", s(&out)], &["LBT1"], &out);

    // Another model: the file names both hashes.
    let photo = asset("models/photo-vqgan");
    let c = Container::from_bytes(&bytes).unwrap();
    fails(&["decompress", s(with), "--out", s(&out), "--tokenizer", &photo], &["hash", &format!("{:016x}", c.tokenizer_hash), "another model"], &out);
    fails(&["decompress", s(with), "--out", s(&out), "--prior", &asset("models/digits-vqgan")], &["prior", "digits-vqgan"], &out);
    fails(&["decompress", s(without), "--out", s(&out), "--prior", &asset("models/digits-prior")], &["without a prior"], &out);

    // Well-formed files (valid CRCs) whose content contradicts the model.
    let mut stages = c.clone();
    stages.stages = 2;
    std::fs::write(&bad, stages.to_bytes().unwrap()).unwrap();
    fails(&["decompress", s(&bad), "--out", s(&out)], &["2 ids per position", "has 1"], &out);
    let mut shape = c.clone();
    shape.images[0].grid = [4, 4];
    std::fs::write(&bad, shape.to_bytes().unwrap()).unwrap();
    fails(&["decompress", s(&bad), "--out", s(&out)], &["token grid"], &out);
    let mut swapped = c.clone();
    swapped.images.swap(0, 1);
    swapped.images[0].payload.push(0);
    std::fs::write(&bad, swapped.to_bytes().unwrap()).unwrap();
    fails(&["decompress", s(&bad), "--out", s(&out)], &["rANS"], &out);
}

#[test]
fn photo_without_prior_round_trips_exactly_under_the_adaptive_model() {
    let tok = asset("models/photo-vqgan");
    let images = vec![asset("samples/photo-chelsea.png")];
    let want = encode(&tok, &images, &tmp("photo.safetensors"));
    let file = tmp("photo.lbt");
    let r = compress(&tok, &[], &images, &file);
    eprintln!("photo: {r}");
    // The uniform model's 512 codes would cost 9 bits per 4×4 cell.
    let bpp = r["payload_bpp"].as_f64().unwrap();
    assert!(r["model"] == "adaptive" && bpp < 9.0 / 16.0, "{r}");
    let out = tmp("out-photo");
    lowbit_ok(&["decompress", s(&file), "--out", s(&out)]);
    assert_eq!(TokenGrid::load(&out.join("tokens.safetensors"), "tokens").unwrap(), want);
    // compress refuses to overwrite, and writes nothing for an unreadable image.
    let other = tmp("other.lbt");
    fails(&["compress", "--tokenizer", &tok, "--out", s(&other), &asset("samples/README.md")], &["README.md"], &other);
    fails(&["compress", "--tokenizer", &tok, "--out", s(&file), &images[0]], &["already exists"], &tmp("nothing"));
}

#[test]
fn tokens_outside_the_sub_codebook_are_refused() {
    let gpu = common::gpu();
    let grid = TokenGrid::new(&[1, 2, 2], vec![0, 1, 7, 2]).unwrap();
    let e = codec::encode(gpu, &Model::Uniform { codebook: 4 }, std::slice::from_ref(&grid)).unwrap_err().to_string();
    assert!(e.contains("token id 7") && e.contains("sub-codebook of 4"), "{e}");
    let payloads = codec::encode(gpu, &Model::Uniform { codebook: 8 }, std::slice::from_ref(&grid)).unwrap();
    let back = codec::decode(gpu, &Model::Uniform { codebook: 8 }, &[([1, 2, 2], &payloads[0])]).unwrap();
    assert_eq!(back, vec![grid.clone()]);
    assert!(codec::encode(gpu, &Model::Adaptive { codebook: 4 }, std::slice::from_ref(&grid)).is_err());
    // The adaptive model on a long, skewed grid: exact, and cheaper than uniform.
    let ids: Vec<i64> = (0..4096).map(|i| if i % 7 == 0 { (i % 300) as i64 } else { 3 }).collect();
    let skewed = TokenGrid::new(&[1, 64, 64], ids).unwrap();
    let model = Model::Adaptive { codebook: 512 };
    let payloads = codec::encode(gpu, &model, std::slice::from_ref(&skewed)).unwrap();
    assert!(payloads[0].len() * 8 < 4096 * 3, "{} bytes", payloads[0].len());
    assert_eq!(codec::decode(gpu, &model, &[([1, 64, 64], &payloads[0])]).unwrap(), vec![skewed]);
}

#[test]
fn residual_tokens_round_trip_exactly_one_plane_per_stage() {
    // photo-rqvae writes [B, 2, h, w]: both stages coded, each plane under its own counts.
    let tok = asset("models/photo-rqvae");
    // A 96×96 crop: lavapipe runs the encoder at ~1 s per 10k pixels on a loaded CI core.
    let crop = tmp("coffee-96.png");
    image::open(asset("samples/photo-coffee.png")).unwrap().crop_imm(80, 40, 96, 96).save(&crop).unwrap();
    let images = vec![s(&crop).to_string()];
    let want = encode(&tok, &images, &tmp("rq.safetensors"));
    assert_eq!(want.codes, Some(2));
    let file = tmp("rq.lbt");
    let r = compress(&tok, &[], &images, &file);
    eprintln!("photo-rqvae: {r}");
    assert_eq!(Container::from_bytes(&std::fs::read(&file).unwrap()).unwrap().stages, 2);
    // Two stages of 512 codes: 18 raw bits per 4×4 cell, and rANS's 32-bit final state at most
    // on top (the uniform model wins on so small a grid; the adaptive one on whole photos).
    let bits = r["images"][0]["payload_bytes"].as_u64().unwrap() * 8;
    assert!(bits <= 18 * 24 * 24 + 32, "{r}");
    let out = tmp("out-rq");
    lowbit_ok(&["decompress", s(&file), "--out", s(&out)]);
    assert_eq!(TokenGrid::load(&out.join("tokens.safetensors"), "tokens").unwrap(), want);
    // VQGAN-LC's 100,000 codes are more than the coder's alphabet: refused, nothing written.
    let lc = root().join("tests/fixtures/tokenizers/vqgan_lc");
    let none = tmp("lc.lbt");
    fails(&["compress", "--tokenizer", s(&lc), "--out", s(&none), &asset("samples/digit-0-0.png")], &["100000 ids", "32768"], &none);
    // A prior predicts one id per position: refused before anything is written.
    let bad = tmp("rq-prior.lbt");
    fails(&["compress", "--tokenizer", &tok, "--prior", &asset("models/digits-prior"), "--out", s(&bad), &images[0]], &["one id per position"], &bad);
}

#[test]
fn planes_restart_the_adaptive_counts() {
    let gpu = common::gpu();
    // Stage 0 uses ids 0..4, stage 1 only id 9: per-plane counts code both cheaply and exactly.
    let ids: Vec<i64> = (0..2 * 32 * 32).map(|i| if i < 1024 { (i % 4) as i64 } else { 9 }).collect();
    let grid = TokenGrid::new(&[1, 2, 32, 32], ids).unwrap();
    let model = Model::Adaptive { codebook: 16 };
    let payloads = codec::encode(gpu, &model, std::slice::from_ref(&grid)).unwrap();
    assert!(payloads[0].len() * 8 < 2048 * 2, "{} bytes", payloads[0].len());
    assert_eq!(codec::decode(gpu, &model, &[([2, 32, 32], &payloads[0])]).unwrap(), vec![grid.clone()]);
    // The same bytes read as one plane are another grid, or an error: never the same tokens.
    let one = codec::decode(gpu, &model, &[([1, 64, 32], &payloads[0])]);
    assert!(one.map_or(true, |g| g[0].ids != grid.ids));
}
