//! The viewer in the browser: the same `ViewerApp` under eframe's `WebRunner`, rendering through
//! WebGPU, with the engine on eframe's device (`Gpu::from_wgpu`). `web/index.html` calls
//! `start("viewer")` once the wasm module is loaded (`scripts/build-web` builds both).
//!
//! The page downloads the models it needs (`assets/models/...`, relative to the page) while the
//! app is up, showing progress in the status bar; actions wait until they are in. A URL like
//! `index.html?action=generate:3&seed=0` performs an action at start and writes its result as
//! JSON into `<pre id="result">` once the image has been drawn (tests read it; errors go there
//! too, as `{"error": ...}`).

use std::cell::RefCell;
use std::rc::Rc;

use eframe::egui;
use eframe::egui_wgpu::{WgpuConfiguration, WgpuSetup, WgpuSetupCreateNew};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::app::{Action, Tab, ViewerApp};
use super::engine::{Engine, ModelName};
use crate::{Gpu, GpuOptions};

/// What the three tabs need.
const MODELS: [ModelName; 5] = [ModelName::DigitsPrior, ModelName::DigitsVqgan, ModelName::DigitsVit, ModelName::PhotoVqgan, ModelName::PhotoRqvae];

/// The list of sample images `scripts/build-web` writes (a page cannot list a folder).
const SAMPLES_INDEX: &str = "samples/index.json";

/// Frames drawn with the result before it is reported, as the desktop screenshot mode waits:
/// egui sizes some widgets a frame late.
const SETTLE_FRAMES: u32 = 2;

/// Starts the viewer on the canvas with id `canvas_id`.
#[wasm_bindgen]
pub async fn start(canvas_id: String) -> Result<(), JsValue> {
    let result = start_on(&canvas_id).await;
    if let Err(e) = &result {
        let msg = format!("the viewer could not start: {}", describe_js(e));
        write_result(&serde_json::json!({ "error": msg }));
        set_text("status", &msg);
    }
    result
}

async fn start_on(canvas_id: &str) -> Result<(), JsValue> {
    if let Some(filter) = page_params()?.get("test-ops") {
        return test_ops(&filter).await.map_err(JsValue::from);
    }
    let document = web_sys::window().and_then(|w| w.document()).ok_or("no document")?;
    let canvas = document
        .get_element_by_id(canvas_id)
        .ok_or_else(|| format!("no element #{canvas_id} on the page"))?
        .dyn_into::<web_sys::HtmlCanvasElement>()
        .map_err(|_| format!("#{canvas_id} is not a canvas"))?;
    let request = UrlAction::from_page()?;
    let gpu_options = gpu_options_from_page()?;
    // `?recipe=q8` (f32, q8, q4g32): the weight recipe selected at start.
    let recipe = page_params()?.get("recipe").unwrap_or_else(|| "f32".into());
    let options = eframe::WebOptions { renderer: eframe::Renderer::Wgpu, wgpu_options: wgpu_configuration(), ..Default::default() };
    eframe::WebRunner::new()
        .start(
            canvas,
            options,
            Box::new(move |cc| {
                // A missing render state leaves the app up with an error message, as natively.
                let engine = match cc.wgpu_render_state.as_ref() {
                    Some(rs) => Ok(Engine::new(Gpu::from_wgpu(&rs.instance, &rs.adapter, rs.device.clone(), rs.queue.clone(), &gpu_options), "assets".into())),
                    None => Err("eframe started without the wgpu renderer".to_string()),
                };
                let app = ViewerApp::new(engine, &recipe, None)?;
                Ok(Box::new(WebApp::new(app, request, &cc.egui_ctx)))
            }),
        )
        .await
}

