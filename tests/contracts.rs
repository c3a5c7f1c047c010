//! Checked contracts between the Rust kernels and their shaders: each `#[repr(C)]` parameter
//! block (`models::params_layouts`: the kernel families' and the models' glue) has the size and member offsets of the WGSL struct naga
//! lays out for the uniform, under the same member names, and sits at the binding the
//! dispatch convention gives it (group 0, binding 0; storage buffers from binding 1). Runs
//! without a GPU.

use lowbit::gpu::preprocess;
use lowbit::gpu::contract::ParamsLayout;
use lowbit::models::params_layouts;

fn source(name: &str) -> String {
    let path = format!("{}/shaders/{name}.wgsl", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Padding members carry no meaning and may be named or split differently on each side.
fn is_padding(name: &str) -> bool {
    name.starts_with('_') || name.starts_with("pad") && name[3..].chars().all(|c| c.is_ascii_digit())
}

/// The differences between `layout` and the WGSL struct in `shader`, as messages.
fn compare(layout: &ParamsLayout, shader: &str) -> Vec<String> {
    let what = format!("{shader}.wgsl {} {:?}", layout.wgsl_struct, layout.defines);
    let text = preprocess(&source(shader), layout.defines).unwrap_or_else(|e| panic!("{what}: {e}"));
    let module = naga::front::wgsl::parse_str(&text).unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&text)));
    let Some((handle, ty)) = module.types.iter().find(|(_, t)| t.name.as_deref() == Some(layout.wgsl_struct)) else {
        return vec![format!("{what}: no such struct")];
    };
    let naga::TypeInner::Struct { members, span } = &ty.inner else { return vec![format!("{what}: not a struct")] };
    let mut errors = Vec::new();
    let wgsl: Vec<(&str, usize)> =
        members.iter().filter_map(|m| Some((m.name.as_deref()?, m.offset as usize))).filter(|(n, _)| !is_padding(n)).collect();
    let rust: Vec<(&str, usize)> = layout.fields.iter().copied().filter(|(n, _)| !is_padding(n)).collect();
    if wgsl != rust {
        errors.push(format!("{what}: members (name, offset) differ\n  WGSL {wgsl:?}\n  Rust {rust:?}"));
    }
    // The buffer the kernel uploads must cover everything the shader reads; more than the next
    // 16-byte multiple would mean a field the shader does not know.
    let span = *span as usize;
    if layout.size < span || layout.size > span.next_multiple_of(16) {
        errors.push(format!("{what}: Rust size {} for a WGSL struct of {span} bytes", layout.size));
    }
    // Where a uniform global of this type exists, it is binding 0 of group 0, and every other
    // buffer of the shader comes after it in group 0.
    for (_, var) in module.global_variables.iter() {
        let Some(b) = &var.binding else { continue };
        if var.ty == handle {
            if var.space != naga::AddressSpace::Uniform || (b.group, b.binding) != (0, 0) {
                errors.push(format!("{what}: the parameters are {:?} at group {} binding {}, not uniform at 0/0", var.space, b.group, b.binding));
            }
        } else if b.group != 0 || (b.binding == 0 && module.global_variables.iter().any(|(_, v)| v.ty == handle)) {
            errors.push(format!("{what}: {:?} at group {} binding {} collides with the parameters", var.name, b.group, b.binding));
        }
    }
    errors
}

#[test]
fn params_blocks_match_their_wgsl_structs() {
    let mut errors = Vec::new();
    let mut checked = 0;
    for layout in params_layouts() {
        for shader in layout.shaders {
            errors.extend(compare(layout, shader));
            checked += 1;
        }
    }
    eprintln!("{checked} (struct, shader) pairs checked");
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Every shader that takes a parameter uniform has its Rust layout registered.
#[test]
fn every_shader_with_params_is_covered() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let covered: Vec<&str> = params_layouts().iter().flat_map(|l| l.shaders.iter().copied()).collect();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let has_params = text.lines().any(|l| l.contains("@binding(0) var<uniform>"));
        let included = lowbit::gpu::INCLUDES.iter().any(|(n, _)| *n == name);
        // An include's uniform (linear.wgsl's) is checked through the shaders that include it.
        if has_params && !included && !covered.contains(&name.as_str()) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "shaders with a parameter uniform but no registered Rust layout: {missing:?}");
}

/// The comparison catches what it is for: a moved field and a wrong size.
#[test]
fn a_mismatch_is_reported() {
    let moved = ParamsLayout { shaders: &["elementwise"], defines: &[], wgsl_struct: "Params", size: 8, fields: &[("w", 0), ("n", 4)] };
    assert!(!compare(&moved, "elementwise").is_empty());
    let short = ParamsLayout { size: 4, fields: &[("n", 0), ("w", 4)], ..moved };
    assert!(compare(&short, "elementwise").iter().any(|e| e.contains("size")));
    let right = ParamsLayout { size: 8, ..short };
    assert_eq!(compare(&right, "elementwise"), Vec::<String>::new());
}
