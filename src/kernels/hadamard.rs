//! Online Hadamard rotation of a Linear's input (QuaRot, Ashkboos et al. 2024): each row of
//! x [rows, K] is multiplied by the normalized block-diagonal Walsh–Hadamard matrix H (blocks
//! of `block_for(K)`, a power of two), which is symmetric and orthogonal, so a Linear whose
//! weight was stored as W·H computes (W·H)(H·x) = W·x. An outlier channel of x is spread over
//! its whole block, so a per-token quantizer's absmax shrinks towards the row's typical size.
//! Used by `lowbit quantize --method rotate,dynamic` (W4A8/W4A4 with per-token activations).

use super::params;
use crate::gpu::{DType, Shader, Tensor};
use crate::{invalid, shader, shape_err, Encoder, Gpu, Result};

const SHADER: Shader = shader!("hadamard");
const WG: u32 = 64;

/// The largest block: its butterflies run in one invocation (block · log2(block) adds), and
/// 1024 covers ViT-B/L's 3072/4096-wide fc2 inputs in three or four blocks.
pub const MAX_BLOCK: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    block: u32,
    _pad: u32,
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(Params, ["hadamard"], [], "Params", [rows, cols, block]);

/// The rotation block for inputs of width `cols`: the largest power of two dividing it, at
/// most `MAX_BLOCK` (ViT-S 384 → 128, ViT-B 768 → 256, 3072 → 1024; odd widths get 1, i.e.
/// no rotation).
pub fn block_for(cols: usize) -> usize {
    if cols == 0 {
        return 1;
    }
    (1usize << cols.trailing_zeros()).min(MAX_BLOCK)
}

fn check(cols: usize, block: usize) -> Result<()> {
    if block == 0 || !block.is_power_of_two() || block > MAX_BLOCK || cols == 0 || !cols.is_multiple_of(block) {
        invalid!("Hadamard rotation: block {block} must be a power of two up to {MAX_BLOCK} dividing the width {cols}");
    }
    Ok(())
}

/// Rotates every `block` of `v` in place (f32 or f64), in the shader's order.
pub fn rotate_in_place<T>(v: &mut [T], block: usize, norm: T)
where
    T: Copy + std::ops::Add<Output = T> + std::ops::Sub<Output = T> + std::ops::Mul<Output = T>,
{
    for b in v.chunks_exact_mut(block) {
        let mut h = 1;
        while h < block {
            for i in (0..block).step_by(2 * h) {
                for j in i..i + h {
                    let (a, c) = (b[j], b[j + h]);
                    b[j] = a + c;
                    b[j + h] = a - c;
                }
            }
            h *= 2;
        }
        b.iter_mut().for_each(|x| *x = *x * norm);
    }
}

/// CPU reference: x [rows, cols] with every row rotated (also W·H for a weight [out, cols]:
/// H is symmetric, so each weight row is rotated the same way).
pub fn reference(x: &[f32], cols: usize, block: usize) -> Result<Vec<f32>> {
    check(cols, block)?;
    if !x.len().is_multiple_of(cols) {
        shape_err!("Hadamard rotation: {} values are not rows of {cols}", x.len());
    }
    let mut y = x.to_vec();
    rotate_in_place(&mut y, block, 1.0 / (block as f32).sqrt());
    Ok(y)
}

/// `out` = `x` [.., cols] with every row rotated, on the GPU.
pub fn rotate(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, out: &Tensor, block: usize) -> Result<()> {
    x.expect_dtype("hadamard input", DType::F32)?;
    out.expect_dtype("hadamard output", DType::F32)?;
    let cols = *x.shape.last().unwrap_or(&0);
    check(cols, block)?;
    if out.numel() != x.numel() {
        shape_err!("Hadamard rotation: output has {} values, input {}", out.numel(), x.numel());
    }
    let rows = x.numel() / cols;
    let p = Params { rows: rows as u32, cols: cols as u32, block: block as u32, _pad: 0 };
    let items = (rows * (cols / block)) as u32;
    let pipe = gpu.pipeline(&SHADER, "rotate", &[], &[("WG", WG as f64)])?;
    gpu.dispatch(enc, &pipe, params(&p), &[&*x.buffer, &*out.buffer], gpu.grid(items.div_ceil(WG)))
}
