//! taming-transformers' VQGAN (`taming.models.vqgan.VQModel`): the decoder (tokens → image),
//! the encoder (image → tokens) and the blocks they share, built from taming's checkpoints
//! and YAML configs with its key names — or from LlamaGen's VQ tokenizers, the same network
//! under other key names with an l2-normalized codebook (`Flavor`); and the tokenizers of
//! `tokenizers.rs` (FQGAN, SimVQ, WeTok, VQGAN-LC, RQ-VAE) through one `Quantizer`.

mod adapter;
mod blocks;
mod config;
mod decoder;
mod encoder;
pub mod glue;
pub mod quantizer;
mod tokenizers;
mod tokens;

pub use blocks::Flavor;
pub use config::{AdapterConfig, DdConfig, QuantizerKind, VqganConfig};
pub use tokenizers::ARCHITECTURES as TOKENIZER_ARCHITECTURES;
pub use decoder::VqganDecoder;
pub use encoder::VqganEncoder;
pub use tokens::TokenGrid;
