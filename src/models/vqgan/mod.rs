//! taming-transformers' VQGAN (`taming.models.vqgan.VQModel`): the decoder (tokens → image),
//! the encoder (image → tokens) and the blocks they share, built from taming's checkpoints
//! and YAML configs with its key names — or from LlamaGen's VQ tokenizers, the same network
//! under other key names with an l2-normalized codebook (`Flavor`).

mod blocks;
mod config;
mod decoder;
mod encoder;
pub mod glue;
mod tokens;

pub use blocks::Flavor;
pub use config::{DdConfig, VqganConfig};
pub use decoder::VqganDecoder;
pub use encoder::VqganEncoder;
pub use tokens::TokenGrid;
