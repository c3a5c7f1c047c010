//! The viewer, tested by its screenshots: `lowbit viewer --screenshot OUT.png --action ...`
//! runs in a virtual X display (Xvfb), and the pixels of the image it shows must be what the
//! command line produces for the same tokens (`lowbit decode`) or the same class
//! (`lowbit classify`). Skipped, with a message, where `xvfb-run` is not installed.
//!
//! `LOWBIT_UPDATE_SCREENSHOTS=1` also copies each screenshot into docs/screenshots/.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use image::RgbImage;
use lowbit::models::vqgan::TokenGrid;
use lowbit::viewer::engine::ModelName;

/// Mean |screen − CLI| per channel, in 8-bit levels, for the image the viewer shows. Both
/// come from the same f32 decoder on the same adapter and egui draws the texture with
/// nearest filtering at a whole enlargement factor, so they match exactly on lavapipe
/// (measured 0.000); half a level leaves room for an sRGB round trip that rounds differently
/// on other drivers, while a wrong image, crop or scale costs tens of levels.
const MAX_MEAN_ABS_ERROR: f64 = 0.5;

/// One viewer at a time: parallel Xvfb servers and lavapipe renderers on two cores only slow
/// each other down (and `xvfb-run -a` can race for a display number).
static DISPLAY: Mutex<()> = Mutex::new(());

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn xvfb_run() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("xvfb-run")).find(|p| p.is_file())
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lowbit-viewer-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the viewer in Xvfb for `action`; returns its JSON line and the screenshot.
fn screenshot(action: &str, name: &str) -> Option<(serde_json::Value, RgbImage)> {
    let Some(xvfb) = xvfb_run() else {
        eprintln!("skipping the viewer screenshot test: xvfb-run is not installed (apt-get install xvfb xauth)");
        return None;
    };
    let _one = DISPLAY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch(name);
    let png = dir.join("screen.png");
    let runtime = dir.join("xdg");
    std::fs::create_dir_all(&runtime).unwrap();
    let out = Command::new(xvfb)
        .current_dir(root())
        .env("XDG_RUNTIME_DIR", &runtime)
        .args(["-a", "-s", "-screen 0 1024x768x24 -nolisten tcp"])
        .arg(env!("CARGO_BIN_EXE_lowbit"))
        .args(["viewer", "--screenshot"])
        .arg(&png)
        .args(["--action", action])
        .output()
        .expect("running xvfb-run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "viewer {action} failed:\n{stdout}\n{stderr}");
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON line in:\n{stdout}"));
    let json: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(json["action"], action);
    let shot = image::open(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display())).to_rgb8();
    if std::env::var("LOWBIT_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        let docs = root().join("docs/screenshots");
        std::fs::create_dir_all(&docs).unwrap();
        shot.save(docs.join(format!("{name}.png"))).unwrap();
    }
    Some((json, shot))
}

