//! A tiny line preprocessor for WGSL variants, in the spirit of ggml's shader defines:
//! `#if NAME`, `#if !NAME`, `#else`, `#endif` on lines of their own. Numeric knobs
//! (workgroup sizes, tiles) use WGSL `override` constants instead. `#include NAME` pastes
//! `shaders/NAME.wgsl` (from the list in `INCLUDES`) before the conditions are evaluated.

use std::collections::BTreeSet;

/// Keeps the lines whose conditions hold for `defines`. Directive lines become blank lines so
/// naga's error positions still point at the right line of the file.
pub fn preprocess(source: &str, defines: &[&str]) -> Result<String, String> {
    let source = &expand_includes(source)?;
    let mut out = String::with_capacity(source.len());
    // Each entry: (this branch active, any enclosing branch inactive).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &[(bool, bool)]| stack.last().is_none_or(|&(a, outer_off)| a && !outer_off);
    for (n, line) in source.lines().enumerate() {
        let t = line.trim();
        if let Some(cond) = t.strip_prefix("#if ") {
            let cond = cond.trim();
            let value = match cond.strip_prefix('!') {
                Some(name) => !defines.contains(&name.trim()),
                None => defines.contains(&cond),
            };
            let outer_off = !active(&stack);
            stack.push((value, outer_off));
            out.push('\n');
        } else if t == "#else" {
            let top = stack.last_mut().ok_or(format!("line {}: #else without #if", n + 1))?;
            top.0 = !top.0;
            out.push('\n');
        } else if t == "#endif" {
            stack.pop().ok_or(format!("line {}: #endif without #if", n + 1))?;
            out.push('\n');
        } else {
            if active(&stack) {
                out.push_str(line);
            }
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err("unterminated #if".into());
    }
    Ok(out)
}

/// Shader files that others include; each is also validated on its own through its includers.
pub const INCLUDES: &[(&str, &str)] = &[
    ("aq", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/aq.wgsl"))),
    ("dequant", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/dequant.wgsl"))),
    ("gemv_q", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/gemv_q.wgsl"))),
    ("grid", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/grid.wgsl"))),
];

fn expand_includes(source: &str) -> Result<String, String> {
    let mut out = String::with_capacity(source.len() * 2);
    expand_into(source, &mut Vec::new(), &mut out)?;
    Ok(out)
}

/// Pastes includes recursively, each at most once (an include may include another, e.g.
/// gemm_q → gemv_q → grid, and two paths to one file must not define its functions twice).
fn expand_into(source: &str, seen: &mut Vec<&str>, out: &mut String) -> Result<(), String> {
    for line in source.lines() {
        match line.trim().strip_prefix("#include ") {
            Some(name) => {
                let &(name, text) = INCLUDES
                    .iter()
                    .find(|(n, _)| *n == name.trim())
                    .ok_or(format!("#include {}: no such shader include", name.trim()))?;
                if !seen.contains(&name) {
                    seen.push(name);
                    expand_into(text, seen, out)?;
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(())
}

/// Every flag a shader source tests, so a test can validate each combination.
pub fn shader_flags(source: &str) -> Vec<String> {
    let mut flags = BTreeSet::new();
    let source = expand_includes(source).unwrap_or_default();
    for line in source.lines() {
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
        // gemv_q includes grid itself; a second path to grid must not define it again.
        let text = preprocess("#include gemv_q\n#include grid\n", &["FMT_Q4"]).unwrap();
        assert_eq!(text.matches("fn grid_group").count(), 1);
        assert!(!text.lines().any(|l| l.trim_start().starts_with("#include")));
        assert!(preprocess("#include nothing\n", &[]).is_err());
    }
}
