//! VQ codebook kernels (VQGAN / LlamaGen / FQGAN / MAGVIT2 tokenizers): nearest-code search by
//! L2 or cosine, factorized search over several sub-codebooks, embedding gather by token id,
//! and LFQ bit decoding.
//!
//! A `Codebook` is uploaded once: rows padded to whole vec4s, ‖c‖² precomputed, rows
//! l2-normalized for the cosine metric (cosine search is then an L2 search of normalized x),
//! and split into chunks: storage buffers that each fit one binding (a 100k-entry codebook may
//! not fit one), or on CPU adapters 64 KiB uniform blocks, which llvmpipe reads much faster
//! (`CodeLayout`). The search (shaders/vq.wgsl) is prepare → search per chunk, split across
//! workgroups → reduce of (score, index) per vector → optional exact distances.

mod lookup;
pub mod reference;

pub use lookup::{check_gather, lfq_decode, IdCheck, LOOKUP_PARAMS_LAYOUT};
pub use reference::{check_ids, TokenId};

use super::{launch, params, BenchCase, BenchSize};
use crate::gpu::{DType, Shader, Tensor};

use crate::{invalid, shader, shape_err, Encoder, Gpu, Result};

const SHADER: Shader = shader!("vq");
/// Lanes per workgroup of the element-wise entries (prepare, reduce, distance, lookups).
const WG: u32 = 64;
/// Codes one search step compares at once (the shader's register tile).
const CODE_BLOCK: usize = 8;
/// Vectors per search lane (the shader's register tile).
const LANE_VECTORS: usize = 4;
/// vec4s in one uniform block of codes (shaders/vq.wgsl `UBO_VEC4S`): 64 KiB.
const UBO_VEC4S: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// argmin ‖x − c‖² (taming VQGAN).
    L2,
    /// argmax cos(x, c): both sides l2-normalized (LlamaGen); distances are 2 − 2·cos.
    Cosine,
}

/// How the codes are bound to the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeLayout {
    /// Storage buffers as large as a binding allows (`Gpu::split_rows`), split across
    /// workgroups within each.
    Storage,
    /// 64 KiB uniform blocks, one dispatch each. llvmpipe reads storage buffers lane by lane
    /// but uniform buffers far more cheaply: the benchmark search runs about 2× faster.
    Uniform,
}

impl CodeLayout {
    /// Uniform blocks where the launch table asks for them (CPU rasterizers) and a code fits
    /// one block, storage elsewhere.
    pub fn preferred(gpu: &Gpu, d: usize) -> Self {
        if launch::for_class(gpu.class).vq.uniform_codes && Self::uniform_fits(gpu, d) {
            CodeLayout::Uniform
        } else {
            CodeLayout::Storage
        }
    }

    fn uniform_fits(gpu: &Gpu, d: usize) -> bool {
        d.div_ceil(4) <= UBO_VEC4S && gpu.limits.max_uniform_buffer_binding_size as usize >= UBO_VEC4S * 16
    }
}

/// Codes `start..start + len`, in one binding each.
#[derive(Clone)]
struct Chunk {
    start: usize,
    len: usize,
    /// [len, d4] vec4 rows, zero-padded (a uniform block is padded to its full size).
    codes: wgpu::Buffer,
    /// [len] ‖c‖².
    norms: wgpu::Buffer,
}

/// A codebook [K, D] on the GPU.
#[derive(Clone)]
pub struct Codebook {
    pub k: usize,
    pub d: usize,
    pub metric: Metric,
    pub layout: CodeLayout,
    chunks: Vec<Chunk>,
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct SearchParams {
    n: u32,
    d: u32,
    d4: u32,
    stride: u32,
    offset: u32,
    normalize: u32,
    codes: u32,
    code_base: u32,
    per_split: u32,
    slot_base: u32,
}

/// Checked against the WGSL struct by tests/contracts.rs.
pub const SEARCH_PARAMS_LAYOUT: crate::gpu::contract::ParamsLayout = crate::params_layout!(SearchParams, ["vq"], ["SEARCH"], "SearchParams", [n, d, d4, stride, offset, normalize, codes, code_base, per_split, slot_base]);

/// Where one search reads its sub-vectors (row t of x starts at `t * x_stride + x_offset`)
/// and writes its results (at `t * out_stride + out_offset`).
#[derive(Clone, Copy)]
struct Columns {
    x_stride: usize,
    x_offset: usize,
    out_stride: usize,
    out_offset: usize,
}

impl Codebook {
    /// Uploads `data` ([k, d] row-major), normalizing rows first for `Metric::Cosine`, in the
    /// adapter's preferred layout.
    pub fn new(gpu: &Gpu, data: &[f32], k: usize, d: usize, metric: Metric) -> Result<Self> {
        Self::with_layout(gpu, data, k, d, metric, CodeLayout::preferred(gpu, d))
    }

