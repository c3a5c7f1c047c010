//! Issue 14 item 3, GPU faults on lavapipe: a lost device (injected with `Device::destroy`) is
//! an error that says so, never a hang or a panic; an allocation the adapter cannot make is an
//! out-of-memory error naming the size asked and the limit, before any work is submitted; a
//! validation error is a `Result` on whichever thread hit it.

mod common;

use std::sync::Arc;

use common::{fixture_dir, lowbit};
use lowbit::formats::WeightFormat;
use lowbit::gpu::{DType, Shader, Tensor};
use lowbit::graph::{Graph, Plan};
use lowbit::models::vit::VisionTransformer;
use lowbit::models::vqgan::TokenGrid;
use lowbit::{Error, Gpu, GpuOptions};

/// A fresh device per test: the loss tests destroy theirs.
fn fresh(opts: GpuOptions) -> Gpu {
    Gpu::with_options(&opts).expect("a GPU adapter")
}

fn tiny_vit(gpu: &Gpu) -> VisionTransformer {
    VisionTransformer::from_pretrained(gpu, &fixture_dir("vit_tiny_test"), None, WeightFormat::F32).unwrap()
}

fn test_image() -> image::RgbImage {
    image::open(fixture_dir("vit_tiny_test/image_exact.png")).unwrap().to_rgb8()
}

fn assert_lost(r: lowbit::Result<impl std::fmt::Debug>) {
    match r {
        Err(e @ Error::DeviceLost(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("device was lost") && msg.contains("run again"), "{msg}");
        }
        other => panic!("expected a device-lost error, got {other:?}"),
    }
}

#[test]
fn a_destroyed_device_fails_every_later_call_with_a_clear_message() {
    let gpu = fresh(GpuOptions::from_env());
    let vit = tiny_vit(&gpu);
    let img = test_image();
    vit.classify(&gpu, std::slice::from_ref(&img)).unwrap();
    assert!(!gpu.is_lost());
    gpu.device.destroy();
    // A model run (planning, upload, dispatch, readback), a bare tensor, a readback: each one
    // reports the loss rather than a validation error about some dead buffer.
    assert_lost(vit.classify(&gpu, std::slice::from_ref(&img)).map(|_| ()));
    assert_lost(Tensor::zeros(&gpu, &[4], DType::F32).and_then(|t| t.to_vec_f32(&gpu)));
    assert!(gpu.is_lost());
    assert_lost(gpu.wait());
}

#[test]
fn a_device_lost_in_the_middle_of_a_run_is_reported_not_hung() {
    // Injected at the 3rd submission of a classify (upload, graph, readbacks): the loss lands
    // between the pieces of one job, as a driver reset would.
    let gpu = fresh(GpuOptions { lose_device_after: Some(2), ..GpuOptions::from_env() });
    let vit = tiny_vit(&gpu);
    let before = gpu.submissions();
    assert_lost(vit.classify(&gpu, &[test_image()]).map(|_| ()));
    assert!(gpu.submissions() > before);
}

#[test]
fn a_device_destroyed_by_another_thread_ends_the_runs_with_an_error() {
    let gpu = Arc::new(fresh(GpuOptions::from_env()));
    let vit = tiny_vit(&gpu);
    let img = test_image();
    let killer = {
        let gpu = gpu.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(150));
            gpu.device.destroy();
        })
    };
    // Runs until the loss is noticed: whatever the timing, every run is Ok or DeviceLost.
    let start = std::time::Instant::now();
    let err = loop {
        match vit.classify(&gpu, std::slice::from_ref(&img)) {
            Ok(_) => assert!(start.elapsed().as_secs() < 60, "the destroyed device was never noticed"),
            Err(e) => break e,
        }
    };
    killer.join().unwrap();
    assert_lost(Err::<(), _>(err));
}

