//! The per-adapter choice of kernel variants, in one table.
//!
//! `linear` asks [`plan`] which variant to run: the row of `TABLE` for the adapter's class,
//! unless `lowbit bench kernels --tune` has timed every [`candidates`] entry (through
//! [`tune_cases`]) on this adapter and saved its picks in [`tuning_file`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use super::matmul::{self, QLinear};
use super::{BenchCase, BenchSize};
use crate::gpu::{AdapterClass, DType, Tensor};
use crate::quant::{PackedMatrix, WeightFormat};
use crate::{Error, Gpu, Result};

/// A kernel shape for `linear`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// GEMV, one invocation per `rows` output rows, `wg` invocations per workgroup. Suits
    /// CPU adapters: the x loads are uniform across lanes and there are no barriers.
    GemvRows { wg: u32, rows: u32 },
    /// GEMV, teams of `team` lanes per output row (`wg / team` rows per workgroup) with
    /// coalesced loads and a subgroup (or shared-memory) reduction. Suits GPUs.
    GemvCoop { wg: u32, team: u32 },
    /// As `GemvCoop`, each lane loading 16 bytes (4 words) per step: more bytes in flight per
    /// lane for DRAM-bound weight streaming. Layers whose scale groups are not whole vec4s
    /// (e.g. fp4g16) run `GemvCoop` instead.
    GemvWide { wg: u32, team: u32 },
    /// Register-tiled GEMM without workgroup memory: each invocation computes `tm` x-rows ×
    /// `tn` output rows. Suits CPU adapters.
    GemmTiled { wg: u32, tm: u32, tn: u32 },
    /// Workgroup-tiled GEMM: a `bm` × `bn` output tile per workgroup, x and decoded weights
    /// staged through workgroup memory, `tm` × `tn` outputs per invocation. Suits GPUs.
    GemmWorkgroup { bm: u32, bn: u32, tm: u32, tn: u32 },
}

impl Variant {
    pub fn name(&self) -> String {
        match *self {
            Variant::GemvRows { wg, rows } => format!("gemv_rows wg{wg} r{rows}"),
            Variant::GemvCoop { wg, team } => format!("gemv_coop wg{wg} team{team}"),
            Variant::GemvWide { wg, team } => format!("gemv_wide wg{wg} team{team}"),
            Variant::GemmTiled { wg, tm, tn } => format!("gemm_tiled wg{wg} {tm}x{tn}"),
            Variant::GemmWorkgroup { bm, bn, tm, tn } => format!("gemm_workgroup {bm}x{bn} {tm}x{tn}"),
        }
    }

    pub fn is_gemv(&self) -> bool {
        matches!(self, Variant::GemvRows { .. } | Variant::GemvCoop { .. } | Variant::GemvWide { .. })
    }

    /// The inverse of [`Variant::name`].
    pub fn parse(s: &str) -> Option<Variant> {
        let mut words = s.split_whitespace();
        let (kind, first, last) = (words.next()?, words.next()?, words.next()?);
        if words.next().is_some() {
            return None;
        }
        let pair = |t: &str| -> Option<(u32, u32)> {
            let (a, b) = t.split_once('x')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        if kind == "gemm_workgroup" {
            let ((bm, bn), (tm, tn)) = (pair(first)?, pair(last)?);
            return Some(Variant::GemmWorkgroup { bm, bn, tm, tn });
        }
        let wg = first.strip_prefix("wg")?.parse().ok()?;
        match kind {
            "gemv_rows" => Some(Variant::GemvRows { wg, rows: last.strip_prefix('r')?.parse().ok()? }),
            "gemv_coop" => Some(Variant::GemvCoop { wg, team: last.strip_prefix("team")?.parse().ok()? }),
            "gemv_wide" => Some(Variant::GemvWide { wg, team: last.strip_prefix("team")?.parse().ok()? }),
            "gemm_tiled" => {
                let (tm, tn) = pair(last)?;
                Some(Variant::GemmTiled { wg, tm, tn })
            }
            _ => None,
        }
    }
}

/// What `linear` runs on one class of adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub gemv: Variant,
    /// Inputs with at most this many rows (tokens) use `gemv`, re-reading the weights per row.
    pub gemv_max_m: usize,
    pub gemm: Variant,
    /// Smaller tiles up to this many rows, so a layer with few tokens still fills the GPU.
    pub gemm_small: Option<(usize, Variant)>,
    /// Larger tiles from this many rows on: each staged value is reused more.
    pub gemm_large: Option<(usize, Variant)>,
}

