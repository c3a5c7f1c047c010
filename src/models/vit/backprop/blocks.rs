//! One block at a time (what `--method recon` optimizes): a block with other Linear weights,
//! the gradients of those weights, and what the quantized model does to each Linear's input.

use std::collections::HashMap;

use super::layers::activate;
use super::{Block, BlockCache, CpuVit, Rule, BLOCK_LINEARS};
use crate::kernels::act_quant::ActQuantizer;
use crate::kernels::hadamard;
use crate::kernels::w4a8::{reference as w4a8_reference, ActInput};
use crate::{shape_err, Result};

/// What the quantized model does to a block Linear's input before multiplying (for
/// `--method recon`): QuaRot's block-Hadamard rotation (the stored weight is then W·H) and the
/// W4A8/W4A4 kernel's per-token quantizer, passed straight through by the backward pass
/// (straight-through estimator). The default is the identity.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct InputMap {
    /// The rotation's block size.
    pub hadamard: Option<usize>,
    pub quant: Option<ActInput>,
    /// QDrop (Wei et al. 2022): while reconstructing, each quantized value is replaced by its
    /// float value with probability `keep_float`, a fresh draw per `seed`.
    pub qdrop: Option<QDrop>,
}

/// The per-element draw of `InputMap::qdrop`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QDrop {
    pub keep_float: f32,
    pub seed: u64,
}