/// WebGPU only (WebGL has no compute), with the adapter's limits and the optional features
/// the kernels use, as on the desktop.
fn wgpu_configuration() -> WgpuConfiguration {
    let mut setup = WgpuSetupCreateNew::without_display_handle();
    setup.instance_descriptor.backends = wgpu::Backends::BROWSER_WEBGPU;
    setup.device_descriptor = std::sync::Arc::new(super::compute_device_descriptor);
    WgpuConfiguration { wgpu_setup: WgpuSetup::CreateNew(setup), ..Default::default() }
}

/// `?disable=f16,subgroups,packed_dot` (or `all`): force the kernels' fallbacks, as
/// `LOWBIT_DISABLE` does natively.
fn gpu_options_from_page() -> Result<GpuOptions, String> {
    let mut opts = GpuOptions::default();
    let Some(list) = page_params()?.get("disable") else { return Ok(opts) };
    for item in list.split(',').map(str::trim) {
        match item {
            "f16" => opts.no_f16 = true,
            "subgroups" => opts.no_subgroups = true,
            "packed_dot" => opts.no_packed_dot = true,
            "all" => (opts.no_f16, opts.no_subgroups, opts.no_packed_dot) = (true, true, true),
            other => return Err(format!("?disable={list}: unknown feature `{other}` (f16, subgroups, packed_dot, all)")),
        }
    }
    Ok(opts)
}

fn page_params() -> Result<web_sys::UrlSearchParams, String> {
    let search = web_sys::window().ok_or("no window")?.location().search().map_err(|e| describe_js(&e))?;
    web_sys::UrlSearchParams::new_with_str(&search).map_err(|e| describe_js(&e))
}

/// `?action=generate:<class>&seed=<seed>`, `?action=roundtrip:<image>` or
/// `?action=classify:<image>` (an image under the page, e.g. `assets/samples/digit-7-0.png`).
struct UrlAction {
    text: String,
    action: Action,
    seed: u64,
}

impl UrlAction {
    fn from_page() -> Result<Option<UrlAction>, String> {
        let params = page_params()?;
        let Some(text) = params.get("action") else { return Ok(None) };
        let seed = match params.get("seed") {
            Some(s) => s.parse().map_err(|_| format!("?seed={s}: not a number"))?,
            None => 0,
        };
        let action = match text.split_once(':') {
            Some(("generate", c)) => Action::Generate { class: c.parse().map_err(|_| format!("?action={text}: the class must be a number"))?, seed },
            Some(("classify", path)) if !path.is_empty() => Action::Classify(path.into()),
            Some(("roundtrip", path)) if !path.is_empty() => Action::RoundTrip(path.into()),
            _ => return Err(format!("?action={text}: expected generate:<class>, roundtrip:<image> or classify:<image>")),
        };
        Ok(Some(UrlAction { text, action, seed }))
    }
}

/// The model files being downloaded.
#[derive(Default)]
struct Downloads {
    total: usize,
    /// Files arrived and not yet handed to the engine.
    arrived: Vec<(String, Vec<u8>)>,
    done: usize,
    bytes: usize,
    error: Option<String>,
}

struct WebApp {
    app: ViewerApp,
    downloads: Rc<RefCell<Downloads>>,
    report: Option<UrlAction>,
    /// Frames drawn with the result so far (see `SETTLE_FRAMES`).
    settled: u32,
}