/// The `image_rect` part of the screenshot brought back to `w`×`h` by sampling each source
/// pixel's center (the viewer enlarges by a whole factor with nearest filtering).
fn shown_image(json: &serde_json::Value, shot: &RgbImage, w: u32, h: u32) -> RgbImage {
    let r: Vec<f64> = json["image_rect"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(r[2] >= w as f64 && r[3] >= h as f64, "image_rect {r:?} is smaller than {w}×{h}");
    assert!(r[0] + r[2] <= shot.width() as f64 && r[1] + r[3] <= shot.height() as f64, "image_rect {r:?} outside the screenshot");
    RgbImage::from_fn(w, h, |x, y| {
        let sx = r[0] + (x as f64 + 0.5) * r[2] / w as f64;
        let sy = r[1] + (y as f64 + 0.5) * r[3] / h as f64;
        *shot.get_pixel(sx as u32, sy as u32)
    })
}

fn tokens_of(json: &serde_json::Value) -> TokenGrid {
    let shape: Vec<usize> = json["token_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let ids: Vec<i64> = json["tokens"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    TokenGrid::new(&shape, ids).unwrap()
}

/// `lowbit decode` of `tokens` with the shipped `model`.
fn cli_decode(model: &str, tokens: &TokenGrid, name: &str) -> RgbImage {
    let dir = scratch(name);
    let (t, png) = (dir.join("tokens.safetensors"), dir.join("cli.png"));
    tokens.save(&t, "tokens").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .current_dir(root())
        .args(["decode", "--model", &format!("assets/models/{model}"), "--tokens"])
        .arg(&t)
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    assert!(out.status.success(), "lowbit decode: {}", String::from_utf8_lossy(&out.stderr));
    image::open(&png).unwrap().to_rgb8()
}

fn mean_abs_error(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| x.abs_diff(y) as f64).sum::<f64>() / a.as_raw().len() as f64
}

fn assert_shows_decode(json: &serde_json::Value, shot: &RgbImage, model: &str, name: &str) {
    let want = cli_decode(model, &tokens_of(json), name);
    let got = shown_image(json, shot, want.width(), want.height());
    let err = mean_abs_error(&got, &want);
    eprintln!("{name}: mean |screen − lowbit decode| = {err:.3} levels");
    assert!(err <= MAX_MEAN_ABS_ERROR, "{name}: mean |screen − lowbit decode| = {err:.2} levels > {MAX_MEAN_ABS_ERROR}");
    // Not a blank widget: a decoded digit or photo has contrast.
    let (lo, hi) = got.as_raw().iter().fold((255u8, 0u8), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert!(hi - lo > 64, "{name}: the shown image is nearly flat ({lo}..{hi})");
}

#[test]
fn generate_shows_the_decoded_tokens() {
    let Some((json, shot)) = screenshot("generate:3", "generate") else { return };
    assert_eq!(json["tokens"].as_array().unwrap().len(), 64, "digits-prior samples an 8×8 grid: {json}");
    assert_shows_decode(&json, &shot, "digits-vqgan", "generate");
}

#[test]
fn roundtrip_shows_the_reconstruction() {
    let Some((json, shot)) = screenshot("roundtrip:assets/samples/photo-chelsea.png", "roundtrip") else { return };
    assert_shows_decode(&json, &shot, "photo-vqgan", "roundtrip");
    // The tab shows what the codec spends and what comes back: below the raw indices'
    // log2(512) = 9 bits per 4×4 cell, and photo-vqgan's measured quality on this photo.
    let (bpp, psnr) = (json["bpp"].as_f64().unwrap(), json["psnr_db"].as_f64().unwrap());
    assert!(bpp > 0.0 && bpp < 9.0 / 16.0, "bpp {bpp}: {json}");
    assert!(psnr > 24.0, "PSNR {psnr} dB");
}

#[test]
fn classify_agrees_with_the_cli() {
    let image = "assets/samples/digit-7-0.png";
    let Some((json, shot)) = screenshot(&format!("classify:{image}"), "classify") else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .current_dir(root())
        .args(["classify", "--model", "assets/models/digits-vit", image])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lowbit classify: {}", String::from_utf8_lossy(&out.stderr));
    // The first ranked line: "  <class>  <prob>  (logit ...)".
    let top1: u64 = stdout.lines().nth(1).and_then(|l| l.split_whitespace().next()).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(json["top1"].as_u64(), Some(top1), "viewer {json} vs lowbit classify:\n{stdout}");
    assert_eq!(json["top5"].as_array().unwrap().len(), 5);
    // The input widget shows the 32×32 digit as the model saw it.
    let want = image::open(root().join(image)).unwrap().to_rgb8();
    let got = shown_image(&json, &shot, 32, 32);
    let err = mean_abs_error(&got, &want);
    eprintln!("classify: mean |screen − file| = {err:.3} levels");
    assert!(err <= MAX_MEAN_ABS_ERROR, "classify input: mean |screen − file| = {err:.2}");
}

#[test]
fn bad_actions_fail_with_a_message() {
    // Parsed before any window opens: no display needed.
    let out = Command::new(env!("CARGO_BIN_EXE_lowbit")).args(["viewer", "--screenshot", "x.png", "--action", "paint:1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown action"), "{}", String::from_utf8_lossy(&out.stderr));
    // A missing image: the app reports the error and exits non-zero instead of hanging.
    if xvfb_run().is_none() {
        return;
    }
    let _one = DISPLAY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("missing");
    let out = Command::new(xvfb_run().unwrap())
        .current_dir(root())
        .env("XDG_RUNTIME_DIR", &dir)
        .args(["-a", "-s", "-screen 0 1024x768x24 -nolisten tcp"])
        .arg(env!("CARGO_BIN_EXE_lowbit"))
        .args(["viewer", "--screenshot"])
        .arg(dir.join("never.png"))
        .args(["--action", "classify:no/such/image.png"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no/such/image.png"), "{stderr}");
    assert!(!dir.join("never.png").exists());
}

/// The viewer's engine without a window: what the tabs and the precision panel call.
#[test]
fn engine_actions_and_errors() {
    use lowbit::viewer::engine::{Engine, ModelName, Recipe};
    for opts in [lowbit::GpuOptions::from_env(), lowbit::GpuOptions::fallback()] {
        let mut engine = Engine::new(lowbit::Gpu::with_options(&opts).unwrap(), root().join("assets"));
        let names: Vec<String> = engine.recipes().into_iter().map(|r| r.name).collect();
        assert!(names.starts_with(&["f32".into(), "q8".into(), "q4g32".into()]), "{names:?}");
        let f32 = Recipe::f32();

        let generated = engine.generate(&f32, 3, 0).unwrap();
        assert_eq!((generated.tokens.shape(), generated.image.dimensions()), ([1, 8, 8], (32, 32)));
        let again = engine.decode_digits(&f32, &generated.tokens).unwrap();
        assert_eq!(again.image, generated.image, "decoding the same tokens twice differs");
        let mut edited = generated.tokens.clone();
        edited.ids[27] = (edited.ids[27] + 128) % 256;
        assert_ne!(engine.decode_digits(&f32, &edited).unwrap().image, generated.image, "an edited token changed nothing");

        let classified = engine.classify(&f32, &root().join("assets/samples/digit-7-0.png")).unwrap();
        assert_eq!(classified.top(1)[0].0, 7);
        assert_eq!(classified.rollout.len(), classified.grid * classified.grid);
        assert!(classified.rollout.iter().all(|v| (0.0..=1.0).contains(v)) && classified.rollout.contains(&1.0));

        let times = engine.profile(&f32, ModelName::DigitsVit, None).unwrap();
        assert!(times.iter().any(|t| t.name == "blocks.0.attn.qkv"), "{:?}", times.iter().map(|t| &t.name).collect::<Vec<_>>());
        let q8 = Recipe::format(lowbit::formats::WeightFormat::parse("q8").unwrap());
        assert!(engine.weight_bytes(ModelName::DigitsVqgan, &q8).unwrap() < engine.weight_bytes(ModelName::DigitsVqgan, &f32).unwrap() / 2);

        // Bad input: clear errors, no panics.
        let e = engine.classify(&f32, Path::new("no/such/image.png")).unwrap_err().to_string();
        assert!(e.contains("no/such/image.png"), "{e}");
        assert!(engine.generate(&f32, 10, 0).unwrap_err().to_string().contains("out of range"));
        let mut bad = generated.tokens.clone();
        bad.ids[0] = 999;
        assert!(engine.decode_digits(&f32, &bad).is_err());
        assert!(engine.profile(&f32, ModelName::DigitsVqgan, None).is_err(), "profiling a decoder needs tokens");

        // The user's own file as bytes (a browser drop or file pick): classified as from disk,
        // under a name stripped of any folders; bytes that are no image name the file.
        let sample = root().join("assets/samples/digit-7-0.png");
        let uploaded = engine.add_user_file("../../secret/digit-7-0.png", std::fs::read(&sample).unwrap());
        assert_eq!(uploaded, root().join("assets/uploads/digit-7-0.png"));
        assert_eq!(engine.classify(&f32, &uploaded).unwrap().logits, classified.logits);
        let junk = engine.add_user_file("notes.png", b"not an image".to_vec());
        let e = format!("{:#}", engine.classify(&f32, &junk).unwrap_err());
        assert!(e.contains("notes.png"), "{e}");
        assert!(!root().join("assets/uploads").exists(), "uploads live in memory, not on disk");
    }
}

/// The rollout reads q and k out of `blocks.N.attn.qkv` itself; check that reading against the
/// GPU's own attention: softmax(q·kᵀ/√d)·v per head, computed on the CPU from the same qkv,
/// must equal the `blocks.N.attn` node output.
#[test]
fn rollout_reads_q_and_k_the_way_the_attention_kernel_does() {
    use lowbit::graph::Plan;
    use lowbit::models::{load_image, preprocess, VisionTransformer};
    use lowbit::viewer::rollout::head_attention;
    let gpu = lowbit::Gpu::new().unwrap();
    let vit = VisionTransformer::from_pretrained(&gpu, &root().join("assets/models/digits-vit"), None, lowbit::formats::WeightFormat::F32).unwrap();
    let c = &vit.config;
    let (t, heads, hd) = (c.tokens(), c.num_heads, c.head_dim());
    let d = heads * hd;
    let plan = Plan::unshared(&gpu, vit.graph(1).unwrap()).unwrap();
    let pixels = preprocess(&load_image(&root().join("assets/samples/digit-4-0.png")).unwrap(), &c.preprocess).unwrap();
    plan.set_input(&gpu, 0, &pixels).unwrap();
    plan.run(&gpu).unwrap();
    for n in [0, c.depth - 1] {
        let qkv = plan.node_values(&format!("blocks.{n}.attn.qkv")).unwrap().1.to_vec_f32(&gpu).unwrap();
        let gpu_out = plan.node_values(&format!("blocks.{n}.attn")).unwrap().1.to_vec_f32(&gpu).unwrap();
        assert_eq!(gpu_out.len(), t * d);
        let mut want = vec![0.0f32; t * d];
        for h in 0..heads {
            let p = head_attention(&qkv, t, heads, hd, h);
            for i in 0..t {
                for ch in 0..hd {
                    let v = (0..t).map(|j| p[i * t + j] * qkv[j * 3 * d + 2 * d + h * hd + ch] as f64).sum::<f64>();
                    want[i * d + h * hd + ch] = v as f32;
                }
            }
        }
        let err = lowbit::metrics::nmse(&gpu_out, &want);
        assert!(err <= 1e-8, "block {n}: NMSE {err:.3e} between the attention node and softmax(q·kᵀ/√d)·v from its qkv");
    }
}

#[test]
fn bits_per_layer_recipes() {
    // Every layer at q8 by hand is the q8 recipe; a mix lands between f32 and q4g32 in size,
    // and the w4a8/mixed folders shipped in assets show up as recipes.
    use lowbit::formats::WeightFormat;
    use lowbit::viewer::engine::{Engine, ModelName, Recipe};
    let mut engine = Engine::new(lowbit::Gpu::with_options(&lowbit::GpuOptions::from_env()).unwrap(), root().join("assets"));
    let names: Vec<String> = engine.recipes().into_iter().map(|r| r.name).collect();
    for shipped in ["digits-vit-w8a8", "digits-vit-w4a8", "digits-vit-mixed4.5"] {
        assert!(names.iter().any(|n| n == shipped), "{shipped} not among {names:?}");
    }
    let (f32, q8, q4) = (Recipe::f32(), Recipe::format(WeightFormat::parse("q8").unwrap()), Recipe::format(WeightFormat::parse("q4g32").unwrap()));
    let layers = engine.vit_layers(&f32).unwrap();
    assert!(layers.len() >= 18 && layers.iter().all(|l| l.3 == WeightFormat::F32), "{layers:?}");
    let all_q8 = Recipe::per_layer(layers.iter().map(|l| (l.0.clone(), WeightFormat::parse("q8").unwrap())).collect());
    let digit = root().join("assets/samples/digit-3-0.png");
    assert_eq!(engine.classify(&all_q8, &digit).unwrap().logits, engine.classify(&q8, &digit).unwrap().logits);
    let vit = ModelName::DigitsVit;
    assert_eq!(engine.weight_bytes(vit, &all_q8).unwrap(), engine.weight_bytes(vit, &q8).unwrap());
    let mixed = Recipe::per_layer(layers.iter().enumerate().map(|(i, l)| (l.0.clone(), WeightFormat::parse(if i % 2 == 0 { "q8" } else { "q4g32" }).unwrap())).collect());
    let size = engine.weight_bytes(vit, &mixed).unwrap();
    assert!(size > engine.weight_bytes(vit, &q4).unwrap() && size < engine.weight_bytes(vit, &q8).unwrap());
    assert_eq!(engine.vit_layers(&mixed).unwrap()[1].3, WeightFormat::parse("q4g32").unwrap());
    assert_eq!(engine.classify(&mixed, &digit).unwrap().top(1)[0].0, 3);
    // The mixed:4.5 folder's own allocation is what the table starts from.
    let folder = engine.recipes().into_iter().find(|r| r.name == "digits-vit-mixed4.5").unwrap();
    let formats: std::collections::HashSet<String> = engine.vit_layers(&folder).unwrap().into_iter().map(|l| l.3.name()).collect();
    assert!(formats.len() >= 2, "mixed:4.5 uses one format only: {formats:?}");
    // A layer that digits-vit does not have is a clear error.
    let bad = Recipe::per_layer(vec![("blocks.9.mlp.fc1.weight".into(), WeightFormat::parse("q8").unwrap())]);
    let e = engine.classify(&bad, &digit).unwrap_err();
    assert!(format!("{e:#}").contains("blocks.9.mlp.fc1.weight"), "{e:#}");
}

#[test]
fn classify_tab_opens_any_classifier_folder() {
    // A Swin and a DINOv2-with-registers folder classify in the viewer's engine exactly as
    // through the library (the same graph, f32 weights); closing goes back to digits-vit.
    use lowbit::formats::WeightFormat;
    use lowbit::models::Classifier;
    use lowbit::viewer::engine::{Engine, Recipe};
    let gpu = lowbit::Gpu::with_options(&lowbit::GpuOptions::from_env()).unwrap();
    let mut engine = Engine::new(gpu, root().join("assets"));
    let image = root().join("tests/fixtures/vit_tiny_test/image_resized.png");
    for fixture in ["swin_tiny_test", "vit_dinov2_reg4_test"] {
        let dir = root().join("tests/fixtures").join(fixture);
        let about = engine.open_classifier(&dir).unwrap();
        assert!(about.contains("timm"), "{about}");
        let got = engine.classify(&Recipe::f32(), &image).unwrap();
        assert_eq!(got.grid, 0, "an opened folder has no rollout");
        let model = Classifier::from_pretrained(&engine.gpu, &dir, None, WeightFormat::F32).unwrap();
        let want = model.classify_files(&engine.gpu, std::slice::from_ref(&image)).unwrap().logits;
        assert_eq!(got.logits, want, "{fixture}");
    }
    engine.close_classifier();
    assert!(engine.classify(&Recipe::f32(), &root().join("assets/samples/digit-3-0.png")).unwrap().grid > 0);
    let err = engine.open_classifier(&root().join("assets/models/digits-vqgan")).unwrap_err();
    assert!(format!("{err:#}").contains("digits-vqgan"), "{err:#}");
}

/// Issue 14 item 3: a lost device (injected with `Device::destroy`) costs the viewer one
/// action at most. Between actions, the next one opens a new device and reloads the models;
/// during a job, the job ends with an error that names the loss and the next one works. The
/// results on the new device are the same as before.
#[test]
fn the_engine_reopens_a_lost_device_and_carries_on() {
    use lowbit::viewer::engine::{Engine, Recipe};
    let mut engine = Engine::new(lowbit::Gpu::with_options(&lowbit::GpuOptions::from_env()).unwrap(), root().join("assets"));
    let f32 = Recipe::f32();
    let digit = root().join("assets/samples/digit-7-0.png");
    let before = engine.classify(&f32, &digit).unwrap();
    let generated = engine.generate(&f32, 3, 0).unwrap();

    engine.gpu.device.destroy();
    let after = engine.classify(&f32, &digit).unwrap();
    assert_eq!((engine.recoveries, engine.gpu.is_lost()), (1, false));
    assert_eq!(after.logits, before.logits);

    let job = engine.generate_job(&f32, 3, 0).unwrap();
    engine.gpu.device.destroy();
    let err = format!("{:#}", lowbit::Gpu::block_on(job).unwrap_err());
    assert!(err.contains("device was lost") && err.contains("run again"), "{err}");
    let again = engine.generate(&f32, 3, 0).unwrap();
    assert_eq!(engine.recoveries, 2);
    assert_eq!((again.tokens.ids, again.image), (generated.tokens.ids, generated.image));
}

#[test]
fn roundtrip_with_the_residual_tokenizer() {
    // The Round-trip tab's other tokenizer, through the engine the tab runs: two ids per
    // 4×4 cell, coded at more bits than photo-vqgan's one, and a reconstruction at least as close.
    let gpu = lowbit::Gpu::with_options(&lowbit::GpuOptions::fallback()).unwrap();
    let mut engine = lowbit::viewer::engine::Engine::new(gpu, root().join("assets"));
    let f32 = lowbit::viewer::engine::Recipe::f32();
    let photo = root().join("assets/samples/photo-coffee.png");
    let [vq, rq] = [ModelName::PhotoVqgan, ModelName::PhotoRqvae].map(|t| engine.roundtrip(&f32, t, &photo).unwrap());
    assert_eq!((vq.out.tokens.codes, rq.out.tokens.codes), (None, Some(2)));
    assert_eq!(vq.original, rq.original, "both see the same crop");
    assert!(rq.bpp > vq.bpp && rq.bpp <= 18.0 / 16.0 + 0.01, "bpp {} vs {}", rq.bpp, vq.bpp);
    assert!(rq.psnr_db > vq.psnr_db, "PSNR {} vs {}", rq.psnr_db, vq.psnr_db);
    let e = engine.roundtrip(&f32, ModelName::DigitsVqgan, &photo).unwrap_err().to_string();
    assert!(e.contains("not a photo tokenizer"), "{e}");
}
