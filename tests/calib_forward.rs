//! Calibration's forward passes on the CPU (`quant::calibrate::Forward::Cpu`, which a CPU
//! adapter uses for the ViT family) hand every node the same input as the graph on the
//! adapter: the same shapes, the same passes, and values that differ only by f32 summation
//! order. And one pass read by several readers gives each what its own pass would.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use lowbit::gpu::AdapterClass;
use lowbit::log::Progress;
use lowbit::models::vit::backprop::NodeInput;
use lowbit::quant::calibrate::{Calibration, Forward, Model, Reader};
use lowbit::quant::hessians::Hessians;

/// Per node: (values over every pass, shape and output shape of the first pass, (first, count) of every pass).
type Seen = HashMap<String, (Vec<f32>, Vec<usize>, Vec<usize>, Vec<(usize, usize)>)>;

fn seen(model: &Model, calib: &Calibration, nodes: &[String], on: Forward) -> Seen {
    let mut out = Seen::new();
    model
        .visit_inputs_on(on, common::gpu(), &model.weights, calib, nodes, None, |first, count, x| {
            let e = out.entry(x.node.to_string()).or_insert_with(|| (Vec::new(), x.shape.to_vec(), x.out_shape.to_vec(), Vec::new()));
            e.0.extend_from_slice(x.values);
            e.3.push((first, count));
            Ok(())
        })
        .unwrap();
    out
}

#[test]
fn cpu_forward_sees_what_the_graph_sees() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let gpu = common::gpu();
    // Plain, LayerScale, qk_norm, registers, distilled (two heads), average pooling, QuickGELU.
    for name in ["vit_tiny_test", "vit_layerscale_test", "vit_qknorm_test", "vit_dinov2_reg4_test", "deit_distilled_test", "vit_gap_test", "vit_clip_quickgelu_test"] {
        let model = Model::load(&root.join("tests/fixtures").join(name)).unwrap();
        // 10 images: a full pass of 8 and one of 2.
        let calib = Calibration::load(gpu, &model, &root.join("assets/samples"), 10, 0).unwrap();
        let mut nodes: Vec<String> = model.layers().iter().map(|l| l.node.clone()).collect();
        let depth = nodes.iter().filter(|n| n.ends_with(".attn.qkv")).count();
        assert!(depth > 0, "{name}: no blocks found");
        nodes.extend((0..depth).map(|i| format!("blocks.{i}.attn")));
        let expected = if gpu.adapter_class == AdapterClass::Cpu { Forward::Cpu } else { Forward::Adapter };
        assert_eq!(model.forward_for(gpu, &calib, &nodes), expected, "{name}");
        // A node the CPU pass does not see sends every pass to the adapter.
        let residual = vec!["blocks.0.norm1".to_string()];
        assert_eq!(model.forward_for(gpu, &calib, &residual), Forward::Adapter, "{name}");

        let (a, c) = (seen(&model, &calib, &nodes, Forward::Adapter), seen(&model, &calib, &nodes, Forward::Cpu));
        assert_eq!(a.len(), nodes.len(), "{name}: the graph saw {} of {} nodes", a.len(), nodes.len());
        for node in &nodes {
            let ((xa, sa, oa, pa), (xc, sc, oc, pc)) = (&a[node], &c[node]);
            assert_eq!((sa, oa, pa), (sc, oc, pc), "{name} {node}: shapes or passes differ");
            assert_eq!(pa, &[(0, 8), (8, 2)], "{name} {node}");
            assert_eq!(xa.len(), xc.len(), "{name} {node}");
            // The same f32 arithmetic in another order: a few ulps (~1e-7) per operation,
            // grown through two blocks of sums over ≤ 128 terms, stay within ~1e-5 of the
            // values' scale, an NMSE ≤ 1e-10 (measured: ≤ 1.4e-13). Any wrong row, channel or
            // token is an NMSE of order 1.
            let (err, power) = xa.iter().zip(xc).fold((0f64, 0f64), |(e, p), (&x, &y)| (e + ((x - y) as f64).powi(2), p + (x as f64).powi(2)));
            let nmse = err / power.max(f64::MIN_POSITIVE);
            assert!(nmse < 1e-10, "{name} {node}: NMSE {nmse:e} between the graph's input and the CPU pass's");
        }
    }
}

