//! Tokenizers beyond taming and LlamaGen, read from lowbit's `config.json`
//! (`{"architecture": ..., <upstream constructor arguments>}`, as `tools/convert_ckpt.py` and
//! `tools/make_tokenizer_fixtures.py` write it), and the loading of every quantizer:
//!
//! | architecture | network                        | quantizer                                  | tokens        |
//! |--------------|--------------------------------|--------------------------------------------|---------------|
//! | `fqgan`      | LlamaGen + one adapter head per sub-codebook | l2-normalized sub-codebooks, concatenated | [B, S, h, w] |
//! | `simvq`      | MAGVIT2-style (no quant convs) | `embedding_proj(embedding)`                | [B, h, w]     |
//! | `wetok`      | MAGVIT2-style, adaptive norms  | GFQ: sign bits per group, LSB first        | [B, G, h, w]  |
//! | `vqgan_lc`   | taming                         | `codebook_projection(tok_embeddings)`      | [B, h, w]     |
//! | `rvq`        | taming (RQ-VAE)                | D residual stages, summed                  | [B, D, h, w]  |

use serde::Deserialize;

use super::blocks::Flavor;
use super::config::{AdapterConfig, DdConfig, QuantizerKind, VqganConfig};
use super::quantizer::{effective_codebook, Quantizer};
use crate::models::weights::Weights;
use crate::{invalid, Error, Gpu, Result};

/// The architectures this file reads.
pub const ARCHITECTURES: [&str; 5] = ["fqgan", "simvq", "wetok", "vqgan_lc", "rvq"];

