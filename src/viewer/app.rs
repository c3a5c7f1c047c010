//! The eframe app: state, the frame loop (queued actions run one frame after "working…" is
//! shown, so the UI never looks frozen without a reason) and the precision side panel.
//!
//! Generate, re-decode, round trip and classify run as jobs (futures, see
//! `Engine::generate_job`): natively they complete right away; in the browser, where GPU
//! readbacks resolve only between frames, the job runs on the page's event loop and its result
//! is picked up by a later frame.

use std::cell::RefCell;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;

use eframe::egui::{self, Color32, Rect};

use super::engine::{difference, rollout_overlay, Decoded, Engine, ModelName, Recipe};
use super::screenshot::ScreenshotJob;
use super::widgets::{self, Shown};
use crate::graph::NodeTime;
use crate::models::vqgan::TokenGrid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    Generate,
    RoundTrip,
    Classify,
}

/// Work the UI asked for.
#[derive(Clone, Debug)]
pub enum Action {
    Generate { class: usize, seed: u64 },
    /// Decode an edited token grid (the Generate tab's cell editor).
    Redecode(TokenGrid),
    RoundTrip(PathBuf),
    Classify(PathBuf),
    /// Classify with the model in this folder (any timm classifier) instead of digits-vit;
    /// `None` goes back to digits-vit.
    OpenClassifier(Option<PathBuf>),
    /// Per-node GPU times of the current tab's main model.
    Profile,
}

/// What a job produced: the recipe's output and, when compared, the f32 recipe's.
pub enum Finished {
    Generated { out: Decoded, reference: Option<Decoded> },
    Redecoded { out: Decoded, reference: Option<Decoded> },
    /// `original`: the crop the encoder saw.
    RoundTripped { out: super::engine::RoundTrip, reference: Option<Decoded> },
    Classified { out: super::engine::Classified, f32_logits: Option<Vec<f32>> },
    /// Per-node times of `what` (the browser's profile runs as a job).
    Profiled { what: String, times: Vec<NodeTime> },
}

/// An action's remaining work, owning what it uses.
type Job = Pin<Box<dyn Future<Output = anyhow::Result<Finished>>>>;

/// Where a job running on the browser's event loop leaves its result.
type JobSlot = Rc<RefCell<Option<anyhow::Result<Finished>>>>;

/// Where the browser's file picker leaves the chosen file (name, bytes).
pub type PickedFile = Rc<RefCell<Option<(String, Vec<u8>)>>>;

/// A decoded image as shown: its tokens and texture.
pub struct DecodedView {
    pub tokens: TokenGrid,
    pub shown: Shown,
}

/// The comparison of an output with the f32 recipe's.
pub struct Comparison {
    pub reference: Shown,
    pub diff: Shown,
    pub max: u8,
    pub mean: f32,
    /// How the tokens compare, when the recipe also changed them.
    pub note: String,
}

#[derive(Default)]
pub struct GenerateState {
    pub class: usize,
    pub seed: u64,
    pub out: Option<DecodedView>,
    pub compare: Option<Comparison>,
    pub selected: Option<usize>,
}

pub struct RoundTripState {
    pub path: String,
    /// The photo tokenizer the round trip runs (photo-vqgan or photo-rqvae).
    pub tokenizer: ModelName,
    pub original: Option<Shown>,
    /// (bits per pixel, PSNR in dB) of the last round trip.
    pub rate: Option<(f64, f64)>,
    pub out: Option<DecodedView>,
    pub compare: Option<Comparison>,
}

pub struct ClassView {
    pub result: super::engine::Classified,
    pub input: Shown,
    pub overlay: Shown,
}

#[derive(Default)]
pub struct ClassifyState {
    pub path: String,
    /// The model folder field, and the opened folder's description (None: digits-vit).
    pub model_dir: String,
    pub model: Option<String>,
    pub out: Option<ClassView>,
    /// The f32 recipe's logits for the same image, when another recipe is selected.
    pub f32_logits: Option<Vec<f32>>,
}