/// SplitMix64's finalizer as a uniform draw in [0, 1) per (seed, index).
fn draw(seed: u64, i: u64) -> f32 {
    let mut z = seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

impl InputMap {
    pub(super) fn is_identity(&self) -> bool {
        self.hadamard.is_none() && self.quant.is_none()
    }

    /// x [rows, cols] as the Linear multiplies it.
    pub(super) fn forward(&self, x: &[f32], cols: usize) -> Result<Vec<f32>> {
        let mut y = match self.hadamard {
            Some(block) => hadamard::reference(x, cols, block)?,
            None => x.to_vec(),
        };
        if let Some(act) = self.quant {
            let rows = y.len() / cols;
            let (codes, scales) = w4a8_reference::quantize(&y, rows, cols, act, None)?;
            for (r, row) in y.chunks_mut(cols).enumerate() {
                let [scale, dz] = scales[r];
                for (j, (v, &c)) in row.iter_mut().zip(&codes[r * cols..]).enumerate() {
                    let keep = self.qdrop.is_some_and(|d| draw(d.seed, (r * cols + j) as u64) < d.keep_float);
                    if !keep {
                        *v = (c as f32 + dz) * scale;
                    }
                }
            }
        }
        Ok(y)
    }

    /// The gradient at x from the gradient at the mapped input: Hᵀ = H undoes the rotation,
    /// the quantizer passes it unchanged.
    pub(super) fn backward(&self, dy: Vec<f32>, cols: usize) -> Vec<f32> {
        match self.hadamard {
            Some(block) => hadamard::reference(&dy, cols, block).expect("checked by the forward pass"),
            None => dy,
        }
    }
}

impl<'a> CpuVit<'a> {
    /// This model with `maps` on the inputs of the named Linears (graph nodes such as
    /// `blocks.3.mlp.fc1`); a name that is no block Linear is an error.
    pub fn with_input_maps(mut self, maps: &HashMap<String, InputMap>) -> Result<Self> {
        for (node, map) in maps {
            let found = (0..self.blocks.len()).find_map(|i| BLOCK_LINEARS.iter().position(|l| *node == format!("blocks.{i}.{l}")).map(|at| (i, at)));
            let Some((i, at)) = found else { shape_err!("input map for {node}: not a block Linear of this ViT") };
            if let Some(block) = map.hadamard {
                let cols = [self.blocks[i].qkv.inp, self.blocks[i].proj.inp, self.blocks[i].fc1.inp, self.blocks[i].fc2.inp][at];
                if block == 0 || !cols.is_multiple_of(block) {
                    shape_err!("input map for {node}: a rotation block of {block} does not divide its {cols} inputs");
                }
            }
            self.blocks[i].maps[at] = *map;
        }
        Ok(self)
    }

    /// This model with the post-softmax quantizers of a quantized one, by attention node
    /// (`blocks.3.attn`); a name that is no block's attention is an error.
    pub fn with_attention_quantizers(mut self, quantizers: &HashMap<String, ActQuantizer>) -> Result<Self> {
        for (node, q) in quantizers {
            let Some(i) = (0..self.blocks.len()).find(|i| *node == format!("blocks.{i}.attn")) else { shape_err!("attention quantizer for {node}: not a block's attention in this ViT") };
            self.blocks[i].softmax_quant = Some(*q);
        }
        Ok(self)
    }

    /// This model with `weight` (the checkpoint's [D, 3, p, p] shape) as its patch embedding's:
    /// the tokens a quantized patch embedding gives the first block.
    pub fn with_patch_weight(mut self, weight: &'a [f32]) -> Result<Self> {
        if weight.len() != self.patch.w.len() {
            shape_err!("patch embedding: {} weights, not {}", weight.len(), self.patch.w.len());
        }
        self.patch.w = weight;
        Ok(self)
    }

    /// QDrop on every quantized Linear input from now on (`None`: off), with a fresh draw
    /// per `seed`.
    pub fn set_qdrop(&mut self, keep_float: Option<f32>, seed: u64) {
        for (i, b) in self.blocks.iter_mut().enumerate() {
            for (at, m) in b.maps.iter_mut().enumerate() {
                m.qdrop = keep_float.filter(|_| m.quant.is_some()).map(|keep_float| QDrop { keep_float, seed: seed ^ ((i * 4 + at) as u64) << 48 });
            }
        }
    }

    /// How many blocks the model has.
    pub fn depth(&self) -> usize {
        self.blocks.len()
    }

    /// Block `i` with its Linears' weights replaced by `linears` (`BLOCK_LINEARS` order, each
    /// the checkpoint's shape), everything else the checkpoint's.
    fn block_with<'b>(&'b self, i: usize, linears: [&'b [f32]; 4]) -> Result<Block<'b>> {
        let mut b = self.blocks[i];
        for (dense, w) in [&mut b.qkv, &mut b.proj, &mut b.fc1, &mut b.fc2].into_iter().zip(linears) {
            if w.len() != dense.w.len() {
                shape_err!("block {i}: a Linear of {}×{} takes {} weights, not {}", dense.out, dense.inp, dense.w.len(), w.len());
            }
            dense.w = w;
        }
        Ok(b)
    }

    /// Block `i` on the residual rows `x` ([n·T, D], whole images) with the Linear weights
    /// `linears` (`BLOCK_LINEARS` order): its output rows and what `block_weight_grads` needs.
    pub fn run_block(&self, i: usize, linears: [&[f32]; 4], x: &[f32]) -> Result<(Vec<f32>, BlockCache)> {
        let per_image = self.c.tokens() * self.c.embed_dim;
        if x.is_empty() || !x.len().is_multiple_of(per_image) {
            shape_err!("block {i}: {} values are not whole images of {} tokens × {}", x.len(), self.c.tokens(), self.c.embed_dim);
        }
        let b = self.block_with(i, linears)?;
        let mut y = x.to_vec();
        let cache = self.block_forward(&b, &mut y, x.len() / per_image)?;
        Ok((y, cache))
    }

    /// The gradients of ⟨dy, block output⟩ with respect to block `i`'s Linear weights
    /// (`BLOCK_LINEARS` order), for the `run_block` that made `cache` with the same `linears`.
    pub fn block_weight_grads(&self, i: usize, linears: [&[f32]; 4], cache: &BlockCache, dy: &[f32]) -> Result<[Vec<f32>; 4]> {
        let b = self.block_with(i, linears)?;
        if dy.len() != cache.proj.len() {
            shape_err!("block {i}: a gradient of {} values for an output of {}", dy.len(), cache.proj.len());
        }
        let n = dy.len() / (self.c.tokens() * self.c.embed_dim);
        let act: Vec<f32> = activate(self.c.act, &cache.pre_act);
        let (h1, h2) = (b.norm1.output(&cache.ln1), b.norm2.output(&cache.ln2));
        let mut grads: [Vec<f32>; 4] = Default::default();
        let mut dx = dy.to_vec();
        self.block_backward(&b, cache, &mut dx, n, Rule::Gradient, &mut |name, grad, _, _| {
            let at = BLOCK_LINEARS.iter().position(|l| *l == name).expect("block_backward names BLOCK_LINEARS");
            let (dense, input) = [(&b.qkv, &h1), (&b.proj, &cache.heads), (&b.fc1, &h2), (&b.fc2, &act)][at];
            grads[at] = dense.weight_grad(cache.mapped[at].as_deref().unwrap_or(input), grad);
        });
        Ok(grads)
    }
}
