//! Weight formats and their CPU quantize/dequantize, and the post-training quantizer behind
//! `lowbit quantize`: round-to-nearest (`rtn`), the clipping search (`clip`), GPTQ (`gptq`),
//! mixed precision (`mixed`), calibration (`calibrate`) and the recipes tying them together
//! (`recipe`). The static activation recipes (W6A6/W4A8/W4A4) add the quantizer list and its
//! fits (`actq`), their calibration (`act_calib`) and the activation methods: RepQ-ViT
//! (`repq`), SmoothQuant with bias (`smooth`), NoisyQuant (`noisy`). `docs/QUANTIZATION.md`
//! describes each method and what it measured.

pub mod act_calib;
pub mod actq;
pub mod calibrate;
pub mod clip;
pub mod formats;
pub mod gptq;
pub mod mixed;
pub mod noisy;
pub mod packed;
pub mod recipe;
pub mod repq;
pub mod rtn;
pub mod smooth;
pub mod wgsl;

pub use formats::{PackedMatrix, WeightFormat};
