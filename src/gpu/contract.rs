//! What a kernel's WGSL expects at its bindings, read out of the shader by naga when its
//! pipeline is built, and checked against what the Rust side passes at every new bind group.
//!
//! The Rust wrappers and the WGSL mirror each other by hand (a `#[repr(C)] Params` struct, the
//! buffers in binding order). Reading the contract from the shader turns a drifted mirror into
//! an error naming the kernel, instead of garbage or a validation panic on another thread; it
//! also gives each pipeline an explicit bind-group layout (read-only storage where the shader
//! only reads) instead of wgpu's derived one.

use naga::{AddressSpace, StorageAccess};

use crate::{Error, Result};

/// The bindings one entry point uses in group 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Contract {
    pub entry: String,
    /// Size in bytes of the uniform `Params` struct at binding 0; None when the kernel has none.
    pub params: Option<u32>,
    /// The buffers the Rust side passes, in binding order from binding 0 or 1.
    pub buffers: Vec<Access>,
}

/// How a kernel binds one of its buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// A small read-only input staged as a uniform block (`X_UNIFORM` kernels).
    Uniform,
    Read,
    ReadWrite,
}

impl Contract {
    /// Reads the contract of `entry` from preprocessed WGSL.
    pub fn reflect(wgsl: &str, entry: &str) -> std::result::Result<Contract, String> {
        let module = naga::front::wgsl::parse_str(wgsl).map_err(|e| e.emit_to_string(wgsl))?;
        let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
        let info = validator.validate(&module).map_err(|e| e.emit_to_string(wgsl))?;
        let index = module.entry_points.iter().position(|e| e.name == entry).ok_or_else(|| format!("no entry point `{entry}`"))?;
        let uses = info.get_entry_point(index);
        let mut bindings = Vec::new();
        for (handle, var) in module.global_variables.iter() {
            let Some(binding) = &var.binding else { continue };
            if uses[handle].is_empty() {
                continue;
            }
            if binding.group != 0 {
                return Err(format!("`{entry}` uses @group({}); kernels bind everything in group 0", binding.group));
            }
            let access = match var.space {
                AddressSpace::Uniform => Access::Uniform,
                AddressSpace::Storage { access } if access.contains(StorageAccess::STORE) => Access::ReadWrite,
                AddressSpace::Storage { .. } => Access::Read,
                _ => return Err(format!("`{entry}`: binding {} is neither uniform nor storage", binding.binding)),
            };
            bindings.push((binding.binding, access, module.types[var.ty].inner.size(module.to_ctx())));
        }
        bindings.sort();
        // A uniform block at binding 0 is the kernel's Params.
        let params = match bindings.first() {
            Some(&(0, Access::Uniform, size)) => Some(size),
            _ => None,
        };
        let first = u32::from(params.is_some());
        let buffers = &bindings[first as usize..];
        for (i, &(binding, ..)) in buffers.iter().enumerate() {
            if binding != first + i as u32 {
                let used: Vec<u32> = buffers.iter().map(|s| s.0).collect();
                return Err(format!("`{entry}`: buffer bindings {used:?} are not consecutive from {first}"));
            }
        }
        Ok(Contract { entry: entry.to_string(), params, buffers: buffers.iter().map(|b| b.1).collect() })
    }

