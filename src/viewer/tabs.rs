//! The three tabs: Generate (prior → tokens → decoder, with a token editor), Round-trip
//! (photo → tokens → photo) and Classify (top-5 and attention rollout).

use std::path::PathBuf;

use eframe::egui::{self, Color32};

use super::app::{Action, Comparison, ViewerApp};
use super::engine::{softmax, ModelName};
use super::widgets;

/// Points the main image is enlarged to fill (whole factors only, see `Shown::show`).
const MAIN_SIDE: f32 = 256.0;
const SMALL_SIDE: f32 = 128.0;
/// Classify shows two images and the bars side by side: a little smaller.
const CLASSIFY_SIDE: f32 = 224.0;

pub fn generate(app: &mut ViewerApp, ui: &mut egui::Ui) {
    let busy = app.busy();
    let codes = app.engine.as_mut().ok().and_then(|e| e.digits_codes(&app.recipe).ok()).unwrap_or(1);
    let g = &mut app.generate;
    let mut request = None;
    ui.horizontal(|ui| {
        ui.label("class");
        ui.add(egui::DragValue::new(&mut g.class).range(0..=9));
        ui.label("seed");
        ui.add(egui::DragValue::new(&mut g.seed));
        if ui.add_enabled(!busy, egui::Button::new("Generate")).clicked() {
            request = Some(Action::Generate { class: g.class, seed: g.seed });
        }
    });
    ui.separator();
    let Some(out) = &mut g.out else {
        ui.label("Pick a class and a seed, then Generate.");
        if let Some(a) = request {
            app.request(a);
        }
        return;
    };
    ui.horizontal_top(|ui| {
        app.main_rect = Some(out.shown.show_captioned(ui, "decoded (digits-vqgan)", MAIN_SIDE));
        ui.vertical(|ui| {
            ui.label(format!("tokens {}×{} (click one to change its code)", out.tokens.height, out.tokens.width));
            if let Some(i) = widgets::token_grid(ui, "tokens", &out.tokens.ids, out.tokens.width, g.selected) {
                g.selected = Some(i);
            }
            if let Some(i) = g.selected {
                let mut id = out.tokens.ids[i];
                ui.horizontal(|ui| {
                    ui.label(format!("token ({}, {}): code", i / out.tokens.width, i % out.tokens.width));
                    let mut changed = ui.add(egui::DragValue::new(&mut id).range(0..=codes as i64 - 1)).changed();
                    if ui.button("previous").clicked() {
                        id = (id - 1).rem_euclid(codes as i64);
                        changed = true;
                    }
                    if ui.button("next").clicked() {
                        id = (id + 1) % codes as i64;
                        changed = true;
                    }
                    if changed && id != out.tokens.ids[i] {
                        let mut tokens = out.tokens.clone();
                        tokens.ids[i] = id;
                        request = Some(Action::Redecode(tokens));
                    }
                });
            }
        });
    });
    comparison(ui, g.compare.as_ref());
    if let Some(a) = request {
        app.request(a);
    }
}

pub fn roundtrip(app: &mut ViewerApp, ui: &mut egui::Ui) {
    let samples = app.engine.as_ref().map(|e| e.samples("photo-")).unwrap_or_default();
    let busy = app.busy();
    let r = &mut app.roundtrip;
    let mut request = None;
    ui.horizontal(|ui| {
        ui.label("tokenizer");
        for t in ModelName::PHOTO_TOKENIZERS {
            let picked = ui.add_enabled(!busy, egui::RadioButton::new(r.tokenizer == t, t.dir())).clicked();
            // Switching re-runs the photo on screen with the other tokenizer.
            if picked && r.tokenizer != t {
                r.tokenizer = t;
                if r.out.is_some() && !r.path.trim().is_empty() {
                    request = Some(Action::RoundTrip(PathBuf::from(r.path.trim())));
                }
            }
        }
    });
    open_row(ui, &mut r.path, &samples, busy, &mut request, Action::RoundTrip);
    own_file_row(ui, &app.picked_file, &mut app.error, busy);
    ui.separator();
    if let (Some(original), Some(out)) = (&r.original, &r.out) {
        ui.horizontal_top(|ui| {
            original.show_captioned(ui, "input (center crop)", MAIN_SIDE);
            app.main_rect = Some(out.shown.show_captioned(ui, &format!("reconstruction ({})", r.tokenizer.dir()), MAIN_SIDE));
        });
        ui.separator();
        ui.horizontal_top(|ui| {
            ui.vertical(|ui| {
                // [h, w], or [S, h, w] for a tokenizer with several ids per position.
                let dims: Vec<String> = out.tokens.dims()[1..].iter().map(usize::to_string).collect();
                ui.label(format!("tokens {}", dims.join("×")));
                if let Some((bpp, psnr)) = r.rate {
                    // What `lowbit compress` spends on these tokens, and what they look like.
                    ui.label(format!("{bpp:.3} bpp (entropy-coded tokens) · PSNR {psnr:.2} dB"));
                }
                widgets::token_grid(ui, "photo-tokens", &out.tokens.ids, out.tokens.width, None);
            });
            comparison_row(ui, r.compare.as_ref());
        });
    } else {
        ui.label("Open a photograph to encode it to tokens and decode it back.");
    }
    if let Some(a) = request {
        app.request(a);
    }
}