impl Plan {
    /// The variant for `m` rows of x.
    pub fn for_rows(&self, m: usize) -> Variant {
        match (self.gemm_small, self.gemm_large) {
            _ if m <= self.gemv_max_m => self.gemv,
            (Some((max_m, v)), _) if m <= max_m => v,
            (_, Some((min_m, v))) if m >= min_m => v,
            _ => self.gemm,
        }
    }
}

/// Workgroup tiles of the GPU rows: 64×64 (256 invocations of 4×4) for ViT-sized layers
/// (197 tokens × 768-4096 features gives 4 × 12-64 workgroups), 128×128 of 8×8 for thousands of
/// rows (VQGAN convolutions, batched ViTs), 16×64 of 2×4 for a few dozen rows.
const GPU_GEMM: Variant = Variant::GemmWorkgroup { bm: 64, bn: 64, tm: 4, tn: 4 };
const GPU_GEMM_SMALL: Variant = Variant::GemmWorkgroup { bm: 16, bn: 64, tm: 2, tn: 4 };
const GPU_GEMM_LARGE: Variant = Variant::GemmWorkgroup { bm: 128, bn: 128, tm: 8, tn: 8 };

/// THE table. The CPU row was measured on lavapipe (Mesa 22.3, 2 cores, AVX2): 8 rows per
/// invocation beat 1/2/4 (x loads shared) and 16 (register spills); GEMM 4×4 and 2×8 tiles
/// beat 8×N (x is staged 4 rows at a time for K = 4096). The GPU rows' GEMV shape was measured
/// on an H100 (Vulkan, subgroups of 32) with 4-byte loads: one subgroup per weight row, 8 rows
/// per workgroup (a whole workgroup per row spent its time launching and reducing); the rows
/// now take 16-byte loads (`GemvWide`) and the workgroup-tiled GEMM's tiles follow the classic
/// SGEMM shapes, neither yet measured on a GPU: `lowbit bench kernels --tune` there times them
/// against the alternatives and keeps the faster (see BENCHMARKS.md).
const TABLE: [(AdapterClass, Plan); 3] = [
    (
        AdapterClass::Cpu,
        Plan {
            gemv: Variant::GemvRows { wg: 64, rows: 8 },
            gemv_max_m: 4,
            gemm: Variant::GemmTiled { wg: 64, tm: 4, tn: 4 },
            gemm_small: None,
            gemm_large: None,
        },
    ),
    (
        AdapterClass::Discrete,
        Plan {
            gemv: Variant::GemvWide { wg: 256, team: 32 },
            gemv_max_m: 4,
            gemm: GPU_GEMM,
            gemm_small: Some((64, GPU_GEMM_SMALL)),
            gemm_large: Some((1024, GPU_GEMM_LARGE)),
        },
    ),
    (
        AdapterClass::Integrated,
        Plan {
            gemv: Variant::GemvWide { wg: 128, team: 32 },
            gemv_max_m: 4,
            gemm: GPU_GEMM,
            gemm_small: Some((64, GPU_GEMM_SMALL)),
            gemm_large: None,
        },
    ),
];

/// The table's row for a class of adapter.
pub fn table_plan(class: AdapterClass) -> Plan {
    TABLE.iter().find(|(c, _)| *c == class).map(|(_, p)| *p).unwrap_or(TABLE[2].1)
}

/// What `linear` runs on this adapter: the table's row, with the variants `--tune` saved for
/// this adapter (by name) in its place.
pub fn plan(gpu: &Gpu) -> Plan {
    let mut plan = table_plan(gpu.class);
    if let Some(saved) = saved_picks().get(&gpu.info.name) {
        plan.gemv = saved.gemv.unwrap_or(plan.gemv);
        plan.gemm = saved.gemm.unwrap_or(plan.gemm);
    }
    plan
}

/// Where `--tune` keeps its picks: `$LOWBIT_TUNING`, else `$XDG_CACHE_HOME/lowbit/tuning.json`,
/// else `~/.cache/lowbit/tuning.json`. The file maps adapter names to
/// `{"gemv": "<variant name>", "gemm": "<variant name>"}`.
pub fn tuning_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOWBIT_TUNING") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("lowbit").join("tuning.json"))
}

#[derive(Clone, Copy, Default)]
struct Picks {
    gemv: Option<Variant>,
    gemm: Option<Variant>,
}

