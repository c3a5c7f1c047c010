//! Weight formats and their CPU quantize/dequantize, and the post-training quantizer behind
//! `lowbit quantize`: round-to-nearest (`rtn`), the clipping search (`clip`), GPTQ (`gptq`),
//! mixed precision (`mixed`), calibration (`calibrate`) and the recipes tying them together
//! (`recipe`). `docs/QUANTIZATION.md` describes each method and what it measured.

pub mod calibrate;
pub mod clip;
pub mod formats;
pub mod gptq;
pub mod mixed;
pub mod packed;
pub mod recipe;
pub mod rtn;

pub use formats::{PackedMatrix, WeightFormat};