    /// As `new`, in a chosen layout (tests run both).
    pub fn with_layout(gpu: &Gpu, data: &[f32], k: usize, d: usize, metric: Metric, layout: CodeLayout) -> Result<Self> {
        if k == 0 || d == 0 {
            shape_err!("codebook of {k} × {d}: both must be non-zero");
        }
        if data.len() != k * d {
            shape_err!("codebook of {k} × {d} needs {} values, got {}", k * d, data.len());
        }
        if k > u32::MAX as usize / 2 {
            invalid!("codebook of {k} entries is too large for u32 token ids");
        }
        if layout == CodeLayout::Uniform && !CodeLayout::uniform_fits(gpu, d) {
            invalid!("codes of {d} dimensions do not fit this adapter's uniform blocks; use CodeLayout::Storage");
        }
        let rows = match metric {
            Metric::L2 => data.to_vec(),
            Metric::Cosine => reference::normalize_rows(data, d),
        };
        let d4 = d.div_ceil(4);
        let mut padded = vec![0f32; k * d4 * 4];
        let mut norms = Vec::with_capacity(k);
        for (src, dst) in rows.chunks(d).zip(padded.chunks_mut(d4 * 4)) {
            dst[..d].copy_from_slice(src);
            norms.push(src.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32);
        }
        let ranges: Vec<std::ops::Range<usize>> = match layout {
            CodeLayout::Storage => gpu.split_rows(k, (d4 * 16) as u64)?,
            CodeLayout::Uniform => {
                let per = UBO_VEC4S / d4;
                (0..k).step_by(per).map(|s| s..(s + per).min(k)).collect()
            }
        };
        let mut chunks = Vec::new();
        for r in ranges {
            let values = &padded[r.start * d4 * 4..r.end * d4 * 4];
            let codes = match layout {
                CodeLayout::Storage => gpu.upload(bytemuck::cast_slice(values), "vq codes")?,
                CodeLayout::Uniform => {
                    let mut block = values.to_vec();
                    block.resize(UBO_VEC4S * 4, 0.0);
                    // `buffer_init`, not wgpu's `create_buffer_init`, which panics on a lost device.
                    gpu.buffer_init("vq code block", bytemuck::cast_slice(&block), wgpu::BufferUsages::UNIFORM)?
                }
            };
            let norms = gpu.upload(bytemuck::cast_slice(&norms[r.clone()]), "vq code norms")?;
            chunks.push(Chunk { start: r.start, len: r.len(), codes, norms });
        }
        Ok(Codebook { k, d, metric, layout, chunks })
    }

    /// How many bindings the codes were split into.
    pub fn num_chunks(&self) -> usize {
        self.chunks.len()
    }

    fn d4(&self) -> usize {
        self.d.div_ceil(4)
    }

