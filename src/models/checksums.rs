//! SHA-256 checksums of the folders lowbit writes (`lowbit quantize`), checked when they load.
//!
//! `quantization.json` records `"checksums": {"model.safetensors": "<hex>", "config.json":
//! "<hex>"}` beside its copy of the header's description. A flipped byte in the weight data
//! can load finite and plausible and give a confident wrong answer; the NaN check and the
//! packed matrices' own checksums catch only part of that, the file's SHA-256 all of it.
//! Upstream checkpoints carry no checksum: `lowbit info` prints theirs to compare with the
//! hub's.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{invalid, Error, Result};

/// The key of the checksums in `quantization.json` (never in the checkpoint's header, which
/// cannot hold its own file's hash).
pub const CHECKSUMS_KEY: &str = "checksums";

/// The file, beside the checkpoint, that records the checksums.
pub const RECORD_FILE: &str = "quantization.json";

/// `--no-verify` switches the check off for the whole process (as `--quiet` does the log).
static VERIFY: AtomicBool = AtomicBool::new(true);

pub fn set_verify(on: bool) {
    VERIFY.store(on, Ordering::Relaxed);
}

pub fn verify_enabled() -> bool {
    VERIFY.load(Ordering::Relaxed)
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The SHA-256 of the regular file `path`, read in blocks (a checkpoint may be gigabytes).
pub fn sha256_file(path: &Path) -> Result<String> {
    super::files::check_regular(path, "file", super::files::MAX_CHECKPOINT_BYTES)?;
    let err = |e: std::io::Error| Error::Invalid(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(err)?;
    let (mut hasher, mut buf) = (Sha256::new(), vec![0u8; 1 << 20]);
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A parsed `quantization.json`: the description (which must equal the header's) and the
/// checksums lowbit recorded beside it (empty for folders written before it recorded any).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub description: Value,
    pub checksums: BTreeMap<String, String>,
}

impl Record {
    /// Parses the text of `quantization.json`; `source` names it in errors. Every checksum
    /// must name a plain file beside it (no folders: the record says nothing about files
    /// elsewhere) and be 64 lowercase hex digits. A record with checksums must be exactly the
    /// text `record_json` writes (unless `--no-verify`): it cannot hash itself, so this is what
    /// protects it (even a space turned tab is refused: "any changed byte is an error").
    pub fn parse(text: &str, source: &str) -> Result<Record> {
        let mut description: Value = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("{source}: not valid JSON ({e}); delete it or quantize the model again")))?;
        if description.get(CHECKSUMS_KEY).is_some() && verify_enabled() && pretty(&description)? != text {
            invalid!("{source}: not the text lowbit wrote (it was edited or corrupted after quantization): restore it or quantize the model again (--no-verify skips this check)");
        }
        let Some(object) = description.as_object_mut() else { invalid!("{source}: not a JSON object; delete it or quantize the model again") };
        let mut checksums = BTreeMap::new();
        match object.remove(CHECKSUMS_KEY) {
            None => {}
            Some(Value::Object(map)) => {
                for (name, hash) in map {
                    let plain = !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..";
                    let Some(hash) = hash.as_str().filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))) else {
                        invalid!("{source}: the checksum of {name:?} is not a SHA-256 (64 lowercase hex digits): {hash}");
                    };
                    if !plain {
                        invalid!("{source}: checksums may name only files beside it, not {name:?}");
                    }
                    checksums.insert(name, hash.to_string());
                }
            }
            Some(other) => invalid!("{source}: `{CHECKSUMS_KEY}` must be an object of file name → SHA-256, got {other}"),
        }
        Ok(Record { description, checksums })
    }

    /// Checks every recorded file in `dir`; `have` is (name, bytes) of a file already in
    /// memory (the checkpoint being loaded), hashed on another thread while `also` runs (the
    /// checkpoint's parsing), so that large checkpoints load hardly slower. A mismatch is
    /// reported before `also`'s error, since it is the cause of any.
    pub fn verify<T>(&self, dir: &Path, have: (&str, &[u8]), also: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.checksums.is_empty() || !verify_enabled() {
            return also();
        }
        let (name, bytes) = have;
        if !self.checksums.contains_key(name) {
            invalid!("{}: {RECORD_FILE} beside it records checksums of other files only; it is not the checkpoint lowbit wrote there", dir.join(name).display());
        }
        let (own, result) = hash_while(bytes, also);
        for (file, want) in &self.checksums {
            let path = dir.join(file);
            if file != name && !path.is_file() {
                invalid!("{}: missing, but {RECORD_FILE} records its checksum (restore it, or --no-verify to skip the check)", path.display());
            }
            let got = if file == name { own.clone() } else { sha256_file(&path)? };
            if &got != want {
                invalid!(
                    "{}: SHA-256 {got} differs from the {want} recorded in {RECORD_FILE}: the file was changed or corrupted after lowbit wrote it (restore or re-create it; --no-verify skips this check)",
                    path.display()
                );
            }
        }
        result
    }
}