/// The saved picks, read once per process. Entries that are not known candidates are ignored
/// (a stale or hand-edited file must not select a kernel shape nobody tested).
fn saved_picks() -> &'static HashMap<String, Picks> {
    static PICKS: OnceLock<HashMap<String, Picks>> = OnceLock::new();
    PICKS.get_or_init(|| {
        let Some(text) = tuning_file().and_then(|p| std::fs::read_to_string(p).ok()) else {
            return HashMap::new();
        };
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&text) else {
            eprintln!("warning: ignoring the unreadable tuning file {:?}", tuning_file());
            return HashMap::new();
        };
        let pick = |entry: &serde_json::Value, key: &str, gemm: bool| {
            entry.get(key).and_then(|v| v.as_str()).and_then(Variant::parse).filter(|v| candidates(gemm).contains(v))
        };
        map.iter().map(|(adapter, e)| (adapter.clone(), Picks { gemv: pick(e, "gemv", false), gemm: pick(e, "gemm", true) })).collect()
    })
}

/// Saves `--tune`'s picks for this adapter (other adapters' entries are kept); returns the file.
pub fn save_picks(gpu: &Gpu, gemv: Option<Variant>, gemm: Option<Variant>) -> Result<PathBuf> {
    let path = tuning_file().ok_or_else(|| Error::Invalid("no place for the tuning file: set LOWBIT_TUNING".into()))?;
    let mut map = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&t).ok())
        .unwrap_or_default();
    let mut entry = serde_json::Map::new();
    for (key, v) in [("gemv", gemv), ("gemm", gemm)] {
        if let Some(v) = v {
            entry.insert(key.into(), v.name().into());
        }
    }
    map.insert(gpu.info.name.clone(), entry.into());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(&map).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Alternatives worth timing on any adapter: GEMV variants when `gemm` is false, else GEMM.
pub fn candidates(gemm: bool) -> Vec<Variant> {
    if gemm {
        let mut v = vec![];
        for wg in [32, 64] {
            for (tm, tn) in [(2, 4), (4, 2), (4, 4), (8, 4), (2, 8), (4, 8)] {
                v.push(Variant::GemmTiled { wg, tm, tn });
            }
        }
        v.extend([(16, 64, 2, 4), (32, 64, 4, 4), (64, 64, 4, 4), (64, 64, 8, 4), (64, 128, 4, 8), (128, 128, 8, 8)].map(
            |(bm, bn, tm, tn)| Variant::GemmWorkgroup { bm, bn, tm, tn },
        ));
        v
    } else {
        let mut v = vec![];
        for wg in [32, 64, 128] {
            for rows in [2, 4, 8, 16] {
                v.push(Variant::GemvRows { wg, rows });
            }
        }
        v.extend([(64, 8), (128, 32), (256, 32), (256, 64), (256, 256)].map(|(wg, team)| Variant::GemvCoop { wg, team }));
        v.extend([(128, 32), (256, 32), (256, 64)].map(|(wg, team)| Variant::GemvWide { wg, team }));
        v
    }
}

/// One benchmark per candidate on the headline format (Q4, group 32): GEMV 1×4096×4096 and
/// GEMM 197×4096×4096 (small shapes for `Quick`).
pub fn tune_cases(gpu: &Gpu, size: BenchSize) -> Result<Vec<(String, BenchCase)>> {
    let (k, n, m) = if size == BenchSize::Full { (4096, 4096, 197) } else { (256, 320, 33) };
    let fmt = WeightFormat::Q4 { group: 32, zero_point: false };
    let w = matmul::bench_weights(k, n);
    let packed = PackedMatrix::quantize(&w, n, k, fmt)?;
    let layer = std::sync::Arc::new(QLinear::new(gpu, &packed, None)?);
    let mut cases = vec![];
    for gemm in [false, true] {
        let rows = if gemm { m } else { 1 };
        let x = Tensor::from_f32(gpu, &[rows, k], &matmul::bench_weights(k, rows))?;
        let out = Tensor::zeros(gpu, &[rows, n], DType::F32)?;
        for v in candidates(gemm) {
            let (layer, x, out) = (layer.clone(), x.clone(), out.clone());
            let case = BenchCase {
                kernel: if gemm { "gemm" } else { "gemv" }.into(),
                format: fmt.name(),
                shape: format!("{rows}x{k}x{n}"),
                bytes: packed.bytes() as u64,
                flops: 2 * (rows * k * n) as u64,
                step: Box::new(move |gpu, enc| matmul::linear_with(gpu, enc, &layer, &x, &out, None, v)),
            };
            cases.push((v.name(), case));
        }
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_names_round_trip() {
        for v in candidates(false).into_iter().chain(candidates(true)) {
            assert_eq!(Variant::parse(&v.name()), Some(v));
        }
        assert_eq!(Variant::parse("gemm_tiled wg64 4x"), None);
        assert_eq!(Variant::parse("gemv_rows wg64 r8 extra"), None);
    }
}
