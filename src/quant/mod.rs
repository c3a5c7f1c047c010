//! Weight formats and their CPU quantize/dequantize. The quantizer methods (GPTQ, RepQ, ...)
//! arrive with the quantizer issue; the formats here are what every kernel reads.

pub mod formats;
pub mod packed;

pub use formats::{PackedMatrix, WeightFormat};