pub fn classify(app: &mut ViewerApp, ui: &mut egui::Ui) {
    let samples = app.engine.as_ref().map(|e| e.samples("")).unwrap_or_default();
    let busy = app.busy();
    let c = &mut app.classify;
    let mut request = None;
    // Any timm classifier folder (ViT family or Swin) may replace digits-vit here.
    ui.horizontal(|ui| {
        ui.label("model folder");
        ui.add(egui::TextEdit::singleline(&mut c.model_dir).desired_width(260.0).hint_text("digits-vit (shipped)"));
        if ui.add_enabled(!busy && !c.model_dir.trim().is_empty(), egui::Button::new("Open model")).clicked() {
            request = Some(Action::OpenClassifier(Some(PathBuf::from(c.model_dir.trim()))));
        }
        if c.model.is_some() && ui.add_enabled(!busy, egui::Button::new("digits-vit")).clicked() {
            request = Some(Action::OpenClassifier(None));
        }
    });
    if let Some(about) = &c.model {
        ui.label(about);
    }
    open_row(ui, &mut c.path, &samples, busy, &mut request, Action::Classify);
    own_file_row(ui, &app.picked_file, &mut app.error, busy);
    ui.separator();
    let model_name = if c.model.is_some() { "the opened model" } else { "digits-vit" };
    let Some(out) = &c.out else {
        ui.label(format!("Open an image to classify it with {model_name}."));
        if let Some(a) = request {
            app.request(a);
        }
        return;
    };
    ui.horizontal_top(|ui| {
        app.main_rect = Some(out.input.show_captioned(ui, "input (as the model sees it)", CLASSIFY_SIDE));
        if out.result.grid > 0 {
            out.overlay.show_captioned(ui, "attention rollout (class token)", CLASSIFY_SIDE);
        }
        ui.vertical(|ui| {
            ui.label("top 5");
            for (class, p) in out.result.top(5) {
                widgets::bar(ui, p, 100.0, Color32::from_rgb(80, 170, 90), &format!("{class}: {:.1}%", 100.0 * p));
            }
            if let Some(reference) = &c.f32_logits {
                ui.separator();
                ui.label("vs f32: probability change");
                let (p, q) = (out.result.probabilities(), softmax(reference));
                for (class, _) in out.result.top(5) {
                    ui.label(format!("{class}: {:+.3}%  (logit {:+.4})", 100.0 * (p[class] - q[class]), out.result.logits[class] - reference[class]));
                }
                let max_logit = out.result.logits.iter().zip(reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                ui.label(format!("largest logit change {max_logit:.4}"));
            }
        });
    });
}

/// A path field, an Open button and one button per sample; queues `make(path)` on a choice.
fn open_row(ui: &mut egui::Ui, path: &mut String, samples: &[PathBuf], busy: bool, request: &mut Option<Action>, make: fn(PathBuf) -> Action) {
    ui.horizontal(|ui| {
        ui.label("image");
        let field = ui.add(egui::TextEdit::singleline(path).desired_width(320.0));
        let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        if ui.add_enabled(!busy, egui::Button::new("Open")).clicked() || enter {
            *request = Some(make(PathBuf::from(path.trim())));
        }
    });
    ui.horizontal_wrapped(|ui| {
        ui.label("samples:");
        for s in samples {
            let name = s.file_stem().unwrap_or_default().to_string_lossy();
            if ui.add_enabled(!busy, egui::Button::new(name.as_ref()).small()).clicked() {
                *path = s.display().to_string();
                *request = Some(make(s.clone()));
            }
        }
    });
}

/// Where the user's own image comes from: a drop anywhere on the window, or (in the browser,
/// which gives no paths) the page's file picker.
fn own_file_row(ui: &mut egui::Ui, picked: &super::app::PickedFile, error: &mut Option<String>, busy: bool) {
    ui.horizontal(|ui| {
        #[cfg(all(target_arch = "wasm32", feature = "web"))]
        if ui.add_enabled(!busy, egui::Button::new("Choose a file…")).clicked() {
            if let Err(e) = super::web::pick_file(picked.clone(), ui.ctx().clone()) {
                *error = Some(format!("the file picker: {e}"));
            }
        }
        #[cfg(not(all(target_arch = "wasm32", feature = "web")))]
        let _ = (picked, error, busy);
        ui.label("or drop an image file (PNG, JPEG) on the window");
    });
}

/// The f32 output and the amplified difference, when the precision panel asks for them.
fn comparison(ui: &mut egui::Ui, c: Option<&Comparison>) {
    if c.is_some() {
        ui.separator();
        ui.horizontal_top(|ui| comparison_row(ui, c));
    }
}

fn comparison_row(ui: &mut egui::Ui, c: Option<&Comparison>) {
    let Some(c) = c else { return };
    c.reference.show_captioned(ui, "f32 weights", SMALL_SIDE);
    c.diff.show_captioned(ui, "|difference| × 8", SMALL_SIDE);
    ui.label(format!("max {} levels\nmean {:.2} levels\n{}", c.max, c.mean, c.note));
}