pub struct ViewerApp {
    pub engine: Result<Engine, String>,
    pub tab: Tab,
    pub recipe: Recipe,
    /// What the precision panel offers.
    recipes: Vec<Recipe>,
    /// Also run the f32 recipe and show the difference.
    pub compare_f32: bool,
    pub generate: GenerateState,
    pub roundtrip: RoundTripState,
    pub classify: ClassifyState,
    /// The action to run and the frame it was queued in.
    pub pending: Option<(Action, u64)>,
    /// A started job that has not finished yet (browser only) and the action it does.
    in_flight: Option<(Action, JobSlot)>,
    /// Why queued actions must wait (e.g. the models are still downloading); shown in the
    /// status bar. Set and cleared by whoever embeds the app (the web page).
    pub hold: Option<String>,
    /// The last action per tab, re-run when the recipe changes.
    last: [Option<Action>; 3],
    pub error: Option<String>,
    pub frame: u64,
    /// Where the current tab's main image was drawn this frame (screenshot mode reports it).
    pub main_rect: Option<Rect>,
    times: Option<(String, Vec<NodeTime>)>,
    pub screenshot: Option<ScreenshotJob>,
    /// A file the browser's file picker delivered, taken at the next frame.
    pub picked_file: PickedFile,
    /// The action being run again after a device loss (once: a second loss is shown).
    retried: bool,
}

impl ViewerApp {
    /// `recipe`: the one selected at start (a name from `Engine::recipes`).
    pub fn new(engine: Result<Engine, String>, recipe: &str, screenshot: Option<ScreenshotJob>) -> anyhow::Result<ViewerApp> {
        let recipes = engine.as_ref().map(|e| e.recipes()).unwrap_or_else(|_| vec![Recipe::f32()]);
        let Some(selected) = recipes.iter().find(|r| r.name == recipe).cloned() else {
            let names: Vec<&str> = recipes.iter().map(|r| r.name.as_str()).collect();
            anyhow::bail!("--recipe {recipe}: not one of {}", names.join(", "))
        };
        let (photo, digit) = match &engine {
            Ok(e) => (e.samples("photo-").into_iter().next(), e.samples("digit-").into_iter().next()),
            Err(_) => (None, None),
        };
        let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_default();
        Ok(ViewerApp {
            engine,
            tab: Tab::Generate,
            recipe: selected,
            recipes,
            compare_f32: true,
            generate: GenerateState { class: 3, ..Default::default() },
            roundtrip: RoundTripState { path: path(photo), tokenizer: ModelName::PhotoVqgan, original: None, rate: None, out: None, compare: None },
            classify: ClassifyState { path: path(digit), ..Default::default() },
            pending: None,
            in_flight: None,
            hold: None,
            last: [None, None, None],
            error: None,
            frame: 0,
            main_rect: None,
            times: None,
            screenshot,
            picked_file: Rc::default(),
            retried: false,
        })
    }

    /// Queues `action`; it runs once a frame showing "working…" has been drawn.
    pub fn request(&mut self, action: Action) {
        self.pending = Some((action, self.frame));
    }

    pub fn busy(&self) -> bool {
        self.pending.is_some() || self.in_flight.is_some()
    }

    fn tab_index(tab: Tab) -> usize {
        tab as usize
    }