    /// The explicit bind-group layout these bindings need.
    pub fn layout_entries(&self) -> Vec<wgpu::BindGroupLayoutEntry> {
        let entry = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        };
        let mut out = Vec::with_capacity(self.buffers.len() + 1);
        if self.params.is_some() {
            out.push(entry(0, wgpu::BufferBindingType::Uniform));
        }
        let first = out.len() as u32;
        for (i, &access) in self.buffers.iter().enumerate() {
            let ty = match access {
                Access::Uniform => wgpu::BufferBindingType::Uniform,
                Access::Read => wgpu::BufferBindingType::Storage { read_only: true },
                Access::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
            };
            out.push(entry(first + i as u32, ty));
        }
        out
    }

    /// Checks one dispatch's arguments: the params bytes against the WGSL struct's size, the
    /// buffer count against the storage bindings.
    pub fn check(&self, shader: &str, params: &[u8], buffers: usize) -> Result<()> {
        let what = || format!("{shader}::{}", self.entry);
        match (self.params, params.len() as u32) {
            (None, 0) => {}
            (None, n) => return Err(Error::Invalid(format!("kernel {}: {n} bytes of params for a kernel without a uniform block", what()))),
            // Uniform buffers are bound in 16-byte units: the Rust struct may pad up to the next one.
            (Some(size), n) if n < size || n.div_ceil(16) != size.div_ceil(16) => {
                return Err(Error::Invalid(format!("kernel {}: {n} bytes of params, the WGSL Params struct has {size}", what())))
            }
            _ => {}
        }
        if buffers != self.buffers.len() {
            return Err(Error::Invalid(format!("kernel {}: {buffers} buffers passed, the WGSL binds {}", what(), self.buffers.len())));
        }
        Ok(())
    }
}

/// A `#[repr(C)]` parameter block as Rust lays it out, for `tests/contracts.rs` to compare with
/// the WGSL struct naga lays out: the runtime check above sees only the block's size, so a field
/// moved or retyped on one side only would otherwise feed a kernel garbage without any error.
#[derive(Debug)]
pub struct ParamsLayout {
    /// The shader files (`shaders/NAME.wgsl`) that read the block.
    pub shaders: &'static [&'static str],
    /// `#if` defines under which those shaders declare it.
    pub defines: &'static [&'static str],
    /// The WGSL struct's name.
    pub wgsl_struct: &'static str,
    /// `size_of` the Rust struct.
    pub size: usize,
    /// (name, byte offset) of each Rust field, in order.
    pub fields: &'static [(&'static str, usize)],
}

/// The `ParamsLayout` of a Rust struct, declared beside it:
/// `params_layout!(Params, ["norm"], ["AFFINE"], "Params", [rows, n])`.
#[macro_export]
macro_rules! params_layout {
    ($ty:ty, [$($shader:literal),*], [$($define:literal),*], $wgsl:literal, [$($field:ident),* $(,)?]) => {
        $crate::gpu::contract::ParamsLayout {
            shaders: &[$($shader),*],
            defines: &[$($define),*],
            wgsl_struct: $wgsl,
            size: std::mem::size_of::<$ty>(),
            fields: &[$((stringify!($field), std::mem::offset_of!($ty, $field))),*],
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const WGSL: &str = "
struct Params { n: u32, scale: f32, }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> unused: array<f32>;
@compute @workgroup_size(64) fn scale(@builtin(global_invocation_id) id: vec3<u32>) {
    if id.x < p.n { y[id.x] = x[id.x] * p.scale; }
}
@compute @workgroup_size(64) fn gap(@builtin(global_invocation_id) id: vec3<u32>) {
    unused[id.x] = x[id.x];
}";

    #[test]
    fn reflects_params_and_bindings() {
        let c = Contract::reflect(WGSL, "scale").unwrap();
        assert_eq!(c, Contract { entry: "scale".into(), params: Some(8), buffers: vec![Access::Read, Access::ReadWrite] });
        assert!(c.check("t", &[0; 8], 2).is_ok());
        // The Rust side may pad the struct to 16 bytes, never shrink it or add a field beyond.
        assert!(c.check("t", &[0; 16], 2).is_ok());
        assert!(c.check("t", &[0; 4], 2).is_err());
        assert!(c.check("t", &[0; 8], 3).unwrap_err().to_string().contains("3 buffers passed, the WGSL binds 2"));
        let err = Contract::reflect(WGSL, "gap").unwrap_err();
        assert!(err.contains("not consecutive"), "{err}");
        assert!(Contract::reflect(WGSL, "nope").is_err());
    }
}