/// The SHA-256 of `bytes` and `f()`, side by side where threads exist (not in the browser).
fn hash_while<T>(bytes: &[u8], f: impl FnOnce() -> T) -> (String, T) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::thread::scope(|s| {
            let hash = s.spawn(|| sha256_hex(bytes));
            let out = f();
            (hash.join().expect("hashing does not panic"), out)
        })
    }
    #[cfg(target_arch = "wasm32")]
    {
        (sha256_hex(bytes), f())
    }
}

/// The text of `quantization.json` for a folder being written in `dir`: `description` with the
/// SHA-256 of each of `files` (already written there) under `checksums`.
pub fn record_json(description: &impl serde::Serialize, dir: &Path, files: &[&str]) -> Result<String> {
    let mut value = serde_json::to_value(description).map_err(|e| Error::Invalid(e.to_string()))?;
    let Some(object) = value.as_object_mut() else { invalid!("a quantization description must be a JSON object") };
    let mut sums = serde_json::Map::new();
    for file in files {
        sums.insert(file.to_string(), Value::String(sha256_file(&dir.join(file))?));
    }
    object.insert(CHECKSUMS_KEY.to_string(), Value::Object(sums));
    pretty(&value)
}

/// The one layout of a record: serde_json's pretty printing and a final newline.
fn pretty(value: &Value) -> Result<String> {
    Ok(serde_json::to_string_pretty(value).map_err(|e| Error::Invalid(e.to_string()))? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_inputs() {
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn records_refuse_bad_checksums_and_paths() {
        let ok = pretty(&serde_json::json!({"tensors": {}, "checksums": {"model.safetensors": "a".repeat(64)}})).unwrap();
        let r = Record::parse(&ok, "q.json").unwrap();
        assert!(Record::parse(&ok.replace("  ", "\t"), "q.json").is_err());
        // Floats as the quantizer records them (f32 widened, SQNRs) re-print to the same text.
        let floats = serde_json::json!({"a": 0.1f32, "b": 12.345678901234567, "c": 1.2345678e-7f32, "checksums": {}});
        Record::parse(&pretty(&floats).unwrap(), "q.json").unwrap();
        assert_eq!(r.description, serde_json::json!({"tensors": {}}));
        assert_eq!(r.checksums.len(), 1);
        for bad in [
            format!(r#"{{"checksums": {{"model.safetensors": "{}"}}}}"#, "A".repeat(64)),
            format!(r#"{{"checksums": {{"model.safetensors": "{}"}}}}"#, "a".repeat(63)),
            format!(r#"{{"checksums": {{"../model.safetensors": "{}"}}}}"#, "a".repeat(64)),
            r#"{"checksums": ["model.safetensors"]}"#.to_string(),
            r#"{"checksums": {"model.safetensors": 5}}"#.to_string(),
            "[]".to_string(),
            "{".to_string(),
        ] {
            assert!(Record::parse(&bad, "q.json").is_err(), "{bad}");
        }
    }
}
