//! Small egui pieces the tabs share: images shown pixel-exact, the token grid editor, bars.

use eframe::egui::{self, Color32, Rect, TextureHandle, TextureOptions, Vec2};
use image::RgbImage;

/// An image with its GPU texture (uploaded once, drawn every frame).
pub struct Shown {
    pub image: RgbImage,
    texture: TextureHandle,
}

impl Shown {
    pub fn new(ctx: &egui::Context, name: &str, image: RgbImage) -> Shown {
        let color = egui::ColorImage::from_rgb([image.width() as usize, image.height() as usize], image.as_raw());
        // Nearest filtering: enlarged model outputs should show their real pixels, not a blur.
        let texture = ctx.load_texture(name, color, TextureOptions::NEAREST);
        Shown { image, texture }
    }

    /// Draws the image enlarged by the largest whole factor that fits `side` points (whole
    /// factors keep every source pixel the same size on screen); returns where it landed.
    pub fn show(&self, ui: &mut egui::Ui, side: f32) -> Rect {
        let (w, h) = (self.image.width() as f32, self.image.height() as f32);
        let scale = (side / w.max(h)).floor().max(1.0);
        let size = Vec2::new(w * scale, h * scale);
        ui.add(egui::Image::new((self.texture.id(), size))).rect
    }

    /// `show` with a caption above.
    pub fn show_captioned(&self, ui: &mut egui::Ui, caption: &str, side: f32) -> Rect {
        ui.vertical(|ui| {
            ui.label(caption);
            self.show(ui, side)
        })
        .inner
    }
}

/// Grids wider than this are drawn as small colored squares (id on hover) instead of labelled
/// buttons: photo-vqgan's 32×32 tokens would otherwise fill several screens.
const LABELLED_MAX_WIDTH: usize = 16;

/// A color per code, spread around the hue circle so neighbouring ids differ and repeated
/// codes are easy to spot.
fn code_color(id: i64, value: f32) -> Color32 {
    let hue = (id as f32 * 0.618_034).fract();
    egui::ecolor::Hsva::new(hue, 0.6, value, 1.0).into()
}

/// The token ids as a grid of clickable cells tinted by id. Returns the index clicked this
/// frame, if any.
pub fn token_grid(ui: &mut egui::Ui, id_salt: &str, ids: &[i64], width: usize, selected: Option<usize>) -> Option<usize> {
    let width = width.max(1);
    if width > LABELLED_MAX_WIDTH {
        return compact_token_grid(ui, ids, width);
    }
    let mut clicked = None;
    egui::Grid::new(id_salt).spacing([2.0, 2.0]).show(ui, |ui| {
        for (i, &id) in ids.iter().enumerate() {
            let text = egui::RichText::new(format!("{id:>4}")).monospace().color(Color32::WHITE);
            let button = egui::Button::new(text).fill(code_color(id, 0.12)).min_size(Vec2::new(34.0, 18.0)).selected(selected == Some(i));
            if ui.add(button).clicked() {
                clicked = Some(i);
            }
            if (i + 1) % width == 0 {
                ui.end_row();
            }
        }
    });
    clicked
}

fn compact_token_grid(ui: &mut egui::Ui, ids: &[i64], width: usize) -> Option<usize> {
    const CELL: f32 = 6.0;
    let height = ids.len().div_ceil(width);
    let (rect, response) = ui.allocate_exact_size(Vec2::new(width as f32 * CELL, height as f32 * CELL), egui::Sense::click());
    for (i, &id) in ids.iter().enumerate() {
        let min = rect.min + Vec2::new((i % width) as f32 * CELL, (i / width) as f32 * CELL);
        ui.painter().rect_filled(Rect::from_min_size(min, Vec2::splat(CELL - 1.0)), 0.0, code_color(id, 0.3));
    }
    let cell_at = |pos: egui::Pos2| {
        let d = pos - rect.min;
        let i = (d.y / CELL) as usize * width + (d.x / CELL) as usize;
        (d.x >= 0.0 && d.y >= 0.0 && i < ids.len()).then_some(i)
    };
    let hovered = response.hover_pos().and_then(cell_at);
    if let Some(i) = hovered {
        response.clone().on_hover_text(format!("({}, {}): code {}", i / width, i % width, ids[i]));
    }
    if response.clicked() { hovered } else { None }
}

/// A horizontal bar of `fraction` (0..1) of `width` points with a label on its right.
pub fn bar(ui: &mut egui::Ui, fraction: f32, width: f32, color: Color32, label: &str) -> egui::Response {
    ui.horizontal(|ui| {
        let (rect, _) = ui.allocate_exact_size(Vec2::new(width, 14.0), egui::Sense::hover());
        ui.painter().rect_filled(rect, 2.0, Color32::from_gray(50));
        let mut filled = rect;
        filled.set_width(width * fraction.clamp(0.0, 1.0));
        ui.painter().rect_filled(filled, 2.0, color);
        // Truncated: long node names must not widen the side panel.
        ui.add(egui::Label::new(label).truncate())
    })
    .inner
}

/// Human-readable bytes (MB with two decimals, KB below 100 KB).
pub fn bytes(n: usize) -> String {
    if n < 100_000 {
        format!("{:.1} KB", n as f64 / 1e3)
    } else {
        format!("{:.2} MB", n as f64 / 1e6)
    }
}