    /// The entry's define, plus UBO for entries that read uniform code blocks.
    fn defines(&self, entry: &'static str) -> Vec<&'static str> {
        match self.layout {
            CodeLayout::Storage => vec![entry],
            CodeLayout::Uniform => vec![entry, "UBO"],
        }
    }

    /// Records the nearest-code search of `x` [N, D] → `indices` [N] (u32) and optionally
    /// `distances` [N] (f32, squared L2; for cosine 2 − 2·cos). Ties go to the lowest index.
    pub fn search(&self, gpu: &Gpu, enc: &mut Encoder, x: &Tensor, indices: &Tensor, distances: Option<&Tensor>) -> Result<()> {
        x.expect_dtype("vq search input", DType::F32)?;
        if x.shape.len() != 2 || x.shape[1] != self.d {
            shape_err!("vq search: x must be [N, {}], got {:?}", self.d, x.shape);
        }
        let n = x.shape[0];
        check_outputs(indices, distances, &[n])?;
        let cols = Columns { x_stride: self.d, x_offset: 0, out_stride: 1, out_offset: 0 };
        self.record_search(gpu, enc, x, n, cols, indices, distances)
    }

    /// As `search`, writing vector t's index at `indices[t, column]` of ids [N, S]: one stage
    /// of a residual quantizer, whose stages share one id tensor.
    pub fn search_column(&self, gpu: &Gpu, enc: &mut Encoder, x: &Tensor, indices: &Tensor, column: usize) -> Result<()> {
        x.expect_dtype("vq search input", DType::F32)?;
        if x.shape.len() != 2 || x.shape[1] != self.d {
            shape_err!("vq search: x must be [N, {}], got {:?}", self.d, x.shape);
        }
        let n = x.shape[0];
        let Some(&s) = indices.shape.last().filter(|&&s| column < s) else {
            shape_err!("vq search: column {column} of ids {:?}", indices.shape);
        };
        check_outputs(indices, None, &[n, s])?;
        let cols = Columns { x_stride: self.d, x_offset: 0, out_stride: s, out_offset: column };
        self.record_search(gpu, enc, x, n, cols, indices, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn record_search(&self, gpu: &Gpu, enc: &mut Encoder, x: &Tensor, n: usize, cols: Columns, indices: &Tensor, distances: Option<&Tensor>) -> Result<()> {
        let d4 = self.d4();
        let plan = self.plan(gpu, n)?;
        let xp = Tensor::zeros(gpu, &[n, d4 * 4], DType::F32)?;
        let partial = Tensor::zeros(gpu, &[plan.slots, n, 2], DType::U32)?;
        let base = SearchParams { n: n as u32, d: self.d as u32, d4: d4 as u32, ..Default::default() };
        let consts = [("WG", WG as f64)];
        let vector_groups = gpu.grid((n as u32).div_ceil(WG));

        let prepare = gpu.pipeline(&SHADER, "prepare", &["PREPARE"], &consts)?;
        let p = SearchParams {
            stride: cols.x_stride as u32,
            offset: cols.x_offset as u32,
            normalize: (self.metric == Metric::Cosine) as u32,
            ..base
        };
        gpu.dispatch(enc, &prepare, params(&p), &[&x.buffer, &xp.buffer], vector_groups)?;

        let search = gpu.pipeline(&SHADER, "search", &self.defines("SEARCH"), &[("WG", plan.lanes as f64)])?;
        let tiles = n.div_ceil(plan.lanes * LANE_VECTORS) as u32;
        let mut slot = 0;
        for (chunk, &splits) in self.chunks.iter().zip(&plan.splits) {
            let p = SearchParams {
                codes: chunk.len as u32,
                code_base: chunk.start as u32,
                per_split: plan.per_split as u32,
                slot_base: slot as u32,
                ..base
            };
            let bufs = [&xp.buffer, &chunk.codes, &chunk.norms, &partial.buffer];
            gpu.dispatch(enc, &search, params(&p), &bufs, [tiles, splits as u32, 1])?;
            slot += splits;
        }

        let reduce = gpu.pipeline(&SHADER, "reduce", &["REDUCE"], &consts)?;
        let out = SearchParams { stride: cols.out_stride as u32, offset: cols.out_offset as u32, ..base };
        let p = SearchParams { slot_base: plan.slots as u32, ..out };
        gpu.dispatch(enc, &reduce, params(&p), &[&partial.buffer, &indices.buffer], vector_groups)?;

        if let Some(distances) = distances {
            let pipe = gpu.pipeline(&SHADER, "distance", &self.defines("DISTANCE"), &consts)?;
            for chunk in &self.chunks {
                let p = SearchParams { codes: chunk.len as u32, code_base: chunk.start as u32, ..out };
                let bufs = [&xp.buffer, &chunk.codes, &indices.buffer, &distances.buffer];
                gpu.dispatch(enc, &pipe, params(&p), &bufs, vector_groups)?;
            }
        }
        Ok(())
    }

    /// How the codes are divided among workgroups: enough (vector tile × code split)
    /// workgroups per dispatch to keep every core / compute unit busy, each split long enough
    /// that its partial result is cheap next to its scan. Uniform blocks are one dispatch
    /// each, so they get small workgroups and are split on their own.
    fn plan(&self, gpu: &Gpu, n: usize) -> Result<Plan> {
        let row = launch::for_class(gpu.class).vq;
        let (lanes, target_groups, min_split, span) = match self.layout {
            CodeLayout::Uniform => (16, 16, 16, self.chunks[0].len),
            CodeLayout::Storage => (row.lanes, row.target_groups, row.min_split, self.k),
        };
        let tiles = n.div_ceil(lanes * LANE_VECTORS);
        let wanted = target_groups.div_ceil(tiles).max(1);
        let mut per_split = span.div_ceil(wanted).max(min_split).div_ceil(CODE_BLOCK) * CODE_BLOCK;
        // Partial results (8 bytes per vector and split) must fit one binding: fewer, longer
        // splits when they don't.
        let max_slots = (gpu.max_binding_size() / (n as u64 * 8)) as usize;
        if self.chunks.len() > max_slots {
            invalid!("vq search: {n} vectors × {} chunks of partial results exceed the binding limit; search fewer vectors at once", self.chunks.len());
        }
        let count = |per: usize| self.chunks.iter().map(|c| c.len.div_ceil(per)).collect::<Vec<_>>();
        while count(per_split).iter().sum::<usize>() > max_slots {
            per_split *= 2;
        }
        let splits = count(per_split);
        let slots: usize = splits.iter().sum();
        let max_groups = gpu.limits.max_compute_workgroups_per_dimension as usize;
        if tiles > max_groups || splits.iter().any(|&s| s > max_groups) {
            invalid!("vq search of {n} vectors × {} codes exceeds the dispatch limit; search fewer vectors at once", self.k);
        }
        Ok(Plan { lanes, per_split, splits, slots })
    }
}

/// How a codebook search on storage buffers is divided on one class of adapter (a column of
/// `kernels::launch`'s table): `lanes` per workgroup, enough (vector tile × code split)
/// workgroups per dispatch (`target_groups`) to keep every core or compute unit busy, each
/// split at least `min_split` codes so its partial result is cheap next to its scan.
/// `uniform_codes`: 64 KiB uniform blocks when a code fits (`CodeLayout::Uniform`).
#[derive(Clone, Copy, Debug)]
pub struct SearchSplit {
    pub uniform_codes: bool,
    pub lanes: usize,
    pub target_groups: usize,
    pub min_split: usize,
}

struct Plan {
    /// Lanes per search workgroup.
    lanes: usize,
    per_split: usize,
    /// Workgroup rows per chunk.
    splits: Vec<usize>,
    slots: usize,
}

fn check_outputs(indices: &Tensor, distances: Option<&Tensor>, shape: &[usize]) -> Result<()> {
    indices.expect_dtype("vq indices", DType::U32)?;
    indices.expect_shape("vq indices", shape)?;
    if let Some(t) = distances {
        t.expect_dtype("vq distances", DType::F32)?;
        t.expect_shape("vq distances", shape)?;
    }
    Ok(())
}

/// S sub-codebooks of the same dimension d (FQGAN): x [N, S·d] is split into S sub-vectors,
/// each searched in its own codebook.
#[derive(Clone)]
pub struct FactorizedCodebook {
    pub books: Vec<Codebook>,
}

impl FactorizedCodebook {
    /// `data` holds the S codebooks back to back, each [k, d].
    pub fn new(gpu: &Gpu, data: &[f32], s: usize, k: usize, d: usize, metric: Metric) -> Result<Self> {
        if s == 0 || k == 0 || d == 0 {
            shape_err!("factorized codebook of {s} × {k} × {d}: all must be non-zero");
        }
        if data.len() != s * k * d {
            shape_err!("{s} codebooks of {k} × {d} need {} values, got {}", s * k * d, data.len());
        }
        let books = data.chunks(k * d).map(|c| Codebook::new(gpu, c, k, d, metric)).collect::<Result<_>>()?;
        Ok(FactorizedCodebook { books })
    }

    /// Width of one sub-vector.
    pub fn d(&self) -> usize {
        self.books[0].d
    }

    /// x [N, S·d] → indices [N, S] (and distances [N, S]).
    pub fn search(&self, gpu: &Gpu, enc: &mut Encoder, x: &Tensor, indices: &Tensor, distances: Option<&Tensor>) -> Result<()> {
        let (s, d) = (self.books.len(), self.d());
        x.expect_dtype("factorized vq input", DType::F32)?;
        if x.shape.len() != 2 || x.shape[1] != s * d {
            shape_err!("factorized vq search: x must be [N, {}], got {:?}", s * d, x.shape);
        }
        let n = x.shape[0];
        check_outputs(indices, distances, &[n, s])?;
        for (i, book) in self.books.iter().enumerate() {
            book.record_search(gpu, enc, x, n, Columns { x_stride: s * d, x_offset: i * d, out_stride: s, out_offset: i }, indices, distances)?;
        }
        Ok(())
    }
}

/// The benchmark: 256 vectors × 16384 codes × 256 dims, L2 and cosine.
pub fn bench_cases(gpu: &Gpu, size: BenchSize) -> Result<Vec<BenchCase>> {
    let (n, k, d) = if size == BenchSize::Full { (256, 16384, 256) } else { (67, 1000, 24) };
    let codes = crate::synthetic::uniform(k * d, 1, 1.0);
    let x = Tensor::from_f32(gpu, &[n, d], &crate::synthetic::uniform(n * d, 2, 1.0))?;
    let mut cases = Vec::new();
    for metric in [Metric::L2, Metric::Cosine] {
        let book = Codebook::new(gpu, &codes, k, d, metric)?;
        let (x, indices) = (x.clone(), Tensor::zeros(gpu, &[n], DType::U32)?);
        cases.push(BenchCase {
            kernel: "vq_search".into(),
            format: "f32".into(),
            shape: format!("{n}x{k}x{d} {metric:?}"),
            bytes: (k * d * 4) as u64,
            flops: (2 * n * k * d) as u64,
            step: Box::new(move |gpu, enc| book.search(gpu, enc, &x, &indices, None)),
        });
    }
    Ok(cases)
}
