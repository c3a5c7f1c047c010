//! `lowbit viewer --screenshot OUT.png --action ACTION`: drive the app like a user would, wait
//! until the result has been drawn, save the window through egui's own screenshot command
//! (no X tooling needed) and print where the main image is, so tests can check its pixels.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use eframe::egui::{self, ColorImage};

use super::app::{Action, Tab, ViewerApp};

/// Frames drawn with the result before the screenshot is requested: the first frame after a
/// result may still have the previous layout (egui sizes some widgets a frame late).
const SETTLE_FRAMES: u32 = 2;
/// Give up after this long (model loading plus one action takes seconds on lavapipe).
const TIMEOUT: Duration = Duration::from_secs(300);

/// What the screenshot shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScreenAction {
    Generate(usize),
    Classify(PathBuf),
    RoundTrip(PathBuf),
}

impl ScreenAction {
    /// `generate:<class>`, `classify:<image>` or `roundtrip:<image>`.
    pub fn parse(s: &str) -> anyhow::Result<ScreenAction> {
        let Some((kind, arg)) = s.split_once(':') else {
            bail!("--action `{s}`: expected generate:<class>, classify:<image> or roundtrip:<image>")
        };
        Ok(match kind {
            "generate" => ScreenAction::Generate(arg.parse().with_context(|| format!("--action {s}: the class must be a number"))?),
            "classify" | "roundtrip" if arg.is_empty() => bail!("--action {s}: give an image path after the colon"),
            "classify" => ScreenAction::Classify(arg.into()),
            "roundtrip" => ScreenAction::RoundTrip(arg.into()),
            other => bail!("--action `{s}`: unknown action `{other}` (generate, classify, roundtrip)"),
        })
    }
}

enum Stage {
    Start,
    Working,
    /// The result exists; frames drawn with it so far.
    Drawn(u32),
    Requested,
    Done,
}

pub struct ScreenshotJob {
    out: PathBuf,
    text: String,
    action: ScreenAction,
    stage: Stage,
    started: Instant,
    image: Arc<Mutex<Option<Arc<ColorImage>>>>,
    /// What `run` returns once the window has closed.
    pub outcome: Arc<Mutex<Option<Result<(), String>>>>,
}

impl ScreenshotJob {
    pub fn new(out: PathBuf, action: &str) -> anyhow::Result<ScreenshotJob> {
        Ok(ScreenshotJob {
            out,
            text: action.to_string(),
            action: ScreenAction::parse(action)?,
            stage: Stage::Start,
            started: Instant::now(),
            image: Default::default(),
            outcome: Default::default(),
        })
    }

    /// Advances the job by one frame; called before the app draws.
    pub fn step(&mut self, app: &mut ViewerApp, ctx: &egui::Context) {
        if matches!(self.stage, Stage::Done) {
            return;
        }
        if let Err(e) = self.try_step(app, ctx) {
            self.finish(ctx, Err(format!("{e:#}")));
        } else if self.started.elapsed() > TIMEOUT {
            self.finish(ctx, Err(format!("no result after {} s", TIMEOUT.as_secs())));
        }
    }

    fn try_step(&mut self, app: &mut ViewerApp, ctx: &egui::Context) -> anyhow::Result<()> {
        if let Err(e) = &app.engine {
            bail!("GPU unavailable: {e}");
        }
        match self.stage {
            Stage::Start => {
                match &self.action {
                    ScreenAction::Generate(class) => {
                        app.tab = Tab::Generate;
                        (app.generate.class, app.generate.seed) = (*class, 0);
                        app.request(Action::Generate { class: *class, seed: 0 });
                    }
                    ScreenAction::Classify(path) => {
                        app.tab = Tab::Classify;
                        app.classify.path = path.display().to_string();
                        app.request(Action::Classify(path.clone()));
                    }
                    ScreenAction::RoundTrip(path) => {
                        app.tab = Tab::RoundTrip;
                        app.roundtrip.path = path.display().to_string();
                        app.request(Action::RoundTrip(path.clone()));
                    }
                }
                self.stage = Stage::Working;
            }
            Stage::Working => {
                if let Some(e) = &app.error {
                    bail!("{e}");
                }
                if !app.busy() && app.main_rect.is_some() {
                    self.stage = Stage::Drawn(1);
                }
            }
            Stage::Drawn(n) if n < SETTLE_FRAMES => self.stage = Stage::Drawn(n + 1),
            Stage::Drawn(_) => {
                let slot = self.image.clone();
                let ctx2 = ctx.clone();
                ctx.request_screenshot(move |image| {
                    *slot.lock().unwrap() = Some(image);
                    ctx2.request_repaint();
                });
                self.stage = Stage::Requested;
            }
            Stage::Requested => {
                let Some(image) = self.image.lock().unwrap().take() else { return Ok(()) };
                self.save(app, ctx, &image)?;
                self.finish(ctx, Ok(()));
            }
            Stage::Done => {}
        }
        Ok(())
    }

    fn save(&self, app: &ViewerApp, ctx: &egui::Context, image: &ColorImage) -> anyhow::Result<()> {
        let [w, h] = image.size;
        let rgba: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
        let png = image::RgbaImage::from_raw(w as u32, h as u32, rgba).context("screenshot buffer size")?;
        if let Some(dir) = self.out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        png.save(&self.out).with_context(|| format!("writing {}", self.out.display()))?;
        let rect = app.main_rect.context("the main image was not drawn")?;
        // The screenshot is in physical pixels; egui lays out in points.
        let ppp = ctx.pixels_per_point();
        let image_rect = [rect.min.x, rect.min.y, rect.width(), rect.height()].map(|v| (v * ppp).round() as i64);
        let mut json = serde_json::json!({ "action": self.text, "image_rect": image_rect, "recipe": app.recipe.name });
        let tokens = match self.action {
            ScreenAction::Generate(_) => app.generate.out.as_ref().map(|o| &o.tokens),
            ScreenAction::RoundTrip(_) => app.roundtrip.out.as_ref().map(|o| &o.tokens),
            ScreenAction::Classify(_) => None,
        };
        json["tokens"] = serde_json::json!(tokens.map(|t| t.ids.clone()).unwrap_or_default());
        if let (ScreenAction::RoundTrip(_), Some((bpp, psnr))) = (&self.action, app.roundtrip.rate) {
            json["bpp"] = serde_json::json!(bpp);
            json["psnr_db"] = serde_json::json!(psnr);
        }
        if let Some(t) = tokens {
            json["token_shape"] = serde_json::json!(t.shape());
        }
        if let Some(out) = &app.classify.out {
            if matches!(self.action, ScreenAction::Classify(_)) {
                json["top1"] = serde_json::json!(out.result.top(1)[0].0);
                json["top5"] = serde_json::json!(out.result.top(5));
            }
        }
        println!("{json}");
        Ok(())
    }

    fn finish(&mut self, ctx: &egui::Context, outcome: Result<(), String>) {
        *self.outcome.lock().unwrap() = Some(outcome);
        self.stage = Stage::Done;
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_and_bad_ones_say_why() {
        assert_eq!(ScreenAction::parse("generate:3").unwrap(), ScreenAction::Generate(3));
        assert_eq!(ScreenAction::parse("classify:a/b.png").unwrap(), ScreenAction::Classify("a/b.png".into()));
        assert_eq!(ScreenAction::parse("roundtrip:c:d.png").unwrap(), ScreenAction::RoundTrip("c:d.png".into()));
        for bad in ["generate", "generate:x", "classify:", "paint:1"] {
            let e = ScreenAction::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--action"), "{bad}: {e}");
        }
    }
}
