//! Token ids → vectors: embedding gather from a codebook, and LFQ bit decoding. Ids produced on
//! the GPU are range-checked there: out-of-range ids give zero rows and leave their first
//! position in a small flag buffer, which `IdCheck::check` reads back after the submission.

use super::reference::{bad_id, check_ids, TokenId};
use super::{Codebook, FactorizedCodebook, SHADER, WG};
use crate::gpu::{DType, Tensor};
use crate::kernels::params;
use crate::{invalid, shape_err, Encoder, Gpu, Result};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct LookupParams {
    count: u32,
    d: u32,
    d4: u32,
    k: u32,
    start: u32,
    len: u32,
    id_stride: u32,
    id_offset: u32,
    out_stride: u32,
    out_offset: u32,
    check: u32,
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const LOOKUP_PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(LookupParams, ["vq"], ["GATHER"], "LookupParams", [count, d, d4, k, start, len, id_stride, id_offset, out_stride, out_offset, check]);

/// The GPU-side range check of one lookup: read it with `check` (or `check_gather`) after the
/// encoder that holds the lookup has been submitted.
#[must_use = "out-of-range ids are only reported by IdCheck::check"]
pub struct IdCheck {
    first_bad: wgpu::Buffer,
    ids: Tensor,
    /// Codebook size per id column (ids of shape [.., S] use column t % S).
    sizes: Vec<usize>,
}

const NONE_BAD: u32 = u32::MAX;

impl IdCheck {
    fn new(gpu: &Gpu, ids: &Tensor, sizes: Vec<usize>) -> Result<Self> {
        Ok(IdCheck { first_bad: gpu.upload_u32(&[NONE_BAD], "vq first bad id")?, ids: ids.clone(), sizes })
    }

    /// Errors with the first out-of-range id and its position (blocks on a small readback).
    pub fn check(&self, gpu: &Gpu) -> Result<()> {
        Gpu::block_on(self.check_async(gpu))
    }

    /// `check` without blocking (the browser's way).
    pub async fn check_async(&self, gpu: &Gpu) -> Result<()> {
        let pos = bytemuck::cast_slice::<u8, u32>(&gpu.read_bytes_async(&self.first_bad, 4).await?)[0];
        if pos == NONE_BAD {
            return Ok(());
        }
        let pos = pos as usize;
        let raw = self.ids.to_vec_u32_async(gpu).await?[pos];
        let k = self.sizes[pos % self.sizes.len()];
        Err(match self.ids.dtype {
            DType::I32 => bad_id(raw as i32, pos, k),
            _ => bad_id(raw, pos, k),
        })
    }
}

/// Reads back a lookup's range check: `Err(Invalid("token id 70000 at position 12 is outside
/// the codebook of 16384 entries"))` if any id was out of range.
pub fn check_gather(gpu: &Gpu, check: &IdCheck) -> Result<()> {
    check.check(gpu)
}

fn expect_ids(what: &str, ids: &Tensor) -> Result<()> {
    if ids.dtype == DType::F32 {
        invalid!("{what}: token ids must be a u32 or i32 tensor, got f32");
    }
    Ok(())
}

/// `ids.shape` with its last dimension replaced by `last`.
fn with_last(shape: &[usize], last: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    *s.last_mut().unwrap() = last;
    s
}

/// Records one sub-codebook's lookup: ids at `t * id_stride + id_offset`, rows written at
/// `t * out_stride + out_offset`.
fn record_gather(gpu: &Gpu, enc: &mut Encoder, book: &Codebook, ids: &Tensor, out: &Tensor, flag: &wgpu::Buffer, layout: [usize; 5]) -> Result<()> {
    let [count, id_stride, id_offset, out_stride, out_offset] = layout.map(|v| v as u32);
    let pipe = gpu.pipeline(&SHADER, "gather", &book.defines("GATHER"), &[("WG", WG as f64)])?;
    let groups = gpu.grid((count as usize * book.d).div_ceil(WG as usize) as u32);
    for chunk in &book.chunks {
        let p = LookupParams {
            count,
            d: book.d as u32,
            d4: book.d4() as u32,
            k: book.k as u32,
            start: chunk.start as u32,
            len: chunk.len as u32,
            id_stride,
            id_offset,
            out_stride,
            out_offset,
            check: (chunk.start == 0) as u32,
        };
        gpu.dispatch(enc, &pipe, params(&p), &[&ids.buffer, &chunk.codes, &out.buffer, flag], groups)?;
    }
    Ok(())
}

impl Codebook {
    /// Records `out[t] = codebook[ids[t]]` for ids of any shape (u32 or i32); `out` has the ids'
    /// shape plus a last dimension D. Cosine codebooks return their normalized rows.
    pub fn gather(&self, gpu: &Gpu, enc: &mut Encoder, ids: &Tensor, out: &Tensor) -> Result<IdCheck> {
        expect_ids("gather", ids)?;
        out.expect_dtype("gather output", DType::F32)?;
        let mut want = ids.shape.clone();
        want.push(self.d);
        out.expect_shape("gather output", &want)?;
        let check = IdCheck::new(gpu, ids, vec![self.k])?;
        let n = ids.numel();
        record_gather(gpu, enc, self, ids, out, &check.first_bad, [n, 1, 0, self.d, 0])?;
        Ok(check)
    }

    /// Gather of ids already range-checked on the CPU (a planned graph's input filled from a
    /// checked `TokenGrid`). `flag` is a one-word buffer the kernel may write and nobody reads:
    /// keeping it across runs keeps the dispatch's bind group reusable.
    pub fn gather_checked(&self, gpu: &Gpu, enc: &mut Encoder, ids: &Tensor, out: &Tensor, flag: &wgpu::Buffer) -> Result<()> {
        expect_ids("gather", ids)?;
        out.expect_dtype("gather output", DType::F32)?;
        out.expect_shape("gather output", &[&ids.shape[..], &[self.d]].concat())?;
        record_gather(gpu, enc, self, ids, out, flag, [ids.numel(), 1, 0, self.d, 0])
    }

    /// `gather_checked` of column `column` of ids [.., S] into `out` [.., D]: one stage of a
    /// residual quantizer, whose stages share one id tensor.
    pub fn gather_column_checked(&self, gpu: &Gpu, enc: &mut Encoder, ids: &Tensor, column: usize, out: &Tensor, flag: &wgpu::Buffer) -> Result<()> {
        expect_ids("gather", ids)?;
        out.expect_dtype("gather output", DType::F32)?;
        let Some(&s) = ids.shape.last().filter(|&&s| column < s) else {
            shape_err!("gather: column {column} of ids {:?}", ids.shape);
        };
        out.expect_shape("gather output", &with_last(&ids.shape, self.d))?;
        record_gather(gpu, enc, self, ids, out, flag, [ids.numel() / s, s, column, self.d, 0])
    }

    /// Gather for ids the caller holds on the CPU: checked here before anything is recorded.
    pub fn gather_host<T: TokenId>(&self, gpu: &Gpu, enc: &mut Encoder, ids: &[T], out: &Tensor) -> Result<()> {
        check_ids(ids, self.k)?;
        let rows: Vec<u32> = ids.iter().map(|&id| id.row().unwrap() as u32).collect();
        // The ids take the output's shape without its last (D) dimension.
        let shape = match out.shape.split_last() {
            Some((_, lead)) if !lead.is_empty() => lead.to_vec(),
            _ => vec![rows.len()],
        };
        let t = Tensor::from_u32(gpu, &shape, &rows)?;
        // Checked above, so the GPU flag need not be read back.
        let _checked_on_cpu = self.gather(gpu, enc, &t, out)?;
        Ok(())
    }
}

impl FactorizedCodebook {
    /// `gather` of ids already range-checked on the CPU (see `Codebook::gather_checked`).
    pub fn gather_checked(&self, gpu: &Gpu, enc: &mut Encoder, ids: &Tensor, out: &Tensor, flag: &wgpu::Buffer) -> Result<()> {
        expect_ids("factorized gather", ids)?;
        out.expect_dtype("factorized gather output", DType::F32)?;
        let (s, d) = (self.books.len(), self.d());
        if ids.shape.last() != Some(&s) {
            shape_err!("factorized gather: ids {:?} must end in the {s} sub-codebooks", ids.shape);
        }
        out.expect_shape("factorized gather output", &with_last(&ids.shape, s * d))?;
        let n = ids.numel() / s;
        for (i, book) in self.books.iter().enumerate() {
            record_gather(gpu, enc, book, ids, out, flag, [n, s, i, s * d, i * d])?;
        }
        Ok(())
    }

    /// Ids [.., S] → the concatenation of each sub-codebook's row, [.., S·d].
    pub fn gather(&self, gpu: &Gpu, enc: &mut Encoder, ids: &Tensor, out: &Tensor) -> Result<IdCheck> {
        expect_ids("factorized gather", ids)?;
        out.expect_dtype("factorized gather output", DType::F32)?;
        let s = self.books.len();
        let d = self.d();
        if ids.shape.last() != Some(&s) {
            shape_err!("factorized gather: ids {:?} must end in the {s} sub-codebooks", ids.shape);
        }
        out.expect_shape("factorized gather output", &with_last(&ids.shape, s * d))?;
        let check = IdCheck::new(gpu, ids, self.books.iter().map(|b| b.k).collect())?;
        let n = ids.numel() / s;
        for (i, book) in self.books.iter().enumerate() {
            record_gather(gpu, enc, book, ids, out, &check.first_bad, [n, s, i, s * d, i * d])?;
        }
        Ok(check)
    }
}

/// LFQ decode (MAGVIT2 / WeTok group-wise lookup-free quantization): ids [.., G] of `bits`
/// bits each → [.., G·bits], bit i (LSB first) → +1.0 if set else −1.0. An id ≥ 2^bits is an
/// error reported through the returned check.
pub fn lfq_decode(gpu: &Gpu, enc: &mut Encoder, ids: &Tensor, bits: u32, out: &Tensor) -> Result<IdCheck> {
    expect_ids("lfq_decode", ids)?;
    if !(1..=31).contains(&bits) {
        invalid!("lfq_decode: {bits} bits per group; supported: 1 to 31");
    }
    out.expect_dtype("lfq_decode output", DType::F32)?;
    let Some(&groups) = ids.shape.last() else {
        shape_err!("lfq_decode: ids need a group dimension, got shape []");
    };
    out.expect_shape("lfq_decode output", &with_last(&ids.shape, groups * bits as usize))?;
    let check = IdCheck::new(gpu, ids, vec![1 << bits])?;
    let count = ids.numel() as u32;
    let p = LookupParams { count, d: bits, k: 1 << bits, ..Default::default() };
    let pipe = gpu.pipeline(&SHADER, "lfq_decode", &["LFQ"], &[("WG", WG as f64)])?;
    let groups = gpu.grid((count as usize * bits as usize).div_ceil(WG as usize) as u32);
    gpu.dispatch(enc, &pipe, params(&p), &[&ids.buffer, &out.buffer, &check.first_bad], groups)?;
    Ok(check)
}
