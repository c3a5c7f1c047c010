//! The GPU context: capabilities, forced fallbacks, binding limits, and errors as values.
mod common;
use common::*;
use lowbit::gpu::{DType, Tensor};
use lowbit::{Error, Gpu, GpuOptions};

#[test]
fn reports_adapter_and_caps() {
    let gpu = gpu();
    eprintln!("adapter {} class {:?} caps {:?}", gpu.adapter_name(), gpu.class, gpu.caps);
    assert!(!gpu.info.name.is_empty());
    assert!(gpu.max_binding_size() >= 128 << 20 || gpu.max_binding_size() == gpu.limits.max_storage_buffer_binding_size & !255);
}

#[test]
fn fallback_switches_every_optional_feature_off() {
    let g = gpu_fallback();
    assert!(!g.caps.f16 && !g.caps.subgroups && !g.caps.packed_dot);
}

#[test]
fn adapter_substring_that_matches_nothing_is_a_clear_error() {
    let opts = GpuOptions { adapter: Some("no-such-adapter-xyz".into()), ..Default::default() };
    match Gpu::with_options(&opts) {
        Err(Error::NoAdapter(msg)) => assert!(msg.contains("no-such-adapter-xyz"), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("an adapter matched a nonsense name"),
    }
}

#[test]
fn split_rows_respects_the_binding_limit() {
    let gpu = Gpu::with_options(&GpuOptions { max_binding_size: Some(4096), ..GpuOptions::from_env() }).unwrap();
    assert_eq!(gpu.max_binding_size(), 4096);
    let parts = gpu.split_rows(100, 300).unwrap();
    assert!(parts.iter().all(|r| r.len() as u64 * 300 <= 4096));
    assert_eq!(parts.first().unwrap().start, 0);
    assert_eq!(parts.last().unwrap().end, 100);
    assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
    // A single row over the limit cannot be split by rows: an error, not a silent truncation.
    assert!(gpu.split_rows(4, 5000).is_err());
    // Uploading a tensor over the limit is refused with a message that says so.
    let err = Tensor::from_f32(&gpu, &[2048], &vec![0.0; 2048]).unwrap_err();
    assert!(err.to_string().contains("binding limit"), "{err}");
}

#[test]
fn validation_errors_come_back_as_values() {
    let gpu = gpu();
    // A pipeline whose shader does not compile.
    let bad = lowbit::gpu::Shader { name: "broken", source: "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }" };
    let err = gpu.pipeline(&bad, "main", &[], &[]).unwrap_err();
    assert!(matches!(err, Error::Shader { .. }), "{err}");
    // A dispatch that binds a buffer of the wrong usage (uniform where storage is expected).
    let shader = lowbit::gpu::Shader {
        name: "copy",
        source: "@group(0) @binding(0) var<storage, read_write> a: array<f32>;\n@compute @workgroup_size(1) fn main() { a[0] = 1.0; }",
    };
    let pipe = gpu.pipeline(&shader, "main", &[], &[]).unwrap();
    let wrong = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    });
    let mut enc = gpu.encoder();
    let r = gpu.dispatch(&mut enc, &pipe, &[], &[&wrong], [1, 1, 1]);
    let r = r.and_then(|_| gpu.submit(enc).map(|_| ()));
    assert!(matches!(r, Err(Error::Validation(_))), "{r:?}");
    // The device stays usable after a caught error.
    let t = Tensor::from_f32(gpu, &[3], &[1.0, 2.0, 3.0]).unwrap();
    assert_eq!(t.to_vec_f32(gpu).unwrap(), [1.0, 2.0, 3.0]);
}

#[test]
fn impossible_allocations_are_out_of_memory_or_limit_errors() {
    let gpu = gpu();
    let huge = gpu.device.limits().max_buffer_size.saturating_mul(2);
    let r = gpu.scoped(|| {
        gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: huge,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    });
    assert!(r.is_err(), "a {huge}-byte buffer was accepted");
}

#[test]
fn lost_device_is_reported() {
    let gpu = Gpu::new().unwrap();
    gpu.device.destroy();
    let r = Tensor::zeros(&gpu, &[4], DType::F32).and_then(|t| t.to_vec_f32(&gpu));
    assert!(r.is_err(), "work on a destroyed device succeeded");
    eprintln!("after destroy: {}", r.unwrap_err());
}