impl WebApp {
    fn new(mut app: ViewerApp, report: Option<UrlAction>, ctx: &egui::Context) -> WebApp {
        let mut files: Vec<String> = MODELS.iter().flat_map(|m| m.files()).collect();
        let downloads = Rc::new(RefCell::new(Downloads { total: files.len() + 1, ..Default::default() }));
        let (state, ctx2) = (downloads.clone(), ctx.clone());
        wasm_bindgen_futures::spawn_local(async move {
            // Samples are optional: without their list the tabs just offer none.
            let samples: Vec<String> = match fetch_bytes(&format!("assets/{SAMPLES_INDEX}")).await {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            files.extend(samples.iter().map(|name| format!("samples/{name}")));
            state.borrow_mut().total = files.len();
            for file in files {
                let result = fetch_bytes(&format!("assets/{file}")).await;
                let mut s = state.borrow_mut();
                match result {
                    Ok(bytes) => {
                        s.bytes += bytes.len();
                        s.arrived.push((file, bytes));
                    }
                    Err(e) => s.error = Some(e),
                }
                ctx2.request_repaint();
                if s.error.is_some() {
                    break;
                }
            }
        });
        app.hold = Some("downloading the models…".into());
        if let Some(r) = &report {
            match &r.action {
                Action::Generate { class, seed } => {
                    app.tab = Tab::Generate;
                    (app.generate.class, app.generate.seed) = (*class, *seed);
                }
                Action::Classify(path) => {
                    app.tab = Tab::Classify;
                    app.classify.path = path.display().to_string();
                }
                Action::RoundTrip(path) => {
                    app.tab = Tab::RoundTrip;
                    app.roundtrip.path = path.display().to_string();
                }
                _ => {}
            }
            app.request(r.action.clone());
        }
        WebApp { app, downloads, report, settled: 0 }
    }

    /// Hands arrived files to the engine; releases the queued actions once all are in.
    fn take_downloads(&mut self) {
        let mut d = self.downloads.borrow_mut();
        if let Some(e) = &d.error {
            let msg = format!("downloading the models failed: {e}");
            self.app.error = Some(msg.clone());
            self.app.hold = Some(msg);
            return;
        }
        let arrived = std::mem::take(&mut d.arrived);
        d.done += arrived.len();
        if let Ok(engine) = self.app.engine.as_mut() {
            for (file, bytes) in arrived {
                engine.add_fetched(&file, bytes);
            }
            // The samples were not known when the app started: offer the first ones now.
            for (path, prefix) in [(&mut self.app.roundtrip.path, "photo-"), (&mut self.app.classify.path, "digit-")] {
                if path.is_empty() {
                    *path = engine.samples(prefix).first().map(|p| p.display().to_string()).unwrap_or_default();
                }
            }
        }
        self.app.hold = (d.done < d.total).then(|| format!("downloading the models: {} of {} files ({:.1} MB)…", d.done, d.total, d.bytes as f64 / 1e6));
    }

    /// Writes the URL action's outcome into the page once its result has been drawn.
    fn report(&mut self, ctx: &egui::Context) {
        let Some(request) = &self.report else { return };
        ctx.request_repaint();
        let app = &self.app;
        let idle = !app.busy() && app.hold.is_none();
        let mut outcome = None;
        // A failed action, or a failed download (which holds the action back for good).
        if let Some(e) = app.error.as_ref().filter(|_| !app.busy() || app.hold.is_some()) {
            outcome = Some(serde_json::json!({ "error": e }));
        } else if let (true, Some(rect)) = (idle, app.main_rect) {
            let result = match &request.action {
                Action::Generate { .. } => app.generate.out.as_ref().map(|out| generate_json(app, out)),
                Action::Classify(_) => app.classify.out.as_ref().map(|out| classify_json(&out.result)),
                Action::RoundTrip(_) => app.roundtrip.out.as_ref().map(|out| {
                    let mut json = decoded_json(out);
                    // The codec ran in the browser too: the bits its tokens cost.
                    if let Some((bpp, psnr)) = app.roundtrip.rate {
                        json["bpp"] = bpp.into();
                        json["psnr_db"] = psnr.into();
                    }
                    json
                }),
                _ => None,
            };
            if let Some(mut json) = result {
                self.settled += 1;
                // Where the main image is on the canvas, in physical pixels: [x, y, w, h].
                let ppp = ctx.pixels_per_point();
                json["image_rect"] = serde_json::json!([rect.min.x, rect.min.y, rect.width(), rect.height()].map(|v| (v * ppp).round() as i64));
                outcome = (self.settled > SETTLE_FRAMES).then_some(json);
            }
        }
        if let Some(mut json) = outcome {
            json["action"] = request.text.clone().into();
            json["seed"] = request.seed.into();
            json["recipe"] = app.recipe.name.clone().into();
            write_result(&json);
            self.report = None;
        }
    }
}

fn generate_json(app: &ViewerApp, out: &super::app::DecodedView) -> serde_json::Value {
    let engine = app.engine.as_ref().ok();
    let mut json = decoded_json(out);
    json["adapter"] = engine.map(|e| e.gpu.adapter_name()).into();
    json["caps"] = engine.map(|e| format!("{:?}", e.gpu.caps)).into();
    // With a recipe other than f32: how far the f32 weights' image is, in levels.
    json["vs_f32"] = app.generate.compare.as_ref().map(|c| serde_json::json!({ "max": c.max, "mean": c.mean })).into();
    json
}

/// A decoded image with its tokens: what generate and round trip report.
fn decoded_json(out: &super::app::DecodedView) -> serde_json::Value {
    let image = &out.shown.image;
    serde_json::json!({
        "tokens": out.tokens.ids,
        "token_shape": out.tokens.shape(),
        "width": image.width(),
        "height": image.height(),
        "rgb": image.as_raw(),
    })
}

fn classify_json(result: &super::engine::Classified) -> serde_json::Value {
    serde_json::json!({ "top1": result.top(1)[0].0, "top5": result.top(5), "logits": result.logits })
}

impl WebApp {
    /// A dropped or picked file's result goes into `#result` too (as `"action":
    /// "upload:NAME"`), so a page test can drop a file and read what the viewer made of it.
    fn report_uploads(&mut self) {
        let Ok(engine) = &self.app.engine else { return };
        let uploads = engine.assets.join("uploads");
        let Some((Action::Classify(path) | Action::RoundTrip(path), _)) = &self.app.pending else { return };
        if path.starts_with(&uploads) && self.report.is_none() {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            self.report = Some(UrlAction { text: format!("upload:{name}"), action: self.app.pending.as_ref().unwrap().0.clone(), seed: 0 });
            self.settled = 0;
        }
    }
}

/// Opens the browser's file picker for a PNG or JPEG; the chosen file's name and bytes land in
/// `slot` (read at the next frame, which this asks for).
pub fn pick_file(slot: Rc<RefCell<Option<(String, Vec<u8>)>>>, ctx: egui::Context) -> Result<(), String> {
    let document = web_sys::window().and_then(|w| w.document()).ok_or("no document")?;
    let input: web_sys::HtmlInputElement = document.create_element("input").map_err(|e| describe_js(&e))?.dyn_into().map_err(|_| "not an input element")?;
    input.set_type("file");
    input.set_accept("image/png,image/jpeg");
    let chosen = input.clone();
    let on_change = Closure::once(move |_: web_sys::Event| {
        let Some(file) = chosen.files().and_then(|f| f.get(0)) else { return };
        wasm_bindgen_futures::spawn_local(async move {
            // An unreadable file arrives empty: decoding it then reports the error by name.
            let bytes = match JsFuture::from(file.array_buffer()).await {
                Ok(buffer) => js_sys::Uint8Array::new(&buffer).to_vec(),
                Err(_) => Vec::new(),
            };
            *slot.borrow_mut() = Some((file.name(), bytes));
            ctx.request_repaint();
        });
    });
    input.set_onchange(Some(on_change.as_ref().unchecked_ref()));
    // The input lives as long as the page may still deliver a choice.
    on_change.forget();
    input.click();
    Ok(())
}

impl eframe::App for WebApp {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        self.take_downloads();
        self.app.ui(ui, frame);
        self.report_uploads();
        if self.app.hold.is_some() || self.app.busy() {
            ui.ctx().request_repaint();
        }
        self.report(&ui.ctx().clone());
    }
}

