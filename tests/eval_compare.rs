//! `lowbit eval` (top-1/top-5 on an ImageFolder) and `lowbit compare` (output SQNR of a model
//! against a reference) through the binary, on the fixtures.

mod common;

use common::lowbit;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    common::fixture_dir(name)
}

fn ok(args: &[&str]) -> String {
    common::lowbit_ok(args)
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).expect("one JSON object")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lowbit-evalcmp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Logits of one image through `lowbit classify`.
fn logits(model: &Path, image: &Path, dir: &Path) -> Vec<f32> {
    let out = dir.join("logits.safetensors");
    ok(&["classify", "--model", model.to_str().unwrap(), "--save-logits", out.to_str().unwrap(), "--force", image.to_str().unwrap()]);
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor("logits").unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn eval_counts_top1_and_top5_on_an_image_folder() {
    let dir = scratch("eval");
    let vit = fixture("vit_tiny_test");
    let images = [vit.join("image_exact.png"), vit.join("image_resized.png")];
    // Classes 0..3 as folders (no label_names in the fixture: sorted folder order); each image
    // goes into every class folder, so the expected counts follow from its own ranking.
    let data = dir.join("data");
    let mut want = (0, 0);
    let ranks: Vec<Vec<usize>> = images
        .iter()
        .map(|img| {
            let l = logits(&vit, img, &dir);
            let mut order: Vec<usize> = (0..l.len()).collect();
            order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
            order
        })
        .collect();
    for class in 0..3 {
        let folder = data.join(format!("{class}"));
        std::fs::create_dir_all(&folder).unwrap();
        for (i, img) in images.iter().enumerate() {
            std::fs::copy(img, folder.join(format!("{i}.png"))).unwrap();
            want.0 += (ranks[i][0] == class) as usize;
            want.1 += ranks[i][..5].contains(&class) as usize;
        }
    }
    let v = json(&["eval", "--model", vit.to_str().unwrap(), "--data", data.to_str().unwrap(), "--json"]);
    assert_eq!(v["images"], 6);
    assert_eq!((v["top1"]["correct"].as_u64().unwrap() as usize, v["top5"]["correct"].as_u64().unwrap() as usize), want, "{v}");
    let pct = v["top1"]["percent"].as_f64().unwrap();
    assert!((pct - 100.0 * want.0 as f64 / 6.0).abs() < 1e-9);
    let text = ok(&["eval", "--model", vit.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert!(text.contains(&format!("top-1: {}/6", want.0)) && text.contains(&format!("top-5: {}/6", want.1)), "{text}");
    // Bad input: no such folder, no class folders, a class beyond the head.
    for (bad, word) in [(dir.join("missing"), "missing"), (dir.join("data/0"), "no class folders")] {
        let o = lowbit(&["eval", "--model", vit.to_str().unwrap(), "--data", bad.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&o.stderr).contains(word), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for class in 3..11 {
        std::fs::create_dir_all(data.join(format!("{class}"))).unwrap();
        std::fs::copy(&images[0], data.join(format!("{class}/0.png"))).unwrap();
    }
    let o = lowbit(&["eval", "--model", vit.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("10 classes"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn compare_identical_models_is_exact_and_quantized_ones_are_close() {
    let dir = scratch("cmp");
    let vit = fixture("vit_tiny_test");
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(vit.join("image_exact.png"), images.join("a.png")).unwrap();
    std::fs::copy(vit.join("image_resized.png"), images.join("b.png")).unwrap();
    let (v, i) = (vit.to_str().unwrap(), images.to_str().unwrap());
    let same = json(&["compare", "--reference", v, "--model", v, "--images", i, "--json"]);
    assert!(same["sqnr_db"].as_f64().unwrap() >= 999.0, "{same}");
    assert!((same["cosine"].as_f64().unwrap() - 1.0).abs() < 1e-12 && same["top1_agreement"] == 1.0, "{same}");
    let q = dir.join("q8");
    ok(&["quantize", "--model", v, "--recipe", "w8a16", "--method", "rtn", "--out", q.to_str().unwrap()]);
    let close = json(&["compare", "--reference", v, "--model", q.to_str().unwrap(), "--images", i, "--json"]);
    let sqnr = close["sqnr_db"].as_f64().unwrap();
    assert!(sqnr > 30.0 && sqnr < 999.0, "{close}");
    // Against logits computed here: the same SQNR.
    let (a, b): (Vec<f32>, Vec<f32>) = ["a.png", "b.png"].iter().fold((vec![], vec![]), |(mut a, mut b), f| {
        a.extend(logits(&vit, &images.join(f), &dir));
        b.extend(logits(&q, &images.join(f), &dir));
        (a, b)
    });
    assert!((lowbit::metrics::sqnr_db(&b, &a) - sqnr).abs() < 1e-3, "{close}");
    // And the per-image cosines: their mean and the worse of the two.
    let k = a.len() / 2;
    let per_image: Vec<f64> = (0..2).map(|i| lowbit::metrics::cosine(&b[i * k..(i + 1) * k], &a[i * k..(i + 1) * k])).collect();
    assert!((close["cosine_image_mean"].as_f64().unwrap() - (per_image[0] + per_image[1]) / 2.0).abs() < 1e-9, "{close}");
    assert!((close["cosine_image_min"].as_f64().unwrap() - per_image[0].min(per_image[1])).abs() < 1e-9, "{close}");
    assert!((same["cosine_image_min"].as_f64().unwrap() - 1.0).abs() < 1e-12, "{same}");

    // Decoders: identical → exact, quantized → finite PSNR and SSIM below 1.
    let vq = fixture("vqgan_tiny_test");
    let tokens = vq.join("io.safetensors");
    let (r, t) = (vq.to_str().unwrap(), tokens.to_str().unwrap());
    let same = json(&["compare", "--reference", r, "--model", r, "--tokens", t, "--json"]);
    assert!(same["psnr_db"].as_f64().unwrap() >= 999.0 && (same["ssim"].as_f64().unwrap() - 1.0).abs() < 1e-12, "{same}");
    let qd = dir.join("vq4");
    ok(&["quantize", "--model", r, "--recipe", "w4a16", "--method", "clip", "--out", qd.to_str().unwrap()]);
    let d = json(&["compare", "--reference", r, "--model", qd.to_str().unwrap(), "--tokens", t, "--json"]);
    let (psnr, ssim) = (d["psnr_db"].as_f64().unwrap(), d["ssim"].as_f64().unwrap());
    assert!(psnr > 15.0 && psnr < 999.0 && ssim > 0.5 && ssim < 1.0, "{d}");
    // Mismatched kinds and missing inputs are errors.
    for args in [vec!["compare", "--reference", v, "--model", r, "--tokens", t], vec!["compare", "--reference", v, "--model", v]] {
        let o = lowbit(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
    }
}
