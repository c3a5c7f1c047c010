//! Config against checkpoint, before anything is uploaded: timm loads checkpoints strictly, so
//! a tensor the configuration has no place for (a qkv bias with `qkv_bias: false`, LayerScale
//! gammas without `init_values`) is an error naming both, as is a missing one; and the
//! position embedding is resampled to the input grid as timm resamples it.

use super::config::VitConfig;
use super::resample::resample_pos_embed;
use crate::models::weights::Weights;
use crate::{invalid, Result};

/// The checkpoint must have exactly `depth` blocks; checked first so an absurd depth fails
/// without allocating anything for it.
pub(super) fn block_count(c: &VitConfig, w: &Weights) -> Result<()> {
    let has = |i: usize| w.contains(&format!("blocks.{i}.norm1.weight"));
    if !has(c.depth - 1) || has(c.depth) {
        let found = (0..=w.tensors.len()).find(|&i| !has(i)).unwrap_or(0);
        invalid!("architecture `{}` has depth {}, but checkpoint {} has {found} blocks (blocks.N.norm1.weight)", c.architecture, c.depth, w.source);
    }
    Ok(())
}

/// Tensors the checkpoint has that this configuration would leave unused.
pub(super) fn unexpected_keys(c: &VitConfig, w: &Weights) -> Result<()> {
    let arch = &c.architecture;
    let mut unexpected: Vec<(String, &str)> = vec![];
    let mut check = |key: String, present_without: bool, why: &'static str| {
        if present_without && w.contains(&key) {
            unexpected.push((key, why));
        }
    };
    check("cls_token".into(), !c.class_token, "class_token is false");
    check("dist_token".into(), !c.distilled, "the architecture has no distillation token");
    check("head_dist.weight".into(), !c.distilled || c.num_classes == 0, "the architecture has no distillation head (or num_classes is 0)");
    check("reg_token".into(), c.reg_tokens == 0, "reg_tokens is 0");
    check("norm_pre.weight".into(), !c.pre_norm, "pre_norm is false");
    check("patch_embed.proj.bias".into(), c.pre_norm, "pre_norm is set (timm's patch embedding then has no bias)");
    check("norm.weight".into(), !c.final_norm, "the final norm is fc_norm or final_norm is false");
    check("fc_norm.weight".into(), !c.fc_norm, "fc_norm is off (global_pool / fc_norm / final_norm)");
    check("head.weight".into(), c.num_classes == 0, "num_classes is 0");
    for i in 0..c.depth {
        let b = |k: &str| format!("blocks.{i}.{k}");
        check(b("attn.qkv.bias"), !c.qkv_bias, "qkv_bias is false");
        for k in ["attn.proj.bias", "mlp.fc1.bias", "mlp.fc2.bias"] {
            check(b(k), !c.proj_bias, "proj_bias is false");
        }
        for k in ["ls1.gamma", "ls2.gamma"] {
            check(b(k), c.init_values.is_none(), "init_values is not set (no LayerScale)");
        }
        for k in ["attn.q_norm.weight", "attn.k_norm.weight"] {
            check(b(k), !c.qk_norm, "qk_norm is false");
        }
    }
    if let Some((key, why)) = unexpected.first() {
        let more = if unexpected.len() > 1 { format!(" (and {} more)", unexpected.len() - 1) } else { String::new() };
        invalid!("checkpoint {} has `{key}`{more}, but the config of `{arch}` says {why}", w.source);
    }
    Ok(())
}

/// The class, distillation and register tokens, in that order ([prefix tokens, D]).
pub(super) fn prefix_tokens(c: &VitConfig, w: &Weights) -> Result<Vec<f32>> {
    let d = c.embed_dim;
    let mut prefix = Vec::new();
    if c.class_token {
        prefix.extend_from_slice(w.get("cls_token", &[1, 1, d])?);
    }
    if c.distilled {
        prefix.extend_from_slice(w.get("dist_token", &[1, 1, d])?);
    }
    if c.reg_tokens > 0 {
        prefix.extend_from_slice(w.get("reg_token", &[1, c.reg_tokens, d])?);
    }
    Ok(prefix)
}

/// The position embedding [prefix + grid², D] for the input's grid: the checkpoint's grid is
/// resampled to the model's (`checkpoint_filter_fn`), then, for `dynamic_img_size`, to the
/// input's (`_pos_embed`); prefix rows are kept, or zero with `no_embed_class`.
pub(super) fn pos_embed(c: &VitConfig, w: &Weights) -> Result<Vec<f32>> {
    let (d, k) = (c.embed_dim, c.prefix_tokens());
    let stored = if c.no_embed_class { 0 } else { k };
    let Some(t) = w.tensors.get("pos_embed") else { invalid!("checkpoint {}: missing tensor pos_embed", w.source) };
    let rows = match t.shape[..] {
        [1, rows, dd] if dd == d => rows,
        _ => invalid!("checkpoint {}: pos_embed has shape {:?}, expected [1, {stored} + grid², {d}]", w.source, t.shape),
    };
    let old = (rows.saturating_sub(stored) as f64).sqrt().round() as usize;
    if rows < stored || old * old != rows - stored || old == 0 {
        invalid!("checkpoint {}: pos_embed has {rows} rows, which is not {stored} prefix rows plus a square grid: cannot resample it", w.source);
    }
    let (model, input) = (c.model_img_size / c.patch_size, c.grid());
    let mut pos = resample_pos_embed(&t.data, stored, old, model, d);
    if c.dynamic_img_size {
        pos = resample_pos_embed(&pos, stored, model, input, d);
    } else if model != input {
        invalid!("architecture `{}`: input grid {input} differs from the model's {model} without dynamic_img_size", c.architecture);
    }
    if stored == k {
        return Ok(pos);
    }
    let mut full = vec![0f32; k * d];
    full.extend(pos);
    Ok(full)
}
