//! Checkpoints holding packed low-bit matrices (`models::packed`): the models load them as
//! stored, with the same results as packing the f32 weights at load time.

mod common;
use common::*;
use lowbit::gpu::Tensor;
use lowbit::models::{VisionTransformer, WeightSummary, Weights};
use lowbit::models::packed::{self, Description, PackedTensor};
use lowbit::formats::WeightFormat;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vit_tiny_test")
}

/// The fixture with every Linear and the patch projection packed in `format`, in a folder of
/// its own per call: the tests run in parallel, and two of them pack q8 (sharing one folder,
/// one read the file while the other rewrote it: "file not fully covered").
fn quantized_copy(format: WeightFormat) -> PathBuf {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let w = Weights::load(&fixture().join("model.safetensors")).unwrap();
    let dir = std::env::temp_dir().join(format!("lowbit-packed-{}-{}-{call}", std::process::id(), format.name()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture().join("config.json"), dir.join("config.json")).unwrap();
    let (mut floats, mut matrices, mut desc) = (Vec::new(), Vec::new(), Description::default());
    for (name, t) in &w.tensors {
        let is_matrix = name.ends_with(".weight") && t.shape.len() >= 2;
        if is_matrix {
            let m = w.matrix(name, &t.shape, format).unwrap();
            desc.tensors.insert(name.clone(), PackedTensor { format: format.name(), shape: t.shape.clone(), extra: Default::default() });
            matrices.push((name.clone(), m));
        } else {
            floats.push((name.clone(), t.shape.clone(), t.data.clone()));
        }
    }
    packed::save(&dir.join("model.safetensors"), &floats, &matrices, &desc).unwrap();
    dir
}

#[test]
fn packed_checkpoints_load_as_stored() {
    let gpu = gpu();
    let images = Tensor::from_f32(gpu, &[2, 3, 32, 32], &random(2 * 3 * 32 * 32, 3, 1.0)).unwrap();
    for format in [WeightFormat::Q8 { group: None }, WeightFormat::Q4 { group: 32, zero_point: true }, WeightFormat::Ternary] {
        let dir = quantized_copy(format);
        let stored = VisionTransformer::from_pretrained(gpu, &dir, None, WeightFormat::F32).unwrap();
        let at_load = VisionTransformer::from_pretrained(gpu, &fixture(), None, format).unwrap();
        let a = stored.forward(gpu, &images).unwrap().to_vec_f32(gpu).unwrap();
        let b = at_load.forward(gpu, &images).unwrap().to_vec_f32(gpu).unwrap();
        assert_eq!(a, b, "{}", format.name());
        // The file is smaller than the f32 one, and the summary knows why.
        let summary = WeightSummary::new(&Weights::load(&dir.join("model.safetensors")).unwrap()).unwrap();
        assert!(summary.is_quantized());
        assert_eq!(summary.bytes(WeightFormat::F32), summary.bytes(format));
        let size = |p: &Path| std::fs::metadata(p.join("model.safetensors")).unwrap().len();
        assert!(size(&dir) < size(&fixture()), "{}", format.name());
        // Re-packing stored codes in another format is refused.
        let err = VisionTransformer::from_pretrained(gpu, &dir, None, WeightFormat::F16).err().unwrap().to_string();
        assert!(err.contains("already quantized"), "{err}");
    }
}

#[test]
fn damaged_packed_checkpoints_are_clear_errors() {
    let gpu = gpu();
    let dir = quantized_copy(WeightFormat::Q8 { group: None });
    let mut w = Weights::load(&dir.join("model.safetensors")).unwrap();
    w.words.get_mut("blocks.0.mlp.fc1.weight.scales").unwrap().1.pop();
    let err = lowbit::models::VisionTransformer::new(gpu, &lowbit::models::VitConfig::load(&dir.join("config.json")).unwrap(), &w, WeightFormat::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("blocks.0.mlp.fc1.weight.scales"), "{err}");
    w.metadata.clear();
    let err = w.matrix("blocks.0.mlp.fc1.weight", &[192, 48], WeightFormat::F32).unwrap_err().to_string();
    assert!(err.contains("metadata"), "{err}");
}