/// The bytes at `url` (relative to the page).
async fn fetch_bytes(url: &str) -> Result<Vec<u8>, String> {
    let window = web_sys::window().ok_or("no window")?;
    let response = JsFuture::from(window.fetch_with_str(url)).await.map_err(|e| format!("{url}: {}", describe_js(&e)))?;
    let response: web_sys::Response = response.dyn_into().map_err(|_| format!("{url}: not a response"))?;
    if !response.ok() {
        return Err(format!("{url}: HTTP {} {}", response.status(), response.status_text()));
    }
    let body = response.array_buffer().map_err(|e| format!("{url}: {}", describe_js(&e)))?;
    let buffer = JsFuture::from(body).await.map_err(|e| format!("{url}: {}", describe_js(&e)))?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}

/// `?test-ops` (or `?test-ops=FILTER`): instead of the viewer, the op-check registry that
/// `lowbit test-ops` runs, on this browser's WebGPU adapter: every case (or those whose name
/// contains FILTER) against its CPU reference, shown as a table and written to #result as
/// `{adapter, path, cases, passed, failed: [{case, nmse, bound, error}]}`.
async fn test_ops(filter: &str) -> Result<(), String> {
    let gpu = Gpu::open(&gpu_options_from_page()?).await.map_err(|e| format!("no WebGPU adapter: {e}"))?;
    let all = crate::ops_check::cases(&gpu);
    let total = all.len();
    let cases: Vec<_> = all.into_iter().filter(|c| c.label().contains(filter)).collect();
    if cases.is_empty() {
        return Err(format!("?test-ops={filter} matches none of the {total} cases (names are `op shape variant format`)"));
    }
    let adapter = gpu.adapter_name();
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut rows = String::new();
    let (mut passed, mut failed) = (0, Vec::new());
    for (i, case) in cases.iter().enumerate() {
        set_text("status", &format!("lowbit test-ops on {adapter}: case {} of {}…", i + 1, cases.len()));
        let out = case.run_async(&gpu).await;
        if out.pass {
            passed += 1;
        } else {
            failed.push(serde_json::json!({ "case": case.label(), "nmse": out.nmse.is_finite().then_some(out.nmse), "bound": case.bound, "error": out.error }));
        }
        let verdict = if out.pass { "ok" } else { "FAIL" };
        let note = out.error.as_deref().map(|e| format!(" ({})", escape(e))).unwrap_or_default();
        rows += &format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1e}</td><td>{:.0e}</td><td>{verdict}{note}</td></tr>",
            case.op,
            escape(&case.shape),
            escape(&case.variant),
            escape(&case.format),
            out.nmse,
            case.bound
        );
    }
    let summary = format!("lowbit test-ops on {adapter} ({}): {passed} of {} cases passed", crate::ops_check::path_name(&gpu), cases.len());
    let html = format!(
        "<p>{}</p><table style=\"white-space: nowrap; border-spacing: 14px 1px\"><tr><th>op</th><th>shape</th><th>variant</th><th>format</th><th>NMSE</th><th>bound</th><th></th></tr>{rows}</table>",
        escape(&summary)
    );
    if let Some(el) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.get_element_by_id("status")) {
        el.set_inner_html(&html);
        // The page hides overflow for the canvas; the table scrolls instead.
        let _ = el.set_attribute("style", "overflow: auto; max-height: 90vh; font-family: monospace;");
    }
    write_result(&serde_json::json!({
        "adapter": adapter, "path": crate::ops_check::path_name(&gpu), "cases": cases.len(), "passed": passed, "failed": failed,
    }));
    Ok(())
}

fn write_result(json: &serde_json::Value) {
    set_text("result", &json.to_string());
}

fn set_text(id: &str, text: &str) {
    if let Some(el) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.get_element_by_id(id)) {
        el.set_text_content(Some(text));
    }
}

fn describe_js(v: &JsValue) -> String {
    v.as_string().or_else(|| v.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message()))).unwrap_or_else(|| format!("{v:?}"))
}
