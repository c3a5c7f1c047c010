//! The `--method` list: which weight methods choose the codes (`rtn`, `clip`, `gptq`, and the
//! calibrated refinements `sequential`, `fisher`, `recon`), which activation methods the static
//! activation recipes use, each recipe's measured default, and the combinations refused.

use super::act_calib::ActMethods;
use super::actq::Kind;
use super::recipe::Recipe;
use crate::{invalid, Result};

/// Methods that choose how activations are quantized (recipes w6a6, w4a8, w4a4).
pub const ACT_METHODS: [&str; 10] = ["repq", "log2", "adalog", "sulq", "twin", "noisy", "smoothq", "dynamic", "asymmetric", "rotate"];

/// The choice of codes for every matrix (`rtn`, `clip`, `gptq`) and, for the static activation
/// recipes, of the activation quantizers (`ACT_METHODS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Methods {
    pub clip: bool,
    pub gptq: bool,
    pub act: ActMethods,
    /// SVDQuant: a low-rank f32 branch per block Linear, the 4-bit codes for the residual.
    pub svdquant: bool,
    /// W4A8/W4A4 block Linear inputs quantized per token at run time (absmax / (2^(b−1) − 1)
    /// per row, on the GPU) instead of by calibrated static quantizers.
    pub dynamic: bool,
    /// With `dynamic`: a zero point per row too, (max − min) / (2^b − 1) per step, so a
    /// one-sided row (post-GELU) keeps every code.
    pub asymmetric: bool,
    /// QuaRot: block Linears store W·H and rotate their input by H at run time (with dynamic).
    pub rotate: bool,
    /// GPTQ block after block on the quantized model's inputs, with an error-compensating
    /// target (`quant::sequential`).
    pub sequential: bool,
    /// PTQ4ViT's loss-aware ("Hessian-guided") metric: GPTQ's Hessians weight each input row by
    /// how much its output error moves the model's output (`models::vit::backprop`).
    pub fisher: bool,
    /// BRECQ / I&S-ViT block reconstruction: each ViT block's rounding re-chosen against the
    /// block's float output (`quant::recon`), starting from the codes of the other methods.
    pub recon: bool,
}

impl Methods {
    pub fn parse(list: &str) -> Result<Methods> {
        let mut m = Methods::default();
        let mut rtn = false;
        for name in list.split(',').map(str::trim) {
            match name {
                "rtn" => rtn = true,
                "clip" => m.clip = true,
                "gptq" => m.gptq = true,
                "repq" => m.act.repq = true,
                "smoothq" => m.act.smooth = true,
                "noisy" => m.act.noisy = true,
                "svdquant" => m.svdquant = true,
                "dynamic" => m.dynamic = true,
                "asymmetric" => m.asymmetric = true,
                "rotate" => m.rotate = true,
                "sequential" => m.sequential = true,
                "fisher" => m.fisher = true,
                "recon" => m.recon = true,
                "log2" => m.act.set_quantizers(Kind::Log2, None)?,
                "adalog" => m.act.set_quantizers(Kind::AdaLog, Some(Kind::AdaLog))?,
                "sulq" => m.act.set_quantizers(Kind::Sulq, Some(Kind::Sulq))?,
                "twin" => m.act.set_quantizers(Kind::Twin { gelu: false }, Some(Kind::Twin { gelu: true }))?,
                _ => invalid!("unknown method `{name}` (weights: rtn, clip, gptq, sequential, fisher, recon, svdquant; activations: {})", ACT_METHODS.join(", ")),
            }
        }
        if rtn && m.clip {
            invalid!("methods rtn and clip contradict each other: rtn rounds the absmax range, clip searches it");
        }
        if m.act.repq && m.act.smooth {
            invalid!("methods repq and smoothq both reparameterize the LayerNorms; pick one");
        }
        // AdaLog's post-GELU part needs a static fc2 input through the simulated path; with
        // per-token or SVDQuant's integer kernel fc2's input is quantized there, and AdaLog
        // keeps the post-softmax quantizer only.
        if (m.dynamic || m.svdquant) && m.act.gelu == Some(Kind::AdaLog) {
            m.act.gelu = None;
        }
        Ok(m)
    }