    /// Performs `action`, or returns the job that finishes it.
    fn run(&mut self, action: Action) -> anyhow::Result<Option<Job>> {
        let Ok(engine) = self.engine.as_mut() else { anyhow::bail!("no GPU engine") };
        let recipe = &self.recipe;
        let f32 = &Recipe::f32();
        // The f32 reference is computed only when it differs from what is shown.
        let reference = self.compare_f32 && *recipe != *f32;
        if !matches!(action, Action::Profile | Action::OpenClassifier(_)) {
            self.last[Self::tab_index(self.tab)] = Some(action.clone());
        }
        match action {
            Action::Generate { class, seed } => {
                let job = engine.generate_job(recipe, class, seed)?;
                let f32_job = if reference { Some(engine.generate_job(f32, class, seed)?) } else { None };
                return Ok(Some(Box::pin(async move {
                    let out = job.await?;
                    let reference = match f32_job {
                        Some(j) => Some(j.await?),
                        None => None,
                    };
                    Ok(Finished::Generated { out, reference })
                })));
            }
            Action::Redecode(tokens) => {
                let job = engine.decode_job(recipe, &tokens)?;
                let f32_job = if reference { Some(engine.decode_job(f32, &tokens)?) } else { None };
                return Ok(Some(Box::pin(async move {
                    let out = job.await?;
                    let reference = match f32_job {
                        Some(j) => Some(j.await?),
                        None => None,
                    };
                    Ok(Finished::Redecoded { out, reference })
                })));
            }
            Action::RoundTrip(path) => {
                let tokenizer = self.roundtrip.tokenizer;
                let job = engine.roundtrip_job(recipe, tokenizer, &path)?;
                let f32_job = if reference { Some(engine.roundtrip_job(f32, tokenizer, &path)?) } else { None };
                return Ok(Some(Box::pin(async move {
                    let out = job.await?;
                    let reference = match f32_job {
                        Some(j) => Some(j.await?.out),
                        None => None,
                    };
                    Ok(Finished::RoundTripped { out, reference })
                })));
            }
            Action::Classify(path) => {
                let job = engine.classify_job(recipe, &path)?;
                let f32_job = if reference { Some(engine.classify_job(f32, &path)?) } else { None };
                return Ok(Some(Box::pin(async move {
                    let out = job.await?;
                    let f32_logits = match f32_job {
                        Some(j) => Some(j.await?.logits),
                        None => None,
                    };
                    Ok(Finished::Classified { out, f32_logits })
                })));
            }
            Action::OpenClassifier(dir) => {
                self.classify.model = match dir {
                    Some(dir) => Some(engine.open_classifier(&dir)?),
                    None => {
                        engine.close_classifier();
                        None
                    }
                };
                self.classify.out = None;
                self.classify.f32_logits = None;
            }
            Action::Profile => {
                let (model, tokens) = match self.tab {
                    Tab::Generate => (ModelName::DigitsVqgan, self.generate.out.as_ref().map(|o| &o.tokens)),
                    Tab::RoundTrip => (self.roundtrip.tokenizer, self.roundtrip.out.as_ref().map(|o| &o.tokens)),
                    Tab::Classify => (ModelName::DigitsVit, None),
                };
                let what = format!("{} ({})", model.dir(), recipe.name);
                // The browser cannot block on the GPU: there the times arrive as a job's result.
                if cfg!(target_arch = "wasm32") {
                    let job = engine.profile_job(recipe, model, tokens)?;
                    return Ok(Some(Box::pin(async move { Ok(Finished::Profiled { what, times: job.await? }) })));
                }
                self.times = Some((what, engine.profile(recipe, model, tokens)?));
            }
        }
        Ok(None)
    }

    /// Runs the queued action if "working…" has been on screen for a frame (and nothing holds
    /// it back), and picks up the result of a job that finished since the last frame.
    fn run_pending(&mut self, ctx: &egui::Context) {
        if let Some((action, slot)) = self.in_flight.take() {
            let done = slot.borrow_mut().take();
            match done {
                Some(result) => self.finish(ctx, result),
                None => self.in_flight = Some((action, slot)),
            }
        }
        let Some((action, queued)) = self.pending.take() else { return };
        if queued >= self.frame || self.hold.is_some() || self.in_flight.is_some() {
            self.pending = Some((action, queued));
            return;
        }
        self.error = None;
        match self.run(action.clone()) {
            Ok(Some(job)) => self.start(ctx, action, job),
            Ok(None) => self.retried = false,
            Err(e) if self.retry_after_loss(&action) => crate::warn!("{e:#}"),
            Err(e) => self.error = Some(format!("{e:#}")),
        }
    }

