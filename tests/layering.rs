//! The crate's one-way layering (src/lib.rs): a module may use only the layers before it.

use std::path::Path;

/// Layers from the bottom; a module may name `crate::<m>` only for modules of its own or an
/// earlier layer. `error`, `log`, `metrics` and `synthetic` are leaf utilities every layer may use.
const LAYERS: &[&[&str]] = &[&["formats", "gpu"], &["kernels"], &["graph"], &["models"], &["quant", "ops_check", "codec"], &["cli", "viewer"]];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = vec![];
    for (level, modules) in LAYERS.iter().enumerate() {
        let above: Vec<&str> = LAYERS[level + 1..].iter().flat_map(|l| l.iter().copied()).collect();
        for module in modules.iter() {
            let mut files = vec![];
            let dir = src.join(module);
            if dir.is_dir() {
                rust_files(&dir, &mut files);
            }
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap();
                for (i, line) in text.lines().enumerate() {
                    for higher in &above {
                        if line.contains(&format!("crate::{higher}::")) || line.contains(&format!("crate::{higher};")) {
                            violations.push(format!("{}:{}: `{module}` uses `{higher}`: {}", file.display(), i + 1, line.trim()));
                        }
                    }
                }
            }
        }
    }
    assert!(violations.is_empty(), "upward imports:\n{}", violations.join("\n"));
}