#[test]
fn the_cli_reports_a_lost_device_and_exits_1() {
    let vit = fixture_dir("vit_tiny_test");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .env("LOWBIT_FAULT_LOSE_DEVICE_AFTER", "1")
        .args(["classify", "--model"])
        .arg(&vit)
        .arg(vit.join("image_exact.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("device was lost") && !stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "printed results after the loss: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_huge_batch_is_out_of_memory_before_anything_is_submitted() {
    let gpu = fresh(GpuOptions::from_env());
    let vit = tiny_vit(&gpu);
    let before = gpu.submissions();
    let err = match Plan::new(&gpu, vit.graph(1_000_000).unwrap()) {
        Err(e) => e,
        Ok(_) => panic!("a batch of a million images was planned"),
    };
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, Error::OutOfMemory(_)), "{msg}");
    // The size asked, the limit, and what made it large.
    assert!(msg.contains("MiB") || msg.contains("GiB"), "{msg}");
    assert!(msg.contains("limit") && msg.contains("1000000"), "{msg}");
    assert_eq!(gpu.submissions(), before, "work was submitted before the refusal");
    // The device is untouched: a normal batch still runs.
    vit.classify(&gpu, &[test_image()]).unwrap();
}

#[test]
fn a_graph_over_the_memory_budget_is_refused_with_both_sizes() {
    let gpu = fresh(GpuOptions { memory_budget: Some(64 << 10), ..GpuOptions::from_env() });
    assert_eq!(gpu.memory_budget(), Some(64 << 10));
    let vit = tiny_vit(&gpu);
    let err = Plan::new(&gpu, vit.graph(64).unwrap()).err().expect("the plan fit a 64 KiB budget");
    let msg = err.to_string();
    assert!(matches!(err, Error::OutOfMemory(_)) && msg.contains("64.0 KiB") && msg.contains("budget"), "{msg}");
    // lavapipe's memory is the process's RAM: without a budget set, the default is the RAM
    // available, so no graph can ask for more than the machine has.
    let default = common::gpu();
    if default.class == lowbit::gpu::AdapterClass::Cpu {
        assert!(default.memory_budget().is_some_and(|b| b > 0));
    }
}

#[test]
fn the_cli_refuses_a_huge_image_with_the_size_and_the_limit() {
    // A 1024×1024 token grid decodes to a 2048×2048 image whose activations (32 channels, f32)
    // are far over lavapipe's 128 MiB binding limit.
    let dir = std::env::temp_dir().join(format!("lowbit-faults-{}-huge", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("huge.safetensors");
    TokenGrid::new(&[1, 1024, 1024], vec![1; 1024 * 1024]).unwrap().save(&tokens, "tokens").unwrap();
    let png = dir.join("huge.png");
    let vq = fixture_dir("vqgan_tiny_test");
    let out = lowbit(&["decode", "--model", vq.to_str().unwrap(), "--tokens", tokens.to_str().unwrap(), "--out", png.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("out of memory") && stderr.contains("limit") && stderr.contains("MiB"), "{stderr}");
    assert!(!stderr.contains("panicked") && !png.exists(), "{stderr}");
}

/// A kernel binding a buffer with the wrong usage (uniform where storage is declared).
fn bad_graph(gpu: &Gpu) -> Graph {
    let shader = Shader {
        name: "faults-write",
        source: "@group(0) @binding(0) var<storage, read_write> a: array<f32>;\n@compute @workgroup_size(1) fn main() { a[0] = 1.0; }",
    };
    let pipe = gpu.pipeline(&shader, "main", &[], &[]).unwrap();
    let wrong = Arc::new(gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("wrong usage"),
        size: 16,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    }));
    let mut g = Graph::new();
    let x = g.input(&[4], DType::F32);
    let y = g.node("bad", "bad", &[x], &[4], DType::F32, move |gpu, enc, _, _| gpu.dispatch(enc, &pipe, &[], &[&wrong], [1, 1, 1]));
    g.output(y);
    g
}

#[test]
fn a_validation_error_in_a_pipeline_is_a_result_on_any_thread() {
    let gpu = Arc::new(fresh(GpuOptions::from_env()));
    // On a worker thread, as the viewer's jobs or a server would run it: the thread returns
    // the error instead of panicking in wgpu's default handler.
    let worker = {
        let gpu = gpu.clone();
        std::thread::spawn(move || -> lowbit::Result<()> {
            let plan = Plan::new(&gpu, bad_graph(&gpu))?;
            plan.set_input(&gpu, 0, &[0.0f32; 4])?;
            plan.run(&gpu).map(|_| ())
        })
    };
    let r = worker.join().expect("the worker thread panicked");
    assert!(matches!(r, Err(Error::Validation(_))), "{r:?}");
    // An error outside any scope (a buffer no adapter allows: mappable for reading and
    // storage) reaches the uncaptured-error handler, which keeps it for the next check.
    let _bad = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("map-read storage"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let r = Tensor::from_f32(&gpu, &[2], &[1.0, 2.0]).and_then(|t| t.to_vec_f32(&gpu));
    assert!(matches!(r, Err(Error::Validation(_))), "{r:?}");
    // And the device carries on after both.
    assert_eq!(Tensor::from_f32(&gpu, &[2], &[1.0, 2.0]).unwrap().to_vec_f32(&gpu).unwrap(), [1.0, 2.0]);
}
