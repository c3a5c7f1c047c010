//! The graph executor: memory planning by liveness, in-place updates, reuse of a plan across
//! runs (stale buffers, cached bind groups), profiling, and the models built on it.

mod common;

use std::path::PathBuf;

use common::{assert_nmse, gpu, random, F32_NMSE};
use lowbit::gpu::{DType, Tensor};
use lowbit::graph::{plan, Graph, Plan};
use lowbit::kernels::elementwise::Activation;
use lowbit::models::vit::VisionTransformer;
use lowbit::models::vqgan::{TokenGrid, VqganDecoder};
use lowbit::formats::WeightFormat;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// x → gelu → swish → gelu.
fn chain(n: usize) -> Graph {
    let mut g = Graph::new();
    let x = g.input(&[n], DType::F32);
    let a = g.activation("a", x, Activation::Gelu);
    let b = g.activation("b", a, Activation::Swish);
    let c = g.activation("c", b, Activation::Gelu);
    g.output(c);
    g
}

#[test]
fn buffers_are_shared_by_lifetime() {
    let g = chain(1000);
    let p = plan(&g).unwrap();
    assert_eq!(g.unplanned_bytes(), 4 * 4000);
    // The input keeps its buffer (a plan may run again on it); c takes a's (a dies after b).
    assert_eq!(p.buffers.len(), 3, "{p:?}");
    assert_eq!(p.assignment, [0, 1, 2, 1], "{p:?}");
    assert_eq!(p.peak_bytes(), 3 * 4000);
}

#[test]
fn chain_matches_the_kernels_run_one_by_one() {
    let gpu = gpu();
    let n = 1003;
    let x = random(n, 1, 3.0);
    let plan = Plan::new(gpu, chain(n)).unwrap();
    plan.set_input(gpu, 0, &x).unwrap();
    let got = plan.run(gpu).unwrap()[0].to_vec_f32(gpu).unwrap();
    let want: Vec<f32> = x
        .iter()
        .map(|&v| Activation::Gelu.reference(Activation::Swish.reference(Activation::Gelu.reference(v))))
        .collect();
    assert_nmse("chain", &got, &want, F32_NMSE);
}

#[test]
fn reading_a_value_after_its_in_place_update_is_refused() {
    let mut g = Graph::new();
    let x = g.input(&[8], DType::F32);
    let y = g.input(&[8], DType::F32);
    let sum = g.add("residual", x, y).unwrap();
    // `x` now holds x + y: reading the old x is a bug the planner must catch.
    let bad = g.activation("stale", x, Activation::Gelu);
    g.output(sum);
    g.output(bad);
    let err = plan(&g).unwrap_err().to_string();
    assert!(err.contains("stale") && err.contains("residual"), "{err}");
}

#[test]
fn shape_errors_name_the_node() {
    let mut g = Graph::new();
    let x = g.input(&[2, 8], DType::F32);
    let err = g.upsample2x("decoder.up.1.upsample", x).unwrap_err().to_string();
    assert!(err.contains("decoder.up.1.upsample"), "{err}");
    assert!(g.reshape(x, &[3, 5]).is_err());
    let gpu = gpu();
    let plan = Plan::new(gpu, chain(16)).unwrap();
    assert!(plan.set_input(gpu, 0, &[0f32; 15]).is_err());
    assert!(plan.set_input(gpu, 1, &[0f32; 16]).is_err());
}

/// A second run of the same plan starts from the first run's leftovers in every buffer and
/// reuses its bind groups: results must not change, and no bind group may be added.
#[test]
fn vit_plan_reruns_identically_with_cached_bind_groups() {
    let gpu = gpu();
    let model = VisionTransformer::from_pretrained(gpu, &fixture("vit_layerscale_test"), None, WeightFormat::F32).unwrap();
    let s = model.config.img_size;
    let plan = model.plan(gpu, 2).unwrap();
    assert!(plan.peak_bytes() < plan.unplanned_bytes() / 2, "{} vs {}", plan.peak_bytes(), plan.unplanned_bytes());
    let images = random(2 * 3 * s * s, 7, 1.0);
    plan.set_input(gpu, 0, &images).unwrap();
    let first = plan.run(gpu).unwrap()[0].to_vec_f32(gpu).unwrap();
    let other = random(2 * 3 * s * s, 8, 1.0);
    plan.set_input(gpu, 0, &other).unwrap();
    plan.run(gpu).unwrap();
    let cached = plan.cached_bind_groups();
    assert!(cached * 2 >= plan.node_count(), "{cached} bind groups for {} nodes", plan.node_count());
    plan.set_input(gpu, 0, &images).unwrap();
    let again = plan.run(gpu).unwrap()[0].to_vec_f32(gpu).unwrap();
    assert_eq!(first, again);
    assert_eq!(plan.cached_bind_groups(), cached);
    let one_shot = model.forward(gpu, &Tensor::from_f32(gpu, &[2, 3, s, s], &images).unwrap()).unwrap();
    assert_eq!(first, one_shot.to_vec_f32(gpu).unwrap());
}