    /// After the device was lost under `action`, queues it again (once): the engine opens a
    /// new device and reloads its models when it runs. Returns whether it did.
    fn retry_after_loss(&mut self, action: &Action) -> bool {
        let lost = self.engine.as_ref().is_ok_and(|e| e.gpu.is_lost());
        if lost && !self.retried {
            self.retried = true;
            self.request(action.clone());
            return true;
        }
        self.retried = false;
        false
    }

    /// Natively: runs the job to its end now.
    #[cfg(not(all(target_arch = "wasm32", feature = "web")))]
    fn start(&mut self, ctx: &egui::Context, action: Action, job: Job) {
        let result = crate::Gpu::block_on(job);
        if let Err(e) = &result {
            if self.retry_after_loss(&action) {
                crate::warn!("{e:#}");
                return;
            }
        }
        self.retried = false;
        self.finish(ctx, result);
    }

    /// In the browser: runs the job on the page's event loop (its readbacks resolve between
    /// frames); a later frame picks the result up.
    #[cfg(all(target_arch = "wasm32", feature = "web"))]
    fn start(&mut self, ctx: &egui::Context, action: Action, job: Job) {
        let slot: JobSlot = Rc::default();
        let (done, ctx) = (slot.clone(), ctx.clone());
        wasm_bindgen_futures::spawn_local(async move {
            let result = job.await;
            *done.borrow_mut() = Some(result);
            ctx.request_repaint();
        });
        self.in_flight = Some((action, slot));
    }

    /// Shows what a job produced.
    fn finish(&mut self, ctx: &egui::Context, result: anyhow::Result<Finished>) {
        let g = &mut self.generate;
        match result {
            Err(e) => self.error = Some(format!("{e:#}")),
            Ok(Finished::Generated { out, reference }) => {
                g.compare = reference.map(|r| {
                    // The prior runs in the recipe too, so the sampled tokens may differ.
                    let differ = out.tokens.ids.iter().zip(&r.tokens.ids).filter(|(a, b)| a != b).count();
                    Comparison { note: format!("the f32 prior sampled\n{differ} of {} tokens differently", r.tokens.ids.len()), ..compare(ctx, "generate", &out.image, r.image) }
                });
                g.out = Some(DecodedView { shown: Shown::new(ctx, "generated", out.image), tokens: out.tokens });
                g.selected = None;
            }
            Ok(Finished::Redecoded { out, reference }) => {
                g.compare = reference.map(|r| compare(ctx, "generate", &out.image, r.image));
                g.out = Some(DecodedView { shown: Shown::new(ctx, "generated", out.image), tokens: out.tokens });
            }
            Ok(Finished::RoundTripped { out: trip, reference }) => {
                let r = &mut self.roundtrip;
                r.compare = reference.map(|f| compare(ctx, "roundtrip", &trip.out.image, f.image));
                r.original = Some(Shown::new(ctx, "photo", trip.original));
                r.rate = Some((trip.bpp, trip.psnr_db));
                r.out = Some(DecodedView { shown: Shown::new(ctx, "reconstruction", trip.out.image), tokens: trip.out.tokens });
            }
            Ok(Finished::Profiled { what, times }) => self.times = Some((what, times)),
            Ok(Finished::Classified { out, f32_logits }) => {
                // An opened classifier has no rollout: the overlay is the input itself.
                let overlay = if out.grid > 0 { rollout_overlay(&out.input, &out.rollout, out.grid) } else { out.input.clone() };
                self.classify.out = Some(ClassView {
                    input: Shown::new(ctx, "classify-input", out.input.clone()),
                    overlay: Shown::new(ctx, "classify-rollout", overlay),
                    result: out,
                });
                self.classify.f32_logits = f32_logits;
            }
        }
    }

