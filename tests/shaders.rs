//! Every WGSL file, in every variant its `#if` flags allow, parses and validates with naga.
//! Runs without a GPU.

use lowbit::gpu::{preprocess, shader_flags};

/// Variants to check: formats (`FMT_*`) are exclusive, so exactly one is set when a shader has
/// them; a shader lists other flags that never go together on a line `// exclusive: A B C`
/// (at most one of them is set); the remaining flags are tried in every combination.
fn variants(flags: &[String], source: &str) -> Vec<Vec<String>> {
    let exclusive: Vec<Vec<String>> = source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("// exclusive:"))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    let in_set = |f: &String| exclusive.iter().any(|set| set.contains(f));
    let formats: Vec<&String> = flags.iter().filter(|f| f.starts_with("FMT_")).collect();
    let others: Vec<&String> = flags.iter().filter(|f| !f.starts_with("FMT_") && !in_set(f)).collect();
    assert!(others.len() <= 8, "too many independent flags to enumerate: {others:?}");
    let mut out = Vec::new();
    let format_choices: Vec<Option<&String>> =
        if formats.is_empty() { vec![None] } else { formats.iter().map(|f| Some(*f)).collect() };
    for fmt in format_choices {
        for mask in 0..(1u32 << others.len()) {
            let mut v: Vec<String> = fmt.iter().map(|f| f.to_string()).collect();
            v.extend(others.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, f)| f.to_string()));
            out.push(v);
        }
    }
    for set in &exclusive {
        out = out
            .into_iter()
            .flat_map(|v| {
                std::iter::once(v.clone()).chain(set.iter().map(move |f| [v.clone(), vec![f.clone()]].concat()))
            })
            .collect();
    }
    out
}

#[test]
fn every_shader_variant_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        // Included fragments are validated through the shaders that include them.
        if lowbit::gpu::INCLUDES.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for defines in variants(&shader_flags(&source), &source) {
            let refs: Vec<&str> = defines.iter().map(String::as_str).collect();
            let text = preprocess(&source, &refs).unwrap_or_else(|e| panic!("{name} {defines:?}: {e}"));
            let result = naga::front::wgsl::parse_str(&text).map_err(|e| e.emit_to_string(&text)).and_then(|module| {
                naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
                    .validate(&module)
                    .map_err(|e| e.emit_to_string(&text))
            });
            match result {
                Ok(_) => checked += 1,
                Err(e) => failures.push(format!("{name} {defines:?}: {}", e.lines().next().unwrap_or(""))),
            }
        }
    }
    eprintln!("{checked} shader variants validated");
    assert!(failures.is_empty(), "{} variants failed:\n{}", failures.len(), failures.join("\n"));
    assert!(checked > 0);
}
