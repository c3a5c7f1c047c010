//! A packed weight matrix resident on the GPU, the one type `linear`, the convolutions and
//! W8A8 keep their weights in: split by rows (output channels) into blocks that each fit one
//! storage binding (`Gpu::split_rows`), laid out as the kernel that reads it wants.

use std::ops::Range;

use crate::gpu::Gpu;
use crate::formats::PackedMatrix;
use crate::Result;

/// How rows are laid out in a block's `data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowLayout {
    /// Row after row, each padded with zero words to a multiple of `align` (4 lets a kernel
    /// read whole vec4<u32>s).
    RowMajor { align: usize },
    /// Tiles of `tile` rows, word `w` of the tile's rows stored next to each other (row `r` of
    /// tile `t` at `(t · row_words + w) · tile + r`), so one invocation that owns a tile reads
    /// its rows' words in one load; the last tile is zero-padded. Blocks hold whole tiles.
    Interleaved { tile: usize },
}

/// Rows `rows` of the matrix, in one binding each.
#[derive(Clone)]
pub struct RowBlock {
    pub rows: Range<usize>,
    pub data: wgpu::Buffer,
    /// The rows' packed scales and zero points (`PackedMatrix::slice_rows`), where the format
    /// has them.
    pub scales: Option<wgpu::Buffer>,
    pub zeros: Option<wgpu::Buffer>,
}

#[derive(Clone)]
pub struct GpuMatrix {
    pub layout: RowLayout,
    /// Words per row in `data` (the padded row for `RowMajor`, `row_words` otherwise).
    pub stride: usize,
    pub blocks: Vec<RowBlock>,
}

impl GpuMatrix {
    /// Uploads `w` in `layout`. `label` names the buffers (GPU debuggers, out-of-memory errors).
    pub fn upload(gpu: &Gpu, w: &PackedMatrix, layout: RowLayout, label: &str) -> Result<GpuMatrix> {
        Self::upload_parts(gpu, w, layout, label, true)
    }

    /// The codes alone, for kernels that take the scales in another form (W8A8's per-row
    /// scale+bias pairs); the scales are neither copied nor uploaded.
    pub fn upload_codes(gpu: &Gpu, w: &PackedMatrix, layout: RowLayout, label: &str) -> Result<GpuMatrix> {
        Self::upload_parts(gpu, w, layout, label, false)
    }

    fn upload_parts(gpu: &Gpu, w: &PackedMatrix, layout: RowLayout, label: &str, with_scales: bool) -> Result<GpuMatrix> {
        let (unit, stride) = match layout {
            RowLayout::RowMajor { align } => (1, w.row_words.next_multiple_of(align.max(1))),
            RowLayout::Interleaved { tile } => (tile.max(1), w.row_words),
        };
        let mut blocks = vec![];
        for units in gpu.split_rows(w.rows.div_ceil(unit), (4 * unit * stride) as u64)? {
            let rows = units.start * unit..(units.end * unit).min(w.rows);
            let part = w.slice_rows(rows.clone());
            let data = match layout {
                RowLayout::RowMajor { .. } => pad_rows(&part, stride),
                RowLayout::Interleaved { tile } => interleave_rows(&part, tile),
            };
            let optional = |words: &[u32], what: &str| -> Result<Option<wgpu::Buffer>> {
                Ok(if words.is_empty() { None } else { Some(gpu.upload_u32(words, &format!("{label} {what}"))?) })
            };
            blocks.push(RowBlock {
                data: gpu.upload_u32(&data, label)?,
                scales: if with_scales { optional(&part.scales, "scales")? } else { None },
                zeros: if with_scales { optional(&part.zeros, "zero points")? } else { None },
                rows,
            });
        }
        Ok(GpuMatrix { layout, stride, blocks })
    }
}

fn pad_rows(m: &PackedMatrix, stride: usize) -> Vec<u32> {
    let mut out = vec![0u32; m.rows * stride];
    for (dst, src) in out.chunks_mut(stride).zip(m.data.chunks(m.row_words)) {
        dst[..m.row_words].copy_from_slice(src);
    }
    out
}

fn interleave_rows(m: &PackedMatrix, tile: usize) -> Vec<u32> {
    let mut out = vec![0u32; m.rows.div_ceil(tile) * tile * m.row_words];
    for r in 0..m.rows {
        let (t, c) = (r / tile, r % tile);
        for wi in 0..m.row_words {
            out[(t * m.row_words + wi) * tile + c] = m.data[r * m.row_words + wi];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::WeightFormat;

    fn matrix(rows: usize, row_words: usize) -> PackedMatrix {
        let data = (0..(rows * row_words) as u32).collect();
        PackedMatrix { rows, cols: row_words, row_words, data, ..PackedMatrix::quantize(&vec![0.0; rows], rows, 1, WeightFormat::F32).unwrap() }
    }

    #[test]
    fn layouts_place_words_where_kernels_read_them() {
        let m = matrix(3, 2);
        assert_eq!(pad_rows(&m, 4), [0, 1, 0, 0, 2, 3, 0, 0, 4, 5, 0, 0]);
        // Tile 0 holds rows 0 and 1 word by word, tile 1 row 2 and a zero row.
        assert_eq!(interleave_rows(&m, 2), [0, 2, 1, 3, 4, 0, 5, 0]);
    }
}