    /// What a recipe uses without `--method`: the best we measured (docs/QUANTIZATION.md),
    /// given whether calibration data was passed: GPTQ with clipped group ranges, or plain
    /// round-to-nearest. Without GPTQ, `clip`'s least-squares ranges cost 2.3–5.6 dB against
    /// `rtn` on every twelve-block stand-in at w4a16 (its errors, all towards smaller
    /// weights, add up over depth), though it gains up to 1.3 dB on four-block models
    /// ("Clipping without GPTQ", 2026-12-07).
    pub fn default_for(calibrated: bool) -> Methods {
        Methods { clip: calibrated, gptq: calibrated, ..Methods::default() }
    }

    /// W8A8's default (its activations are quantized per token at run time): the weight
    /// default and, with calibration images, SmoothQuant's maps folded into the weights:
    /// +3.3 … +9.4 dB on four of the five twelve-block stand-ins and +9.6 dB on the four-block
    /// `outlier-ln`, −0.6 … +0.5 dB on the rest (docs/QUANTIZATION.md, "Few calibration
    /// images, SmoothQuant for w8a8, clipping without GPTQ").
    pub fn default_for_w8a8(calibrated: bool) -> Methods {
        let mut m = Methods::default_for(calibrated);
        m.act.smooth = calibrated;
        m
    }

    /// The default of the activation recipes (calibration is required for them): the best
    /// combination measured on the outlier fixtures (docs/QUANTIZATION.md, "Real-ViT
    /// statistics", "Asymmetric per-token codes and SmoothQuant"), which also wins or ties on photo-vit.
    /// Both W4 recipes quantize activations per token with a zero point per row
    /// (`dynamic,asymmetric`: a step never larger than the symmetric one; at W4A4 symmetric
    /// int4 collapses on the one-sided post-GELU rows of the timm family fixtures) after
    /// SmoothQuant-with-bias (`smoothq`: +0.2 … +2.1 dB over RepQ's map or none on the
    /// outlier fixtures, +2.7 … +5.7 dB at W4A4 on the family ones). W4A8: a uniform 8-bit
    /// post-softmax quantizer (AdaLog's measured 0.6–1.9 dB lower there); W4A4: the Hadamard
    /// rotation and AdaLog; W6A6 (no integer kernel, no per-token path): RepQ + AdaLog, its
    /// best on digits-vit. W6 has no GPTQ.
    pub fn default_for_activations(weight_bits: u32, act_bits: u32) -> Methods {
        let dynamic = weight_bits == 4;
        let softmax = if dynamic && act_bits >= 8 { None } else { Some(Kind::AdaLog) };
        // AdaLog's post-GELU shift goes with its post-softmax quantizer where fc2's input is static.
        let gelu = if dynamic { None } else { softmax.filter(|k| *k == Kind::AdaLog) };
        let act = ActMethods { repq: !dynamic && act_bits <= 6, noisy: false, softmax, gelu, smooth: dynamic };
        Methods { clip: true, gptq: weight_bits != 6, act, dynamic, asymmetric: dynamic, rotate: dynamic && act_bits <= 4, ..Methods::default() }
    }

    pub fn name(&self) -> String {
        let weights = match (self.gptq, self.clip) {
            (true, true) => "gptq+clip",
            (true, false) => "gptq",
            (false, true) => "clip",
            (false, false) => "rtn",
        };
        let mut names = self.act.names();
        names.insert(0, weights);
        let flags = [
            (self.svdquant, "svdquant"),
            (self.dynamic, "dynamic"),
            (self.asymmetric, "asymmetric"),
            (self.rotate, "rotate"),
            (self.sequential, "sequential"),
            (self.fisher, "fisher"),
            (self.recon, "recon"),
        ];
        names.extend(flags.iter().filter(|f| f.0).map(|f| f.1));
        names.join("+")
    }

