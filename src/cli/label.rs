//! Text on images (the demo's contact sheet): one line at a time in Hack Regular (bundled in
//! `assets/fonts`, MIT / Bitstream Vera licence beside it), rasterized by `ab_glyph`.

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

const FONT: &[u8] = include_bytes!("../../assets/fonts/Hack-Regular.ttf");

fn font() -> FontRef<'static> {
    FontRef::try_from_slice(FONT).expect("the bundled font parses")
}

/// Width and height in pixels of `text` at `px` pixels per em.
pub fn size(text: &str, px: f32) -> (u32, u32) {
    let font = font();
    let f = font.as_scaled(PxScale::from(px));
    let w: f32 = text.chars().map(|c| f.h_advance(font.glyph_id(c))).sum();
    (w.ceil() as u32, (f.ascent() - f.descent()).ceil() as u32)
}

/// Draws `text` with its top-left corner at (x, y), blending `color` over what is there.
pub fn draw(img: &mut RgbImage, x: i32, y: i32, px: f32, color: [u8; 3], text: &str) {
    let font = font();
    let scale = PxScale::from(px);
    let f = font.as_scaled(scale);
    let mut caret = x as f32;
    for c in text.chars() {
        let id = font.glyph_id(c);
        let glyph = id.with_scale_and_position(scale, point(caret, y as f32 + f.ascent()));
        caret += f.h_advance(id);
        let Some(outlined) = font.outline_glyph(glyph) else { continue };
        let b = outlined.px_bounds();
        outlined.draw(|gx, gy, coverage| {
            let (px_x, px_y) = (b.min.x as i32 + gx as i32, b.min.y as i32 + gy as i32);
            if px_x < 0 || px_y < 0 || px_x >= img.width() as i32 || px_y >= img.height() as i32 {
                return;
            }
            let p = img.get_pixel_mut(px_x as u32, px_y as u32);
            for (ch, &want) in p.0.iter_mut().zip(&color) {
                *ch = (*ch as f32 * (1.0 - coverage) + want as f32 * coverage).round() as u8;
            }
        });
    }
}

/// A strip `width` wide holding `text` centred, with `pad` pixels above and below.
pub fn strip(text: &str, width: u32, px: f32, pad: u32, fg: [u8; 3], bg: [u8; 3]) -> RgbImage {
    let (w, h) = size(text, px);
    let mut out = RgbImage::from_pixel(width.max(w), h + 2 * pad, Rgb(bg));
    let x = (out.width().saturating_sub(w) / 2) as i32;
    draw(&mut out, x, pad as i32, px, fg, text);
    out
}