    fn precision_panel(&mut self, ui: &mut egui::Ui) {
        ui.heading("Precision");
        let before = self.recipe.clone();
        for r in &self.recipes {
            ui.radio_value(&mut self.recipe, r.clone(), &r.name);
        }
        let toggled = ui.checkbox(&mut self.compare_f32, "compare with f32").changed();
        if before != self.recipe || toggled {
            self.times = None;
            if let Some(action) = self.last[Self::tab_index(self.tab)].clone() {
                self.request(action);
            }
        }
        ui.separator();
        ui.label("Weights of this tab's models:");
        let models: &[ModelName] = match self.tab {
            Tab::Generate => &[ModelName::DigitsPrior, ModelName::DigitsVqgan],
            Tab::RoundTrip => std::slice::from_ref(&self.roundtrip.tokenizer),
            Tab::Classify => &[ModelName::DigitsVit],
        };
        if let Ok(engine) = self.engine.as_mut() {
            for &m in models {
                let mut size = |r: &Recipe| engine.weight_bytes(m, r).map(widgets::bytes).unwrap_or_else(|e| format!("? ({e})"));
                let (this, full) = (size(&self.recipe), size(&Recipe::f32()));
                ui.label(format!("  {}: {this} (f32 {full})", m.dir()));
            }
        }
        if self.tab == Tab::Classify {
            if let Ok(engine) = self.engine.as_mut() {
                let edited = egui::CollapsingHeader::new("Bits per layer (digits-vit)").default_open(true).show(ui, |ui| super::layers::bits_per_layer(ui, engine, &self.recipe)).body_returned.flatten();
                if let Some(recipe) = edited {
                    self.recipe = recipe;
                    self.times = None;
                    if let Some(action) = self.last[Self::tab_index(self.tab)].clone() {
                        self.request(action);
                    }
                }
            }
        }
        ui.separator();
        if ui.add_enabled(!self.busy(), egui::Button::new("Profile per node")).clicked() {
            self.request(Action::Profile);
        }
        if let Some((what, times)) = &self.times {
            let total: f64 = times.iter().map(|t| t.ms).sum();
            ui.label(format!("{what}: {} nodes, {total:.2} ms", times.len()));
            let mut sorted: Vec<&NodeTime> = times.iter().collect();
            sorted.sort_by(|a, b| b.ms.total_cmp(&a.ms));
            let slowest = sorted.first().map_or(1.0, |t| t.ms).max(1e-9);
            egui::ScrollArea::vertical().max_height(320.0).show(ui, |ui| {
                for t in sorted.iter().take(20) {
                    let label = format!("{:.3} ms  {}", t.ms, t.name);
                    widgets::bar(ui, (t.ms / slowest) as f32, 30.0, Color32::from_rgb(90, 140, 220), &label).on_hover_text(format!("{} ({})", t.name, t.op));
                }
            });
        }
    }

