//! WGSL sources (compiled into the binary) → cached compute pipelines, and the one dispatch
//! helper every kernel uses.
//!
//! Binding convention for every kernel: `@group(0) @binding(0)` is a uniform block of
//! parameters (omitted when a kernel has none), storage buffers follow from binding 1 in the
//! order the kernel's Rust wrapper passes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};


use super::contract::Contract;
use super::{preprocess_file, Encoder, Gpu, Preprocessed};
use crate::{Error, Result};

/// A WGSL kernel family: one file in `shaders/`.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

/// `shader!("gemv_q")` embeds `shaders/gemv_q.wgsl` at compile time.
#[macro_export]
macro_rules! shader {
    ($name:literal) => {
        $crate::gpu::Shader {
            name: $name,
            source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $name, ".wgsl")),
        }
    };
}

type Key = (&'static str, String, Vec<String>, String);

/// What makes two dispatches' bind groups interchangeable.
#[derive(PartialEq, Eq, Hash)]
struct BindKey {
    pipeline: wgpu::ComputePipeline,
    buffers: Vec<wgpu::Buffer>,
    params: Vec<u8>,
}

/// Bind groups (with their params uniforms) kept from one run of a planned graph to the next:
/// the graph's buffers stay the same, so every dispatch after the first finds its bind group here.
/// Entries a run did not use (kernels' per-call scratch buffers) are dropped at its end.
#[derive(Default)]
pub struct BindGroupCache {
    map: HashMap<BindKey, (wgpu::BindGroup, u64)>,
    run: u64,
}

impl BindGroupCache {
    /// Ends a run: forgets the bind groups it did not use.
    pub fn end_run(&mut self) {
        let run = self.run;
        self.map.retain(|_, (_, used)| *used == run);
        self.run += 1;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    map: Mutex<HashMap<Key, Arc<wgpu::ComputePipeline>>>,
    /// Each pipeline's bindings as its WGSL declares them, with the shader's name.
    contracts: Mutex<HashMap<wgpu::ComputePipeline, (&'static str, Arc<Contract>)>>,
}

impl Gpu {
    /// The pipeline for `entry` of `shader` with the given `#if` defines and `override`
    /// constants, compiled once per device.
    pub fn pipeline(
        &self,
        shader: &Shader,
        entry: &str,
        defines: &[&str],
        constants: &[(&str, f64)],
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let mut sorted: Vec<String> = defines.iter().map(|s| s.to_string()).collect();
        sorted.sort();
        let key: Key = (shader.name, entry.to_string(), sorted, format!("{constants:?}"));
        if let Some(p) = self.pipelines.map.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let source = preprocess_file(shader.name, shader.source, defines)
            .map_err(|message| Error::Shader { name: shader.name.into(), message })?;
        let shader_err = |e: Error| Error::Shader {
            name: format!("{}::{entry} {defines:?}", shader.name),
            message: match locate_error(&source) {
                Some(at) => format!("{at}: {e}"),
                None => e.to_string(),
            },
        };
        let module = self
            .scoped(|| {
                self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader.name),
                    source: wgpu::ShaderSource::Wgsl(source.text.as_str().into()),
                })
            })
            .map_err(shader_err)?;
        // The layout comes from what the WGSL declares, so a read-only buffer is bound read-only.
        let contract = Contract::reflect(&source.text, entry).map_err(|message| shader_err(Error::Invalid(message)))?;
        let bind_layout = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(entry), entries: &contract.layout_entries() });
        let layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry),
            bind_group_layouts: &[Some(&bind_layout)],
            immediate_size: 0,
        });
        let pipeline = self
            .scoped(|| {
                self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&layout),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        // Kernels initialise the workgroup memory they read.
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
            })
            .map_err(shader_err)?;
        self.pipelines.contracts.lock().unwrap().insert(pipeline.clone(), (shader.name, Arc::new(contract)));
        let p = Arc::new(pipeline);
        self.pipelines.map.lock().unwrap().insert(key, p.clone());
        Ok(p)
    }

    /// Records one dispatch: `params` (raw bytes of a `#[repr(C)]` struct, empty for none) go
    /// to binding 0, `buffers` to bindings 1.., `groups` is the workgroup grid. An encoder
    /// carrying a bind-group cache (a planned graph's) reuses the bind group, params included,
    /// from the previous run with the same pipeline, buffers and params.
    pub fn dispatch(
        &self,
        enc: &mut Encoder,
        pipeline: &wgpu::ComputePipeline,
        params: &[u8],
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) -> Result<()> {
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::Invalid(format!("dispatch {groups:?} exceeds {max} workgroups per dimension")));
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let bind_group = match enc.bind_groups.clone() {
            Some(cache) => {
                let key = BindKey { pipeline: pipeline.clone(), buffers: buffers.iter().map(|&b| b.clone()).collect(), params: params.to_vec() };
                let mut cache = cache.lock().unwrap();
                let run = cache.run;
                match cache.map.get_mut(&key) {
                    Some((bg, used)) => {
                        *used = run;
                        bg.clone()
                    }
                    None => {
                        let bg = self.bind_group(pipeline, params, buffers)?;
                        cache.map.insert(key, (bg.clone(), run));
                        bg
                    }
                }
            }
            None => self.bind_group(pipeline, params, buffers)?,
        };
        enc.dispatches += 1;
        let pass = enc.pass();
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        Ok(())
    }

    fn bind_group(&self, pipeline: &wgpu::ComputePipeline, params: &[u8], buffers: &[&wgpu::Buffer]) -> Result<wgpu::BindGroup> {
        // Every pipeline comes from `Gpu::pipeline`, which recorded its contract.
        if let Some((shader, contract)) = self.pipelines.contracts.lock().unwrap().get(pipeline) {
            contract.check(shader, params, buffers.len())?;
        }
        let mut entries = Vec::with_capacity(buffers.len() + 1);
        let uniform;
        let first = if params.is_empty() {
            0
        } else {
            // Uniform blocks are sized in 16-byte units.
            let mut bytes = params.to_vec();
            bytes.resize(params.len().div_ceil(16) * 16, 0);
            uniform = self.buffer_init("params", &bytes, wgpu::BufferUsages::UNIFORM)?;
            entries.push(wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() });
            1
        };
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: first + i as u32, resource: b.as_entire_binding() });
        }
        self.scoped(|| {
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            })
        })
    }

    /// A 2-D grid covering `n` workgroups within the per-dimension limit. Shaders recover the
    /// linear index as `wg.x + wg.y * num_workgroups.x` and skip the overshoot.
    pub fn grid(&self, n: u32) -> [u32; 3] {
        let max = self.limits.max_compute_workgroups_per_dimension.max(1);
        if n <= max {
            [n, 1, 1]
        } else {
            [max, n.div_ceil(max), 1]
        }
    }
}

/// The file and line of the first error naga finds in preprocessed WGSL (wgpu's own message
/// numbers the lines of the preprocessed text, which includes other files).
fn locate_error(source: &Preprocessed) -> Option<String> {
    let text = &source.text;
    let location = match naga::front::wgsl::parse_str(text) {
        Err(e) => e.location(text),
        Ok(module) => {
            let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
            validator.validate(&module).err()?.location(text)
        }
    }?;
    source.origin(location.line_number as usize)
}
