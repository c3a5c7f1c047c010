//! Issue 14 item 2: the folders `lowbit quantize` writes carry SHA-256 checksums that every
//! load checks, so a corrupted copy is an error naming the file instead of a confident wrong
//! prediction; `--no-verify` skips the check; `lowbit info` prints the hashes; weights that
//! load finite but absurd are warned about.

mod common;

use std::path::{Path, PathBuf};

use common::{lowbit, lowbit_ok};
use lowbit::models::Weights;
use lowbit::synthetic::Rng;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lowbit-sums-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// digits-vit quantized to w4a16 by the CLI into `dir/q`: a folder lowbit wrote.
fn quantized(dir: &Path) -> PathBuf {
    let out = dir.join("q");
    let model = root().join("assets/models/digits-vit");
    lowbit_ok(&["quantize", "--model", s(&model), "--recipe", "w4a16", "--method", "rtn", "--out", s(&out)]);
    out
}

/// A uniform integer in 0..n.
fn below(rng: &mut Rng, n: usize) -> usize {
    (((rng.next_f32() + 1.0) * 0.5 * n as f32) as usize).min(n - 1)
}

/// The byte offset of the first element of F32 tensor `name` in a safetensors file.
fn f32_offset(bytes: &[u8], name: &str) -> usize {
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let info = meta.info(name).unwrap();
    assert_eq!(info.dtype, safetensors::Dtype::F32);
    8 + header_len + info.data_offsets.0
}

#[test]
fn a_thousand_random_mutations_of_a_quantized_folder_are_all_refused() {
    let dir = scratch("mutations");
    let clean = quantized(&dir);
    let names = ["model.safetensors", "config.json", "quantization.json"];
    let originals: Vec<Vec<u8>> = names.iter().map(|n| std::fs::read(clean.join(n)).unwrap()).collect();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    for (n, b) in names.iter().zip(&originals) {
        std::fs::write(work.join(n), b).unwrap();
    }
    let weights = work.join("model.safetensors");
    Weights::load(&weights).expect("the clean folder loads");
    let mut rng = Rng::new(14);
    for i in 0..1000 {
        // Each file equally often (byte-uniform would hardly ever touch the small JSON files).
        let f = below(&mut rng, names.len());
        let mut bytes = originals[f].clone();
        let at = below(&mut rng, bytes.len());
        bytes[at] ^= 1 + below(&mut rng, 255) as u8;
        std::fs::write(work.join(names[f]), &bytes).unwrap();
        match Weights::load(&weights) {
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(names[f]), "mutation {i} of {} at byte {at}: the error does not name the file: {msg}", names[f]);
            }
            Ok(_) => panic!("mutation {i} of {} at byte {at} (0x{:02x} → 0x{:02x}) was accepted", names[f], originals[f][at], bytes[at]),
        }
        std::fs::write(work.join(names[f]), &originals[f]).unwrap();
    }
}

#[test]
fn corruption_is_a_clear_error_that_no_verify_skips() {
    let dir = scratch("cli");
    let q = quantized(&dir);
    let info = lowbit_ok(&["info", s(&q)]);
    assert!(info.contains("model.safetensors  (matches quantization.json)") && info.contains("config.json  (matches"), "{info}");
    // The lowest mantissa bit of a LayerNorm weight: the model still predicts, finite and
    // plausible, which is why only the checksum can tell.
    let path = q.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = f32_offset(&bytes, "norm.weight");
    bytes[at] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let image = root().join("assets/samples/digit-3-0.png");
    let out = lowbit(&["classify", "--model", s(&q), s(&image)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for word in ["model.safetensors", "SHA-256", "quantization.json", "--no-verify"] {
        assert!(err.contains(word) && !err.contains("panicked"), "`{word}` not in: {err}");
    }
    lowbit_ok(&["classify", "--no-verify", "--model", s(&q), s(&image)]);
    let info = lowbit_ok(&["info", "--no-verify", s(&q)]);
    assert!(info.contains("model.safetensors  (DIFFERS from the"), "{info}");
    // A missing file that has a checksum is named too.
    bytes[at] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    lowbit_ok(&["info", s(&q)]);
    std::fs::remove_file(q.join("config.json")).unwrap();
    let out = lowbit(&["info", s(&q)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
}

#[test]
fn upstream_checkpoints_print_their_hash_and_absurd_weights_warn() {
    let dir = scratch("upstream");
    let vit = root().join("assets/models/digits-vit");
    let bytes = std::fs::read(vit.join("model.safetensors")).unwrap();
    let info = lowbit_ok(&["info", s(&vit)]);
    let want = format!("{}  model.safetensors  (no checksum recorded", lowbit::models::checksums::sha256_hex(&bytes));
    assert!(info.contains(&want), "{info}");
    // A LayerNorm weight of 3e7: finite, so it loads, but no training produces it.
    let bad = dir.join("vit");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(vit.join("config.json"), bad.join("config.json")).unwrap();
    let mut bytes = bytes;
    let at = f32_offset(&bytes, "norm.weight");
    bytes[at..at + 4].copy_from_slice(&3e7f32.to_le_bytes());
    std::fs::write(bad.join("model.safetensors"), &bytes).unwrap();
    let out = lowbit(&["info", s(&bad)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("warning") && err.contains("norm.weight") && err.contains("3e7"), "{err}");
    let out = lowbit(&["info", "--quiet", s(&bad)]);
    assert!(out.stderr.is_empty());
}