    fn status_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            if let Err(e) = &self.engine {
                ui.colored_label(Color32::LIGHT_RED, format!("GPU unavailable: {e}"));
            } else if let Some(why) = &self.hold {
                ui.spinner();
                ui.label(why);
            } else if let Some(action) = self.in_flight.as_ref().map(|(a, _)| a).or(self.pending.as_ref().map(|(a, _)| a)) {
                ui.spinner();
                ui.label(format!("working… {}", describe(action)));
            } else if let Some(e) = &self.error {
                ui.colored_label(Color32::LIGHT_RED, format!("error: {e}"));
                if ui.small_button("dismiss").clicked() {
                    self.error = None;
                }
            } else if let Ok(engine) = &self.engine {
                let reopened = match engine.recoveries {
                    0 => String::new(),
                    n => format!(", device reopened {n}× after a loss"),
                };
                ui.label(format!("ready on {} ({:?}){reopened}", engine.gpu.adapter_name(), engine.gpu.class));
            }
        });
    }

    /// Files dropped on the window, or chosen with the browser's file picker, open in the
    /// Round-trip or Classify tab. Natively a dropped file has a path; in the browser it
    /// arrives as bytes, which the engine keeps under `assets/uploads/`.
    fn take_user_file(&mut self, ctx: &egui::Context) {
        let dropped = ctx.input(|i| i.raw.dropped_files.first().cloned());
        let picked = self.picked_file.borrow_mut().take();
        let path = match (picked, dropped) {
            (Some((name, bytes)), _) => self.user_bytes(&name, bytes),
            (None, Some(file)) => self.dropped_path(file, ctx),
            (None, None) => None,
        };
        let Some(path) = path else { return };
        match self.tab {
            Tab::Classify => {
                self.classify.path = path.display().to_string();
                self.request(Action::Classify(path));
            }
            _ => {
                self.tab = Tab::RoundTrip;
                self.roundtrip.path = path.display().to_string();
                self.request(Action::RoundTrip(path));
            }
        }
    }

    /// Natively a dropped file's path. The browser gives only a name and reads the bytes
    /// asynchronously: they arrive through `picked_file`, as a picked file's do.
    #[cfg(not(target_arch = "wasm32"))]
    fn dropped_path(&mut self, file: egui::DroppedFileHandle, _ctx: &egui::Context) -> Option<PathBuf> {
        Some(file.path().to_path_buf())
    }

    #[cfg(target_arch = "wasm32")]
    fn dropped_path(&mut self, file: egui::DroppedFileHandle, ctx: &egui::Context) -> Option<PathBuf> {
        #[cfg(feature = "web")]
        {
            let (slot, ctx) = (self.picked_file.clone(), ctx.clone());
            wasm_bindgen_futures::spawn_local(async move {
                let name = file.path().display().to_string();
                // An unreadable file arrives empty: decoding it then reports the error by name.
                let bytes = file.bytes_async().await.unwrap_or_default();
                *slot.borrow_mut() = Some((name, bytes));
                ctx.request_repaint();
            });
        }
        #[cfg(not(feature = "web"))]
        let _ = (file, ctx);
        None
    }

    fn user_bytes(&mut self, name: &str, bytes: Vec<u8>) -> Option<PathBuf> {
        match self.engine.as_mut() {
            Ok(engine) => Some(engine.add_user_file(name, bytes)),
            Err(e) => {
                self.error = Some(format!("{name}: no GPU engine ({e})"));
                None
            }
        }
    }
}

impl eframe::App for ViewerApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.frame += 1;
        if let Some(mut job) = self.screenshot.take() {
            job.step(self, &ctx);
            self.screenshot = Some(job);
        }
        self.take_user_file(&ctx);
        self.run_pending(&ctx);
        self.main_rect = None;

        egui::Panel::top("tabs").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("lowbit");
                ui.separator();
                ui.selectable_value(&mut self.tab, Tab::Generate, "Generate");
                ui.selectable_value(&mut self.tab, Tab::RoundTrip, "Round-trip");
                ui.selectable_value(&mut self.tab, Tab::Classify, "Classify");
            });
        });
        egui::Panel::bottom("status").show(ui, |ui| self.status_bar(ui));
        egui::Panel::right("precision").default_size(300.0).max_size(360.0).show(ui, |ui| self.precision_panel(ui));
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::both().show(ui, |ui| match self.tab {
                Tab::Generate => super::tabs::generate(self, ui),
                Tab::RoundTrip => super::tabs::roundtrip(self, ui),
                Tab::Classify => super::tabs::classify(self, ui),
            });
        });
        if self.pending.is_some() || self.screenshot.is_some() {
            ctx.request_repaint();
        }
    }
}

fn compare(ctx: &egui::Context, name: &str, out: &image::RgbImage, reference: image::RgbImage) -> Comparison {
    // ×8: a difference of 4 levels (barely visible) becomes 32 (clearly visible).
    let (diff, max, mean) = difference(out, &reference, 8.0);
    Comparison {
        reference: Shown::new(ctx, &format!("{name}-f32"), reference),
        diff: Shown::new(ctx, &format!("{name}-diff"), diff),
        max,
        mean,
        note: String::new(),
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Generate { class, seed } => format!("sampling a {class} (seed {seed}) and decoding it"),
        Action::Redecode(_) => "decoding the edited tokens".into(),
        Action::RoundTrip(p) => format!("encoding and decoding {}", p.display()),
        Action::Classify(p) => format!("classifying {}", p.display()),
        Action::Profile => "profiling each node".into(),
        Action::OpenClassifier(Some(p)) => format!("loading {}", p.display()),
        Action::OpenClassifier(None) => "back to digits-vit".into(),
    }
}