/// Records what a calibration pass hands it: (node, first, count, values).
struct Record {
    nodes: Vec<String>,
    got: Vec<(String, usize, usize, Vec<f32>)>,
}

impl Reader for Record {
    fn nodes(&self) -> Vec<String> {
        self.nodes.clone()
    }
    fn read(&mut self, first: usize, count: usize, x: &NodeInput) -> lowbit::Result<()> {
        self.got.push((x.node.to_string(), first, count, x.values.to_vec()));
        Ok(())
    }
}

/// `Model::read_pass`, which the quantizer uses to read activation samples, Hessians and
/// rotation rows in one pass, hands each reader exactly what a pass of its own would: its
/// nodes only, a node two readers want to both, the same values.
#[test]
fn one_pass_feeds_every_reader_as_its_own_pass_would() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let gpu = common::gpu();
    let model = Model::load(&root.join("tests/fixtures/vit_tiny_test")).unwrap();
    let calib = Calibration::load(gpu, &model, &root.join("assets/samples"), 10, 0).unwrap();
    let layers = model.layers();
    let record = |nodes: &[&str]| Record { nodes: nodes.iter().map(|n| n.to_string()).collect(), got: Vec::new() };
    let (mut a, mut b) = (record(&["blocks.0.attn.qkv", "blocks.0.mlp.fc1"]), record(&["blocks.0.mlp.fc1", "blocks.1.attn"]));
    let mut h = Hessians::new(&layers, &[None], &calib);
    model.read_pass(gpu, &model.weights, &calib, &mut [&mut a, &mut h, &mut b], None).unwrap();
    let shared = h.finish().remove(0);

    let (mut a1, mut b1) = (record(&["blocks.0.attn.qkv", "blocks.0.mlp.fc1"]), record(&["blocks.0.mlp.fc1", "blocks.1.attn"]));
    model.read_pass(gpu, &model.weights, &calib, &mut [&mut a1], None).unwrap();
    model.read_pass(gpu, &model.weights, &calib, &mut [&mut b1], None).unwrap();
    let alone = model.hessians(gpu, &layers, &calib, &mut Progress::new("hessians", calib.count())).unwrap();

    let key = |r: &Record| r.got.iter().map(|(n, f, c, _)| (n.clone(), *f, *c)).collect::<Vec<_>>();
    let mut expected_a: Vec<_> = [("blocks.0.attn.qkv", 0, 8), ("blocks.0.mlp.fc1", 0, 8), ("blocks.0.attn.qkv", 8, 2), ("blocks.0.mlp.fc1", 8, 2)].map(|(n, f, c)| (n.to_string(), f, c)).to_vec();
    let mut got_a = key(&a);
    expected_a.sort();
    got_a.sort();
    assert_eq!(got_a, expected_a, "reader a got other nodes or passes");
    assert_eq!(b.got.len(), 4, "reader b: {:?}", key(&b));
    for (shared, alone) in [(&a, &a1), (&b, &b1)] {
        let (mut s, mut o) = (shared.got.clone(), alone.got.clone());
        s.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
        o.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
        // The same forward pass, deterministic: bit for bit.
        assert!(s == o, "a reader got other values in the shared pass than in its own");
    }
    assert_eq!(shared.len(), layers.len());
    for l in &layers {
        assert!(shared[&l.key].samples > 0, "{}: no rows", l.key);
        assert_eq!(shared[&l.key].samples, alone[&l.key].samples, "{}", l.key);
        assert!(shared[&l.key].matrix() == alone[&l.key].matrix(), "{}: the shared pass's Hessian differs", l.key);
    }
}
