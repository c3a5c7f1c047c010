//! The shipped models load and the demo path runs end to end (a small run of `lowbit demo`),
//! with results that show the models are the trained ones, not noise.

use std::path::Path;
use std::process::Command;

#[test]
fn demo_runs_on_the_shipped_models() {
    let out = std::env::temp_dir().join(format!("lowbit-demo-{}", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["demo", "--precisions", "f32,q8", "--per-class", "2", "--photo-size", "64", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    for file in ["contact-sheet.png", "generated-f32.png", "roundtrip-q8.png", "demo.json"] {
        assert!(out.join(file).is_file(), "{file} missing; {stdout}");
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("demo.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        let get = |k: &str| row[k].as_f64().unwrap();
        // Trained models: the sample digits are read, generated digits are mostly the class
        // asked for, and the photograph comes back recognisably.
        assert!(get("sample_top1") >= 80.0, "{row}");
        // 2 per class: 20 samples; the guided prior gives ≥ 95% at 4 per class.
        assert!(get("generated_class_match") >= 85.0, "{row}");
        // The sample photographs are in photo-vit's training pictures (a smoke check).
        assert!(get("photo_top1") >= 66.0, "{row}");
        assert!(get("photo_psnr_db") >= 18.0, "{row}");
        assert!(get("frechet_distance").is_finite(), "{row}");
        // The codec rows: each tokenizer's entropy-coded tokens against JPEG at (at most) the
        // same rate, unless even JPEG's lowest quality is above it.
        let codec = row["codec"].as_array().unwrap();
        assert_eq!(codec.iter().map(|c| c["tokenizer"].as_str().unwrap()).collect::<Vec<_>>(), ["photo-vqgan", "photo-rqvae"], "{row}");
        for c in codec {
            let (bpp, jpeg) = (c["bpp"].as_f64().unwrap(), &c["jpeg"]);
            assert!(bpp > 0.0 && c["psnr_db"].as_f64().unwrap() > 18.0, "{c}");
            assert!(jpeg["bpp"].as_f64().unwrap() <= bpp || jpeg["quality"] == 1, "{c}");
        }
    }
    let sheet = image::open(out.join("contact-sheet.png")).unwrap().to_rgb8();
    assert!(sheet.width() > 64 && sheet.height() > 64);
    // Labelled: the class names on the left and the column titles on top are drawn text
    // (light pixels on the dark background where no image is).
    let light = |x0: u32, y0: u32, w: u32, h: u32| (y0..y0 + h).flat_map(|y| (x0..x0 + w).map(move |x| (x, y))).filter(|&(x, y)| sheet.get_pixel(x, y).0[0] > 150).count();
    assert!(light(0, 30, 60, sheet.height() - 30) > 50, "no row labels on the contact sheet");
    assert!(light(60, 0, sheet.width() - 60, 20) > 50, "no column titles on the contact sheet");
    for model in ["digits-vit", "digits-prior", "digits-vqgan", "photo-vqgan", "photo-rqvae", "photo-vit"] {
        assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/models").join(model).join("README.md").is_file(), "{model}: model card missing");
    }
}