    /// Refuses activation methods on a recipe whose activations they cannot touch.
    pub(super) fn check_recipe(&self, recipe: &Recipe) -> Result<()> {
        if self.gptq && matches!(recipe, Recipe::Activations { weight_bits: 6, .. }) {
            invalid!("method gptq: recipe w6a6 stores 6-bit codes with rtn/clip only (no 6-bit GPTQ grid); use --method repq,clip");
        }
        if self.svdquant {
            match recipe {
                Recipe::Activations { weight_bits: 4, .. } => {}
                _ => invalid!("method svdquant: its low-rank branch runs inside the integer W4A8/W4A4 kernel; recipe {} has none (use w4a8 or w4a4)", recipe.name()),
            }
            if let Some(k) = self.act.gelu.filter(|k| *k != Kind::Uniform) {
                invalid!("method svdquant: the integer kernel takes uniform input quantizers, and {k:?} (methods twin/sulq) quantizes fc2's input otherwise; drop it");
            }
        }
        if self.sequential {
            if !self.gptq {
                invalid!("method sequential calibrates GPTQ block after block; add gptq");
            }
            if self.rotate || self.svdquant {
                invalid!("method sequential re-targets each layer's float weight, which rotate and svdquant have already rewritten; drop one");
            }
            if matches!(recipe, Recipe::Mixed { .. }) {
                invalid!("method sequential: recipe {} allocates bits from per-layer sensitivities of the float model; use a fixed recipe", recipe.name());
            }
        }
        if self.fisher {
            if !self.gptq && !matches!(recipe, Recipe::Mixed { .. }) {
                invalid!("method fisher weights the Hessians of GPTQ (and of the mixed recipe's sensitivity); add gptq");
            }
            if self.sequential {
                invalid!("methods fisher and sequential: sequential builds its own Hessians on the quantized model's inputs; drop one");
            }
        }
        if self.recon {
            if self.svdquant {
                invalid!("method recon re-chooses the rounding of whole weights; svdquant's low-rank branch is not in its block model (drop one)");
            }
            if matches!(recipe, Recipe::Activations { weight_bits: 6, .. }) {
                invalid!("method recon moves codes on Q8/Q4/ternary grids; recipe w6a6's 6-bit codes have no such grid (use w4a8, w4a4 or a weight recipe)");
            }
        }
        if self.asymmetric && !self.dynamic {
            invalid!("method asymmetric sets the zero point of a per-token quantizer; add dynamic (w4a8 or w4a4)");
        }
        if self.rotate && !self.dynamic {
            invalid!("method rotate: the Hadamard rotation runs before a per-token quantizer (QuaRot); add dynamic (w4a8 or w4a4)");
        }
        if self.dynamic {
            if !matches!(recipe, Recipe::Activations { weight_bits: 4, .. }) {
                invalid!("method dynamic: per-token activations of the W4A8/W4A4 kernel; recipe {} has none (w8a8 is always per token; use w4a8 or w4a4)", recipe.name());
            }
            if self.act.noisy {
                invalid!("methods dynamic and noisy: NoisyQuant's noise is searched for a static quantizer; drop one");
            }
            if self.svdquant {
                invalid!("methods dynamic and svdquant: the low-rank branch is placed on static-quantizer layers only; drop one");
            }
            if let Some(k) = self.act.gelu.filter(|k| *k != Kind::Uniform) {
                invalid!("method dynamic quantizes fc2's input per token, and {k:?} (methods twin/sulq) quantizes it otherwise; drop it");
            }
        }
        let Some(first) = self.act.names().first().copied() else { return Ok(()) };
        match recipe {
            // SmoothQuant's maps are folded into the float weights, which any kernel runs.
            Recipe::Activations { weight_bits: 8, act_bits: 8, .. } if self.act.names() == ["smoothq"] => Ok(()),
            Recipe::Activations { weight_bits: 8, act_bits: 8, .. } => {
                let other = self.act.names().into_iter().find(|n| *n != "smoothq").unwrap_or(first);
                invalid!("method {other} calibrates static activation quantizers; recipe w8a8 quantizes activations per token at run time (of the activation methods it takes smoothq; use w6a6, w4a8 or w4a4 for the others)")
            }
            Recipe::Activations { .. } => Ok(()),
            _ => invalid!("method {first} quantizes activations; recipe {} keeps f32 activations (use w6a6, w4a8 or w4a4)", recipe.name()),
        }
    }
}
