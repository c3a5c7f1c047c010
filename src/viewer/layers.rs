//! Mixed precision by hand: digits-vit's matrices, each with its own weight format. Starts
//! from whatever the selected recipe packed (a `mixed:4.5` folder shows the allocation
//! `lowbit quantize` chose) and turns any change into a per-layer recipe the app re-runs.

use eframe::egui;

use super::engine::{Engine, Recipe};
use crate::formats::WeightFormat;

/// The formats a layer can take here (round to nearest from the f32 weights).
const CHOICES: [&str; 6] = ["f32", "q8", "q4g32", "q4g128", "fp4", "ternary"];

/// Draws the table; returns the recipe to switch to when a layer's format changed.
pub fn bits_per_layer(ui: &mut egui::Ui, engine: &mut Engine, recipe: &Recipe) -> Option<Recipe> {
    let layers = match engine.vit_layers(recipe) {
        Ok(l) => l,
        Err(e) => {
            ui.label(format!("layers: {e:#}"));
            return None;
        }
    };
    let params: usize = layers.iter().map(|l| l.1 * l.2).sum();
    let bytes: usize = layers.iter().map(|&(_, r, c, f)| f.packed_bytes(r, c)).sum();
    let bits = 8.0 * bytes as f64 / params.max(1) as f64;
    ui.label(format!("{} matrices, {params} weights: {bits:.2} bits per weight on average (scales included)", layers.len()));
    let mut changed: Option<(usize, WeightFormat)> = None;
    egui::ScrollArea::vertical().id_salt("bits per layer").max_height(220.0).show(ui, |ui| {
        egui::Grid::new("bits per layer grid").striped(true).show(ui, |ui| {
            for (i, (key, _, _, format)) in layers.iter().enumerate() {
                ui.label(key.strip_suffix(".weight").unwrap_or(key));
                let mut name = format.name();
                egui::ComboBox::from_id_salt(("layer format", i)).selected_text(&name).show_ui(ui, |ui| {
                    for c in CHOICES {
                        ui.selectable_value(&mut name, c.to_string(), c);
                    }
                });
                if name != format.name() {
                    if let Ok(f) = WeightFormat::parse(&name) {
                        changed = Some((i, f));
                    }
                }
                ui.end_row();
            }
        });
    });
    let (i, format) = changed?;
    let mut chosen: Vec<(String, WeightFormat)> = layers.into_iter().map(|(k, _, _, f)| (k, f)).collect();
    chosen[i].1 = format;
    Some(Recipe::per_layer(chosen))
}
