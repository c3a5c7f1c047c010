//! The viewer in the browser: `scripts/build-web` builds the wasm page, `tests/web/run.mjs`
//! opens it in headless Chromium (WebGPU on SwiftShader) with `?action=generate:3&seed=0`, and
//! the tokens and image the page reports must be what the native `lowbit generate` produces
//! for the same class and seed: the same tokens exactly, the same image within a small
//! tolerance (SwiftShader and lavapipe round floats differently); and `?action=classify:...`
//! must give digits-vit's native logits, and `?action=roundtrip:...` photo-vqgan's native
//! tokens and reconstruction; `?test-ops=attention` must pass every attention case of the
//! op-check registry on the browser's WebGPU. Skipped, with a message,
//! where Chromium, node or the wasm toolchain is missing (`.ci/run` installs them).
//!
//! Also, natively: the async generate path (the only one the browser has) gives the tokens of
//! the sync one, and models loaded from fetched bytes give what the files give (generate and
//! round trip).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::Command;
use std::task::{Context, Poll, Waker};

use image::RgbImage;
use lowbit::models::prior::Prior;
use lowbit::models::sampling::{generate_classes, generate_classes_async, SamplingOptions};
use lowbit::models::vqgan::TokenGrid;
use lowbit::formats::WeightFormat;
use lowbit::viewer::engine::{Engine, ModelName, Recipe};

mod common;