/// Whether a `config.json` names one of `ARCHITECTURES`.
pub fn is_tokenizer_json(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Head {
        architecture: Option<String>,
    }
    serde_json::from_str::<Head>(text).ok().and_then(|h| h.architecture).is_some_and(|a| ARCHITECTURES.contains(&a.as_str()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fqgan {
    #[allow(dead_code)]
    architecture: String,
    /// "dual" or "triple" (informational: the heads are `sub_codebooks`).
    variant: String,
    sub_codebooks: Vec<String>,
    codebook_size: usize,
    codebook_embed_dim: usize,
    #[serde(default = "yes")]
    codebook_l2_norm: bool,
    encoder_ch_mult: Vec<usize>,
    decoder_ch_mult: Vec<usize>,
    z_channels: usize,
    ch: usize,
    num_res_blocks: usize,
    image_size: usize,
    adapter: AdapterConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimVq {
    #[allow(dead_code)]
    architecture: String,
    ddconfig: DdConfig,
    n_e: usize,
    e_dim: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeTok {
    #[allow(dead_code)]
    architecture: String,
    ddconfig: DdConfig,
    quantizer: String,
    n_embed: usize,
    embed_dim: usize,
    num_codebooks: usize,
    #[serde(default)]
    token_factorization: bool,
    #[serde(default)]
    factorized_bits: Vec<u32>,
    #[serde(default)]
    gan_decoder: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VqganLc {
    #[allow(dead_code)]
    architecture: String,
    ddconfig: DdConfig,
    embed_dim: usize,
    n_vision_words: usize,
    codebook_dim: usize,
    #[serde(default = "one")]
    use_cblinear: u32,
    #[serde(default = "org")]
    quantizer_type: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rvq {
    #[allow(dead_code)]
    architecture: String,
    #[serde(default)]
    upstream: Option<String>,
    ddconfig: DdConfig,
    embed_dim: usize,
    n_embed: usize,
    #[allow(dead_code)]
    #[serde(default)]
    latent_shape: Option<Vec<usize>>,
    /// [h, w, D]: D is the number of stages.
    code_shape: Vec<usize>,
    #[serde(default)]
    shared_codebook: bool,
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn org() -> String {
    "org".into()
}

fn base(dd: DdConfig, embed_dim: usize, n_embed: usize, flavor: Flavor, quantizer: QuantizerKind) -> VqganConfig {
    VqganConfig { embed_dim, n_embed, ddconfig: dd, codebook_l2_norm: false, flavor, quantizer, adapter: None }
}

/// Parses a `config.json` naming one of `ARCHITECTURES`; `source` names it in errors.
pub fn from_json(text: &str, source: &str) -> Result<VqganConfig> {
    let bad = |e: String| Error::Invalid(format!("config {source}: {e}"));
    let parse_err = |arch: &str, e: serde_json::Error| bad(format!("not a valid `{arch}` tokenizer config: {e}"));
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let arch = value.get("architecture").and_then(|a| a.as_str()).unwrap_or("").to_string();
    let c = match arch.as_str() {
        "fqgan" => {
            let f: Fqgan = serde_json::from_value(value).map_err(|e| parse_err(&arch, e))?;
            if f.encoder_ch_mult != f.decoder_ch_mult {
                return Err(bad(format!("encoder_ch_mult {:?} and decoder_ch_mult {:?} differ; lowbit supports equal ones", f.encoder_ch_mult, f.decoder_ch_mult)));
            }
            if f.sub_codebooks.len() < 2 || f.sub_codebooks.iter().any(|h| !["vis", "sem", "sem_mid", "sem_high"].contains(&h.as_str())) {
                return Err(bad(format!("sub_codebooks {:?} (variant {}): FQGAN's heads are [vis, sem] or [vis, sem_mid, sem_high]", f.sub_codebooks, f.variant)));
            }
            let levels = f.decoder_ch_mult.len();
            if levels == 0 || levels > 16 {
                return Err(bad(format!("decoder_ch_mult {:?} must have 1 to 16 levels", f.decoder_ch_mult)));
            }
            let a = &f.adapter;
            if a.width > 1 << 16 || a.layers > 1024 || a.heads == 0 || !a.width.is_multiple_of(a.heads) || a.grid_size == 0 {
                return Err(bad(format!("adapter width {} with {} heads, {} layers, grid {}: the width must split into the heads (at most 65536 wide, 1024 layers)", a.width, a.heads, a.layers, a.grid_size)));
            }
            let dd = DdConfig::llamagen(f.ch, f.decoder_ch_mult, f.num_res_blocks, f.z_channels, f.image_size);
            let mut c = base(dd, f.codebook_embed_dim, f.codebook_size, Flavor::LlamaGen, QuantizerKind::Factorized { heads: f.sub_codebooks });
            c.codebook_l2_norm = f.codebook_l2_norm;
            let top = c.ddconfig.ch.checked_mul(c.ddconfig.ch_mult[levels - 1]);
            if top != Some(f.adapter.width) {
                return Err(bad(format!("adapter width {} must equal the trunk's channels ch·ch_mult[-1] ({} · {})", f.adapter.width, c.ddconfig.ch, c.ddconfig.ch_mult[levels - 1])));
            }
            c.adapter = Some(f.adapter);
            c
        }
        "simvq" => {
            let f: SimVq = serde_json::from_value(value).map_err(|e| parse_err(&arch, e))?;
            if f.e_dim != f.ddconfig.z_channels {
                return Err(bad(format!("e_dim {} must equal z_channels {} (SimVQ has no quant_conv)", f.e_dim, f.ddconfig.z_channels)));
            }
            let q = QuantizerKind::Projected { codes: "quantize.embedding.weight".into(), projection: Some("quantize.embedding_proj".into()), code_dim: f.e_dim };
            base(f.ddconfig, f.e_dim, f.n_e, Flavor::Magvit, q)
        }
        "wetok" => {
            let f: WeTok = serde_json::from_value(value).map_err(|e| parse_err(&arch, e))?;
            if f.quantizer != "GFQ" || f.gan_decoder {
                return Err(bad(format!("quantizer `{}`{}: lowbit reads WeTok's GFQ with its plain decoder", f.quantizer, if f.gan_decoder { " with gan_decoder" } else { "" })));
            }
            let g = f.num_codebooks;
            if g == 0 || !f.n_embed.is_power_of_two() || f.embed_dim != f.ddconfig.z_channels {
                return Err(bad(format!("num_codebooks {g}, n_embed {} (a power of two) and embed_dim {} (= z_channels {}) do not fit together", f.n_embed, f.embed_dim, f.ddconfig.z_channels)));
            }
            let bits = f.n_embed.trailing_zeros();
            if g.checked_mul(bits as usize) != Some(f.embed_dim) || (f.token_factorization && f.factorized_bits.iter().any(|&b| b != bits)) {
                return Err(bad(format!("{g} groups of {bits} bits (n_embed {}) must cover embed_dim {}; factorized_bits {:?} must all be {bits}", f.n_embed, f.embed_dim, f.factorized_bits)));
            }
            base(f.ddconfig, f.embed_dim, f.n_embed, Flavor::WeTok, QuantizerKind::LookupFree { groups: g, bits })
        }
        "vqgan_lc" => {
            let f: VqganLc = serde_json::from_value(value).map_err(|e| parse_err(&arch, e))?;
            // 768-wide latents are l2-normalized before the search upstream (CLIP features);
            // other use_cblinear values are an MLP projection.
            if f.embed_dim == 768 || f.use_cblinear > 1 || f.quantizer_type != "org" {
                return Err(bad(format!("embed_dim {}, use_cblinear {}, quantizer_type `{}`: lowbit reads the `org` quantizer with a linear (or no) projection and embed_dim ≠ 768", f.embed_dim, f.use_cblinear, f.quantizer_type)));
            }
            let projection = (f.use_cblinear == 1).then(|| "codebook_projection".to_string());
            let code_dim = if projection.is_some() { f.codebook_dim } else { f.embed_dim };
            base(f.ddconfig, f.embed_dim, f.n_vision_words, Flavor::Taming, QuantizerKind::Projected { codes: "tok_embeddings.weight".into(), projection, code_dim })
        }
        "rvq" => {
            let f: Rvq = serde_json::from_value(value).map_err(|e| parse_err(&arch, e))?;
            if f.upstream.as_deref().is_some_and(|u| u != "rq-vae") {
                return Err(bad(format!("upstream `{}`: lowbit reads RQ-VAE's residual quantizer (rq-vae)", f.upstream.unwrap_or_default())));
            }
            let &[_, _, depth] = &f.code_shape[..] else { return Err(bad(format!("code_shape {:?} must be [h, w, depth]", f.code_shape))) };
            if depth == 0 || (f.shared_codebook && depth > 64) {
                return Err(bad(format!("code_shape depth {depth}")));
            }
            base(f.ddconfig, f.embed_dim, f.n_embed, Flavor::Taming, QuantizerKind::Residual { depth })
        }
        other => return Err(bad(format!("unknown tokenizer architecture `{other}` ({})", ARCHITECTURES.join(", ")))),
    };
    c.validate().map_err(bad)?;
    Ok(c)
}

/// The quantizer of `config`, from checkpoint `w` (effective codebooks computed here, once).
pub fn load_quantizer(gpu: &Gpu, c: &VqganConfig, w: &Weights) -> Result<Quantizer> {
    let (k, d) = (c.n_embed, c.embed_dim);
    match &c.quantizer {
        QuantizerKind::Codebook => Quantizer::vq(gpu, w.get("quantize.embedding.weight", &[k, d])?, k, d, c.metric()),
        QuantizerKind::Factorized { heads } => {
            let mut codes = Vec::with_capacity(heads.len() * k * d);
            for h in heads {
                codes.extend_from_slice(w.get(&format!("quantize_{h}.embedding.weight"), &[k, d])?);
            }
            Quantizer::factorized(gpu, &codes, heads.len(), k, d, c.metric())
        }
        QuantizerKind::Projected { codes, projection, code_dim } => {
            let raw = w.get(codes, &[k, *code_dim])?;
            let book = match projection {
                Some(p) => {
                    let weight = w.get(&format!("{p}.weight"), &[d, *code_dim])?;
                    let bias = w.get(&format!("{p}.bias"), &[d])?;
                    effective_codebook(raw, k, *code_dim, weight, d, Some(bias))?
                }
                None => raw.to_vec(),
            };
            Quantizer::vq(gpu, &book, k, d, c.metric())
        }
        QuantizerKind::Residual { depth } => {
            let mut stages = Vec::with_capacity(*depth);
            for i in 0..*depth {
                // RQ-VAE's codebooks carry one padding row past n_embed that the search skips.
                let key = format!("quantizer.codebooks.{i}.weight");
                let all = w.get(&key, &[k + 1, d])?;
                stages.push(all[..k * d].to_vec());
            }
            let extra = format!("quantizer.codebooks.{depth}.weight");
            if w.contains(&extra) {
                invalid!("checkpoint {} has {extra}: more stages than the config's code_shape depth {depth}", w.source);
            }
            Quantizer::residual(gpu, &stages, k, d)
        }
        QuantizerKind::LookupFree { groups, bits } => Quantizer::lookup_free(gpu, *groups, *bits, 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_architecture_and_names_bad_fields() {
        let dd = r#""ddconfig": {"double_z": false, "z_channels": 16, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.0}"#;
        let rvq = format!(r#"{{"architecture": "rvq", {dd}, "embed_dim": 8, "n_embed": 64, "code_shape": [8, 8, 4]}}"#);
        let c = from_json(&rvq, "t").unwrap();
        assert_eq!(c.quantizer, QuantizerKind::Residual { depth: 4 });
        let lc = format!(r#"{{"architecture": "vqgan_lc", {dd}, "embed_dim": 8, "n_vision_words": 100000, "codebook_dim": 12}}"#);
        assert!(matches!(from_json(&lc, "t").unwrap().quantizer, QuantizerKind::Projected { code_dim: 12, .. }));
        let err = from_json(&rvq.replace("code_shape", "code_shap"), "t").unwrap_err().to_string();
        assert!(err.contains("code_shap"), "{err}");
        let err = from_json(r#"{"architecture": "magvit3"}"#, "t").unwrap_err().to_string();
        assert!(err.contains("magvit3"), "{err}");
        assert!(is_tokenizer_json(&rvq) && !is_tokenizer_json(r#"{"architecture": "VQ-16"}"#));
    }
}