#[test]
fn vqgan_plan_profiles_every_node() {
    let gpu = gpu();
    let model = VqganDecoder::from_pretrained(gpu, &fixture("vqgan_tiny_test"), None, WeightFormat::F32).unwrap();
    let grid = TokenGrid::new(&[1, 8, 8], (0..64).map(|i| (i * 7 % 64) as i64).collect()).unwrap();
    let ids: Vec<u32> = grid.ids.iter().map(|&i| i as u32).collect();
    let plan = model.plan(gpu, 1, 8, 8).unwrap();
    plan.set_input(gpu, 0, &ids).unwrap();
    let want = model.decode(gpu, &grid).unwrap().to_vec_f32(gpu).unwrap();
    let (out, times) = plan.profile(gpu).unwrap();
    assert_eq!(times.len(), plan.node_count());
    assert!(times.iter().any(|t| t.name == "decoder.conv_out" && t.op == "conv2d"));
    assert!(times.iter().all(|t| t.ms >= 0.0) && times.iter().any(|t| t.ms > 0.0));
    assert_eq!(out[0].to_vec_f32(gpu).unwrap(), want);
    let totals = lowbit::graph::totals_per_op(&times);
    assert_eq!(totals.iter().map(|t| t.1).sum::<usize>(), times.len());
    // The browser's profiler (each node awaited until the queue reports it done) gives the
    // same nodes and outputs, polled here as the page's event loop would.
    let (out, wall) = lowbit::Gpu::block_on(plan.profile_async(gpu)).unwrap();
    assert_eq!(wall.iter().map(|t| (&t.name, t.op)).collect::<Vec<_>>(), times.iter().map(|t| (&t.name, t.op)).collect::<Vec<_>>());
    assert!(wall.iter().all(|t| t.ms.is_finite() && t.ms >= 0.0) && wall.iter().any(|t| t.ms > 0.0));
    assert_eq!(out[0].to_vec_f32(gpu).unwrap(), want);
}

/// Results depend on the inputs only: not on what the buffers held before, nor on whether
/// values share buffers.
#[test]
fn planned_memory_changes_nothing() {
    let gpu = gpu();
    let model = VqganDecoder::from_pretrained(gpu, &fixture("vqgan_tiny_test"), None, WeightFormat::F32).unwrap();
    let ids: Vec<u32> = (0..128).map(|i| (i * 7 % 64) as u32).collect();
    let mut results = Vec::new();
    for shared in [false, true] {
        let g = model.graph(2, 8, 8).unwrap();
        let memory = if shared { plan(&g).unwrap() } else { lowbit::graph::unshared(&g) };
        let p = Plan::with_memory(gpu, g, memory).unwrap();
        p.set_input(gpu, 0, &ids).unwrap();
        results.push(p.run(gpu).unwrap()[0].to_vec_f32(gpu).unwrap());
        p.fill_buffers(gpu, f32::NAN.to_bits());
        p.set_input(gpu, 0, &ids).unwrap();
        results.push(p.run(gpu).unwrap()[0].to_vec_f32(gpu).unwrap());
    }
    assert!(results[0].iter().all(|v| v.is_finite()));
    assert!(results.iter().all(|r| r == &results[0]));
}

#[test]
fn unshared_plans_expose_every_node_input() {
    let gpu = gpu();
    let n = 64;
    let x = random(n, 4, 2.0);
    let plan = Plan::unshared(gpu, chain(n)).unwrap();
    plan.set_input(gpu, 0, &x).unwrap();
    plan.run(gpu).unwrap();
    let (inputs, out) = plan.node_values("b").unwrap();
    let a: Vec<f32> = x.iter().map(|&v| Activation::Gelu.reference(v)).collect();
    assert_nmse("input of b", &inputs[0].to_vec_f32(gpu).unwrap(), &a, F32_NMSE);
    let b: Vec<f32> = a.iter().map(|&v| Activation::Swish.reference(v)).collect();
    assert_nmse("output of b", &out.to_vec_f32(gpu).unwrap(), &b, F32_NMSE);
    assert_eq!(plan.nodes().map(|(name, _)| name).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert!(plan.node_values("z").is_err());
}
