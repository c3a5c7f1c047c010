//! A tiny line preprocessor for WGSL variants, in the spirit of ggml's shader defines:
//! `#if NAME`, `#if !NAME`, `#else`, `#endif` on lines of their own. Numeric knobs
//! (workgroup sizes, tiles) use WGSL `override` constants instead. `#include NAME` pastes
//! `shaders/NAME.wgsl` (from the list in `INCLUDES`) before the conditions are evaluated, and
//! `#include format` pastes the constants of the weight format named by the `FMT_*` define
//! (generated from `formats::wgsl::FAMILIES`). Every output line remembers the file and line it
//! came from, so compiler errors can name them (`Preprocessed::origin`).

use std::collections::BTreeSet;

use crate::formats::wgsl::{GpuDecode, FAMILIES};

/// Preprocessed WGSL and, for each of its lines, the (file, 1-based line) it came from.
pub struct Preprocessed {
    pub text: String,
    origins: Vec<(&'static str, usize)>,
}

impl Preprocessed {
    /// Where line `line` (1-based) of `text` came from, as `shaders/NAME.wgsl:LINE`.
    pub fn origin(&self, line: usize) -> Option<String> {
        let &(file, n) = self.origins.get(line.checked_sub(1)?)?;
        Some(if file == "format" { format!("<format prelude>:{n}") } else { format!("shaders/{file}.wgsl:{n}") })
    }
}

/// Keeps the lines whose conditions hold for `defines`. Directive lines become blank lines.
pub fn preprocess(source: &str, defines: &[&str]) -> Result<String, String> {
    preprocess_file("main", source, defines).map(|p| p.text)
}

/// `preprocess` for the shader file `name`, keeping each line's origin.
pub fn preprocess_file(name: &'static str, source: &str, defines: &[&str]) -> Result<Preprocessed, String> {
    let mut lines = Vec::new();
    expand_into(name, source, defines, &mut Vec::new(), &mut lines)?;
    let mut text = String::with_capacity(lines.iter().map(|(l, _)| l.len() + 1).sum());
    // Each entry: (this branch active, any enclosing branch inactive).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &[(bool, bool)]| stack.last().is_none_or(|&(a, outer_off)| a && !outer_off);
    let mut origins = Vec::with_capacity(lines.len());
    for (line, origin) in lines {
        let t = line.trim();
        let at = || format!("shaders/{}.wgsl:{}", origin.0, origin.1);
        if let Some(cond) = t.strip_prefix("#if ") {
            let cond = cond.trim();
            let value = match cond.strip_prefix('!') {
                Some(name) => !defines.contains(&name.trim()),
                None => defines.contains(&cond),
            };
            let outer_off = !active(&stack);
            stack.push((value, outer_off));
        } else if t == "#else" {
            let top = stack.last_mut().ok_or(format!("{}: #else without #if", at()))?;
            top.0 = !top.0;
        } else if t == "#endif" {
            stack.pop().ok_or(format!("{}: #endif without #if", at()))?;
        } else if active(&stack) {
            text.push_str(&line);
        }
        text.push('\n');
        origins.push(origin);
    }
    if !stack.is_empty() {
        return Err(format!("shaders/{name}.wgsl: unterminated #if"));
    }
    Ok(Preprocessed { text, origins })
}

/// Shader files that others include; each is also validated on its own through its includers.
pub const INCLUDES: &[(&str, &str)] = &[
    ("aq", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/aq.wgsl"))),
    ("attention_params", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/attention_params.wgsl"))),
    ("common", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/common.wgsl"))),
    ("decode", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/decode.wgsl"))),
    ("grid", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/grid.wgsl"))),
    ("i8_tile", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/i8_tile.wgsl"))),
    ("linear", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/linear.wgsl"))),
    ("sage_qk", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/sage_qk.wgsl"))),
    ("tile", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/tile.wgsl"))),
];

/// The weight format named by the defines, for `#include format`.
fn format_of(defines: &[&str]) -> Result<&'static GpuDecode, String> {
    let mut found = defines.iter().filter_map(|d| GpuDecode::by_define(d));
    match (found.next(), found.next()) {
        (Some(f), None) => Ok(f),
        (None, _) => Err("#include format needs one FMT_* define".into()),
        (Some(_), Some(_)) => Err("#include format: more than one FMT_* define".into()),
    }
}

/// Pastes includes recursively, each at most once (an include may include another, e.g.
/// gemm_q → linear → decode → format, and two paths to one file must not define its
/// functions twice).
fn expand_into<'a>(
    name: &'static str,
    source: &'a str,
    defines: &[&str],
    seen: &mut Vec<&'static str>,
    out: &mut Vec<(std::borrow::Cow<'a, str>, (&'static str, usize))>,
) -> Result<(), String> {
    for (n, line) in source.lines().enumerate() {
        let Some(inc) = line.trim().strip_prefix("#include ") else {
            out.push((line.into(), (name, n + 1)));
            continue;
        };
        let inc = inc.trim();
        // The include line itself stays as a blank line so the includer's numbering holds.
        out.push(("".into(), (name, n + 1)));
        if inc == "format" {
            if !seen.contains(&"format") {
                seen.push("format");
                let prelude = format_of(defines).map_err(|e| format!("shaders/{name}.wgsl:{}: {e}", n + 1))?.prelude();
                for (i, l) in prelude.lines().enumerate() {
                    out.push((l.to_string().into(), ("format", i + 1)));
                }
            }
            continue;
        }
        let &(inc_name, text) = INCLUDES
            .iter()
            .find(|(n, _)| *n == inc)
            .ok_or(format!("shaders/{name}.wgsl:{}: #include {inc}: no such shader include", n + 1))?;
        if !seen.contains(&inc_name) {
            seen.push(inc_name);
            expand_into(inc_name, text, defines, seen, out)?;
        }
    }
    Ok(())
}

/// Every flag a shader source tests, so a test can validate each combination. A source that
/// includes the format prelude (directly or through an include) lists every `FMT_*` family.
pub fn shader_flags(source: &str) -> Vec<String> {
    let mut flags = BTreeSet::new();
    let mut lines = Vec::new();
    // Any one format makes `#include format` expand; its flags are the same for all.
    if expand_into("main", source, &[FAMILIES[0].define], &mut Vec::new(), &mut lines).is_err() {
        return Vec::new();
    }
    for (line, origin) in &lines {
        if origin.0 == "format" {
            flags.extend(FAMILIES.iter().map(|f| f.define.to_string()));
        }
        if let Some(cond) = line.trim().strip_prefix("#if ") {
            flags.insert(cond.trim().trim_start_matches('!').trim().to_string());
        }
    }
    flags.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_conditions() {
        let src = "a\n#if X\nb\n#if !Y\nc\n#else\nd\n#endif\n#else\ne\n#endif\nf";
        let keep = |d: &[&str]| -> Vec<String> {
            preprocess(src, d).unwrap().lines().filter(|l| !l.is_empty()).map(String::from).collect()
        };
        assert_eq!(keep(&[]), ["a", "e", "f"]);
        assert_eq!(keep(&["X"]), ["a", "b", "c", "f"]);
        assert_eq!(keep(&["X", "Y"]), ["a", "b", "d", "f"]);
        assert_eq!(shader_flags(src), ["X", "Y"]);
        assert!(preprocess("#if A\n", &[]).is_err());
    }

    #[test]
    fn includes_nest_and_paste_once() {
        // linear includes decode, which includes the format; a second path must not paste again.
        let p = preprocess_file("t", "#include linear\n#include decode\n#include format\n", &["FMT_Q4", "SCALED"]).unwrap();
        assert_eq!(p.text.matches("fn decode(").count(), 1);
        assert_eq!(p.text.matches("const PW:").count(), 1);
        assert!(!p.text.lines().any(|l| l.trim_start().starts_with("#include")));
        assert!(preprocess("#include nothing\n", &[]).is_err());
        assert!(preprocess("#include format\n", &[]).is_err());
        assert!(shader_flags("#include decode\n").contains(&"FMT_TERNARY".to_string()));
    }

    #[test]
    fn lines_keep_their_origin() {
        let p = preprocess_file("t", "a\n#include grid\nb\n", &[]).unwrap();
        let b = p.text.lines().position(|l| l == "b").unwrap() + 1;
        assert_eq!(p.origin(b).as_deref(), Some("shaders/t.wgsl:3"));
        let g = p.text.lines().position(|l| l.starts_with("fn grid_group")).unwrap() + 1;
        assert!(p.origin(g).unwrap().starts_with("shaders/grid.wgsl:"));
    }
}