/// Largest |browser − native| per channel in 8-bit levels: SwiftShader and lavapipe round
/// some float operations differently, which can move a pixel by a level after PNG rounding
/// (measured: identical, or one value of 3072 off by 1, as the native fallback kernels). A
/// wrong image differs by tens of levels. (Before a shader fix the browser was 17 levels off
/// on edges: see `attention.wgsl`'s explicitly zeroed score array.)
const MAX_ABS_DIFF: u8 = 2;
/// Largest |browser − native| of digits-vit's logits.
const MAX_LOGIT_DIFF: f32 = 1e-3;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> Option<PathBuf> {
    let candidates = [std::env::var_os("CHROMIUM").map(PathBuf::from), Some("/usr/bin/chromium".into()), Some("/usr/lib/chromium/chromium".into())];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

fn has(cmd: &str, arg: &str) -> bool {
    Command::new(cmd).arg(arg).output().is_ok_and(|o| o.status.success())
}

/// Why the browser test cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    if chromium().is_none() {
        return Some("no Chromium (apt-get install chromium, or set CHROMIUM)".into());
    }
    if !has("node", "--version") || !has("npm", "--version") {
        return Some("no node/npm".into());
    }
    let targets = Command::new("rustup").args(["target", "list", "--installed"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    if !targets.contains("wasm32-unknown-unknown") {
        return Some("no wasm32-unknown-unknown target (rustup target add wasm32-unknown-unknown)".into());
    }
    None
}

fn run(cmd: &mut Command, what: &str) {
    let t = std::time::Instant::now();
    let status = cmd.status().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(status.success(), "{what} failed ({status})");
    eprintln!("{what}: {:.1} s", t.elapsed().as_secs_f64());
}

#[test]
fn browser_generate_matches_native() {
    if let Some(why) = missing_tools() {
        eprintln!("skipping the browser test: {why}");
        return;
    }
    let web = root().join("tests/web");
    if !web.join("node_modules/playwright-core").is_dir() {
        run(Command::new("npm").arg("ci").current_dir(&web), "npm ci in tests/web");
    }
    let out = std::env::temp_dir().join(format!("lowbit-web-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let site = out.join("site");
    run(Command::new(root().join("scripts/build-web")).env("LOWBIT_WEB_OUT", &site).current_dir(root()), "scripts/build-web");

    let (page, png) = page_result(&site, &out, "action=generate:3&seed=0", "generate");
    eprintln!("browser adapter: {}, {}", page["adapter"], page["caps"]);

    // The same action natively, through the command line.
    let native = out.join("native");
    let prior = root().join("assets/models/digits-prior");
    let decoder = root().join("assets/models/digits-vqgan");
    common::lowbit_ok(&["generate", "--prior", prior.to_str().unwrap(), "--decoder", decoder.to_str().unwrap(), "--class", "3", "--count", "1", "--seed", "0", "--out", native.to_str().unwrap()]);
    let tokens = TokenGrid::load(&native.join("tokens.safetensors"), "tokens").unwrap();
    let page_tokens: Vec<i64> = serde_json::from_value(page["tokens"].clone()).unwrap();
    assert_eq!(page_tokens, tokens.ids, "the browser sampled other tokens than the native run");
    let want = image::open(native.join("class3-0.png")).unwrap().to_rgb8();
    let got = assert_page_image(&page, &want, "generate");
    let (w, h) = got.dimensions();

    // The screenshot must show that image where the page says it drew it (not a blank canvas).
    let screen = image::open(&png).unwrap().to_rgb8();
    let r: Vec<u32> = serde_json::from_value(page["image_rect"].clone()).unwrap();
    let scale = r[2] / w;
    assert!(scale >= 1 && r[0] + r[2] <= screen.width() && r[1] + r[3] <= screen.height(), "image rect {r:?} on a {:?} screenshot", screen.dimensions());
    let mut sum = 0u64;
    for (x, y, p) in got.enumerate_pixels() {
        let s = screen.get_pixel(r[0] + x * scale + scale / 2, r[1] + y * scale + scale / 2);
        sum += (0..3).map(|c| p[c].abs_diff(s[c]) as u64).sum::<u64>();
    }
    let mean = sum as f64 / (3 * w * h) as f64;
    let levels: std::collections::HashSet<[u8; 3]> = (0..r[3]).flat_map(|y| (0..r[2]).map(move |x| (x, y))).map(|(x, y)| screen.get_pixel(r[0] + x, r[1] + y).0).collect();
    eprintln!("screenshot: mean |screen − image| {mean:.2} levels, {} colors in the image rect", levels.len());
    assert!(levels.len() > 8, "the screenshot's image area is blank ({} colors)", levels.len());
    assert!(mean <= 4.0, "the screenshot does not show the generated image (mean difference {mean:.1} levels)");
    let doc = root().join("docs/screenshots/web-generate.png");
    std::fs::copy(&png, &doc).unwrap();

    // Classify a fetched sample: digits-vit's logits as natively (same kernels, fallback caps).
    // Then the user's own file, dropped on the page: it arrives as bytes, not a path.
    let dropped = root().join("assets/samples/digit-3-0.png");
    let (page, _) = page_result_dropping(&site, &out, "action=classify:assets/samples/digit-7-0.png", "classify", Some(&dropped));
    let native_classify = |file: &str| {
        let gpu = lowbit::Gpu::with_options(&lowbit::GpuOptions::fallback()).unwrap();
        let mut engine = Engine::new(gpu, root().join("assets"));
        engine.classify(&Recipe::f32(), &root().join(file)).unwrap()
    };
    for (page, file) in [(page, "assets/samples/digit-7-0.png"), (json_file(&out.join("classify.drop.json")), "assets/samples/digit-3-0.png")] {
        assert!(page.get("error").is_none(), "{file}: the page reported {page}");
        let native = native_classify(file);
        let logits: Vec<f32> = serde_json::from_value(page["logits"].clone()).unwrap();
        assert_eq!(logits.len(), native.logits.len());
        let worst = logits.iter().zip(&native.logits).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        eprintln!("{file} ({}): browser vs native logits: max |diff| {worst:.2e}; top1 {}", page["action"], page["top1"]);
        assert!(worst <= MAX_LOGIT_DIFF, "{file}: the browser's logits differ by up to {worst}");
        assert_eq!(page["top1"].as_u64(), Some(native.top(1)[0].0 as u64));
    }
    assert_eq!(json_file(&out.join("classify.drop.json"))["action"], "upload:digit-3-0.png");

    // `?test-ops=attention`: the op-check registry's attention cases (f32, quantized softmax,
    // SageAttention's int8 path) on the browser's WebGPU, each within its bound.
    let (page, _) = page_result(&site, &out, "test-ops=attention", "test-ops");
    eprintln!("browser test-ops: {page}");
    assert!(page["cases"].as_u64().unwrap_or(0) >= 5, "{page}");
    assert_eq!(page["passed"], page["cases"], "cases failed in the browser: {}", page["failed"]);
    let (page, _) = open_page(&site, &out, "test-ops=no-such-op", "test-ops-none");
    assert!(page["error"].as_str().unwrap_or("").contains("matches none"), "{page}");

    // Round trip of a fetched photograph (its 128² crop): the native engine's tokens exactly,
    // the reconstruction within the generate tolerance.
    let (page, _) = page_result(&site, &out, "action=roundtrip:assets/samples/photo-chelsea.png", "roundtrip");
    let trip = {
        let gpu = lowbit::Gpu::with_options(&lowbit::GpuOptions::fallback()).unwrap();
        let mut engine = Engine::new(gpu, root().join("assets"));
        engine.roundtrip(&Recipe::f32(), ModelName::PhotoVqgan, &root().join("assets/samples/photo-chelsea.png")).unwrap()
    };
    let native = &trip.out;
    // The entropy coder is integer arithmetic: the browser's payload has the very same size.
    assert_eq!(page["bpp"].as_f64(), Some(trip.bpp), "bpp in the page {} vs native {}", page["bpp"], trip.bpp);
    let page_tokens: Vec<i64> = serde_json::from_value(page["tokens"].clone()).unwrap();
    assert_eq!(page["token_shape"], serde_json::json!(native.tokens.shape()));
    assert_eq!(page_tokens, native.tokens.ids, "the browser encoded the photo to other tokens than the native run");
    assert_page_image(&page, &native.image, "round trip");

    // Bad input is reported in the page, as natively, instead of hanging or panicking.
    for (query, says) in [("action=generate:42", "out of range"), ("action=classify:assets/samples/none.png", "none.png"), ("action=roundtrip:assets/samples/none.png", "none.png"), ("action=paint:1", "expected generate")] {
        let (page, _) = open_page(&site, &out, query, "bad");
        let e = page["error"].as_str().unwrap_or_else(|| panic!("?{query}: no error in {page}"));
        assert!(e.contains(says), "?{query}: {e}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// The page's `width` × `height` `rgb` image, which must be `want` within `MAX_ABS_DIFF`.
fn assert_page_image(page: &serde_json::Value, want: &RgbImage, what: &str) -> RgbImage {
    let (w, h) = (page["width"].as_u64().unwrap() as u32, page["height"].as_u64().unwrap() as u32);
    let rgb: Vec<u8> = serde_json::from_value(page["rgb"].clone()).unwrap();
    let got = RgbImage::from_raw(w, h, rgb).expect("the page's rgb has width × height × 3 bytes");
    assert_eq!(got.dimensions(), want.dimensions(), "{what}: image size");
    let diffs: Vec<u8> = got.as_raw().iter().zip(want.as_raw()).map(|(a, b)| a.abs_diff(*b)).collect();
    let worst = *diffs.iter().max().unwrap();
    let differ = diffs.iter().filter(|&&d| d > 0).count();
    eprintln!("{what}, browser vs native image: max |diff| {worst} levels, {differ} of {} values differ", diffs.len());
    assert!(worst <= MAX_ABS_DIFF, "{what}: the browser's image differs from the native one by up to {worst} levels");
    got
}

/// Opens the built page with `query` in headless Chromium; its result JSON and screenshot.
/// With `drop`, that file is then dropped on the page (result in `NAME.drop.json`).
fn open_page_dropping(site: &Path, out: &Path, query: &str, name: &str, drop: Option<&Path>) -> (serde_json::Value, PathBuf) {
    let (json_path, png) = (out.join(format!("{name}.json")), out.join(format!("{name}.png")));
    let mut node = Command::new("node");
    node.arg(root().join("tests/web/run.mjs")).arg(site).arg(&json_path).arg(&png).arg(query);
    if let Some(c) = chromium() {
        node.env("CHROMIUM", c);
    }
    if let Some(file) = drop {
        node.env("LOWBIT_WEB_DROP", file);
    }
    run(&mut node, &format!("the page ?{query} in headless Chromium"));
    (json_file(&json_path), png)
}

fn open_page(site: &Path, out: &Path, query: &str, name: &str) -> (serde_json::Value, PathBuf) {
    open_page_dropping(site, out, query, name, None)
}

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The page's result for `query`, which must be a success.
fn page_result(site: &Path, out: &Path, query: &str, name: &str) -> (serde_json::Value, PathBuf) {
    page_result_dropping(site, out, query, name, None)
}

fn page_result_dropping(site: &Path, out: &Path, query: &str, name: &str, drop: Option<&Path>) -> (serde_json::Value, PathBuf) {
    let (json, png) = open_page_dropping(site, out, query, name, drop);
    assert!(json.get("error").is_none(), "?{query}: the page reported {json}");
    (json, png)
}

/// Polls `fut` by hand, as a browser's event loop would, counting the polls.
fn poll_to_end<T>(fut: impl Future<Output = T>) -> T {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

#[test]
fn async_generate_gives_the_sync_tokens() {
    for (name, gpu) in common::gpus() {
        let prior = Prior::from_pretrained(gpu, &root().join("assets/models/digits-prior"), WeightFormat::F32).unwrap();
        let opts = prior.config.sampling.unwrap_or_default();
        for seed in [0, 7] {
            let sync = generate_classes(gpu, &prior, &[3, 5], seed, &opts).unwrap();
            let aw = poll_to_end(generate_classes_async(gpu, &prior, &[3, 5], seed, &opts)).unwrap();
            assert_eq!(sync.ids, aw.ids, "{name}, seed {seed}: the async path sampled other tokens");
        }
        // Errors come back through the async path too.
        let e = poll_to_end(generate_classes_async(gpu, &prior, &[99], 0, &SamplingOptions::default())).unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
    }
}

#[test]
fn models_from_fetched_bytes_match_the_files() {
    let gpu = || lowbit::Gpu::with_options(&lowbit::GpuOptions::fallback()).unwrap();
    let assets = root().join("assets");
    let mut from_files = Engine::new(gpu(), assets.clone());
    // Another assets folder that does not exist: only the fetched bytes can load the models.
    let mut from_bytes = Engine::new(gpu(), PathBuf::from("no/such/assets"));
    for m in [ModelName::DigitsPrior, ModelName::DigitsVqgan] {
        for file in m.files() {
            from_bytes.add_fetched(&file, std::fs::read(assets.join(&file)).unwrap());
        }
    }
    let f32 = Recipe::f32();
    let a = from_files.generate(&f32, 4, 1).unwrap();
    let b = poll_to_end(from_bytes.generate_job(&f32, 4, 1).unwrap()).unwrap();
    assert_eq!(a.tokens.ids, b.tokens.ids);
    assert_eq!(a.image, b.image);
    // The round trip from a fetched photo-vqgan and photograph, as from the files.
    let photo = "samples/photo-coffee.png";
    for file in ModelName::PhotoVqgan.files().iter().map(String::as_str).chain([photo]) {
        from_bytes.add_fetched(file, std::fs::read(assets.join(file)).unwrap());
    }
    let (x, y) = (from_files.roundtrip(&f32, ModelName::PhotoVqgan, &assets.join(photo)).unwrap(), poll_to_end(from_bytes.roundtrip_job(&f32, ModelName::PhotoVqgan, &PathBuf::from("no/such/assets").join(photo)).unwrap()).unwrap());
    assert_eq!((&x.original, &x.out.tokens.ids, &x.out.image, x.bpp), (&y.original, &y.out.tokens.ids, &y.out.image, y.bpp));
    // A model that was not fetched says where it looked.
    let e = from_bytes.classify(&f32, &assets.join("samples/digit-7-0.png")).unwrap_err();
    assert!(format!("{e:#}").contains("digit-7-0.png") || format!("{e:#}").contains("digits-vit"), "{e:#}");
    // Corrupt bytes are an error, not a panic.
    let mut corrupt = Engine::new(gpu(), PathBuf::from("x"));
    for file in ModelName::DigitsVqgan.files() {
        corrupt.add_fetched(&file, b"not a model".to_vec());
    }
    assert!(corrupt.decode_digits(&f32, &a.tokens).is_err());
}

/// The browser grants WebGPU's default limits (256 invocations per workgroup, 8 storage
/// buffers per stage, 16 KiB of workgroup memory, ...), lavapipe far more; kernels that size
/// themselves from the limits must compute the same image under both.
#[test]
fn browser_limits_do_not_change_the_decode() {
    let device = |limits: Option<wgpu::Limits>| {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
        let instance = wgpu::Instance::new(desc);
        let adapter = lowbit::Gpu::block_on(async { Ok::<_, lowbit::Error>(instance.request_adapter(&wgpu::RequestAdapterOptions::default()).await) }).unwrap().expect("an adapter");
        let limits = limits.unwrap_or(adapter.limits());
        let (d, q) = lowbit::Gpu::block_on(async { Ok::<_, lowbit::Error>(adapter.request_device(&wgpu::DeviceDescriptor { required_limits: limits, ..Default::default() }).await) }).unwrap().unwrap();
        lowbit::Gpu::from_wgpu(&instance, &adapter, d, q, &lowbit::GpuOptions::fallback())
    };
    let decoder_dir = root().join("assets/models/digits-vqgan");
    let tokens = TokenGrid::new(&[1, 8, 8], (0..64).map(|i| (i * 37 % 256) as i64).collect()).unwrap();
    let images: Vec<Vec<f32>> = [None, Some(wgpu::Limits::default())]
        .into_iter()
        .map(|limits| {
            let gpu = device(limits);
            let dec = lowbit::models::vqgan::VqganDecoder::from_pretrained(&gpu, &decoder_dir, None, WeightFormat::F32).unwrap();
            dec.decode(&gpu, &tokens).unwrap().to_vec_f32(&gpu).unwrap()
        })
        .collect();
    common::assert_nmse("decode under the browser's default limits", &images[1], &images[0], common::F32_NMSE);
}
