//! The post-training quantizer behind `lowbit quantize` (the weight formats themselves are
//! `crate::formats`): round-to-nearest (`rtn`), the clipping search (`clip`), GPTQ (`gptq`),
//! mixed precision (`mixed`), calibration (`calibrate`), the `--method` list and its rules
//! (`methods`) and the recipes tying them together (`recipe`). The static activation recipes
//! (W6A6/W4A8/W4A4) add the quantizer list and its fits (`actq`), their calibration
//! (`act_calib`) and the activation methods: RepQ-ViT (`repq`), SmoothQuant with bias
//! (`smooth`), NoisyQuant (`noisy`), AdaLog's post-GELU shift (`gelu_shift`), and SVDQuant's
//! low-rank branch for the W4 ones (`svd`). GPTQ block after block (`sequential`), and block
//! reconstruction of the rounding (`recon`). Their dot products are `dot`'s. `docs/QUANTIZATION.md` describes each method and
//! what it measured.

pub mod act_calib;
pub mod actq;
pub mod calibrate;
pub mod clip;
mod dot;
pub mod gelu_shift;
pub mod gptq;
pub mod hessians;
pub mod methods;
pub mod mixed;
pub mod noisy;
pub mod recipe;
pub mod recon;
pub mod repq;
pub mod rotate;
pub mod rtn;
pub mod sequential;
pub mod smooth;
pub mod svd;

