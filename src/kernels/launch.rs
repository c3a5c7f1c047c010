//! Every kernel family's launch shape for each class of adapter, in one table: the one place
//! that knows llvmpipe from a GPU. Families read their row through [`for_class`] (or
//! [`linear_plan`], which also applies what `lowbit bench kernels --tune` saved for this
//! adapter). `gpu.class` is the row to use: the adapter's own class, or the one `--plan`
//! forces, so the GPU rows also run (slowly) on lavapipe.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use super::attention::kv_cache::AttendLanes;
use super::attention::{AttentionKernel, Layout};
use super::matmul::{candidates, Plan, Variant};
use super::{norm, vq, w8a8};
use crate::gpu::AdapterClass;
use crate::{Error, Gpu, Result};

/// One row of the table: what each family launches on one class of adapter.
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    /// `linear`'s GEMV and GEMM variants; convolutions use the GEMM tiles too.
    pub linear: Plan,
    /// `attention` and SageAttention's attention pass; `attention` is the per-query kernel's
    /// mapping (also used by `attention_quantized`, which flash cannot do).
    pub attention_kernel: AttentionKernel,
    pub attention: Layout,
    pub kv_attend: AttendLanes,
    pub w8a8: w8a8::Tiles,
    pub norm: norm::RowLanes,
    pub vq: vq::SearchSplit,
}

/// Workgroup tiles of the GPU rows: 64×64 (256 invocations of 4×4) for ViT-sized layers
/// (197 tokens × 768-4096 features gives 4 × 12-64 workgroups), 128×128 of 8×8 for thousands of
/// rows (VQGAN convolutions, batched ViTs), 16×64 of 2×4 for a few dozen rows.
const GPU_GEMM: Variant = Variant::GemmWorkgroup { bm: 64, bn: 64, tm: 4, tn: 4 };
const GPU_GEMM_SMALL: Variant = Variant::GemmWorkgroup { bm: 16, bn: 64, tm: 2, tn: 4 };
const GPU_GEMM_LARGE: Variant = Variant::GemmWorkgroup { bm: 128, bn: 128, tm: 8, tn: 8 };

/// The CPU row was measured on lavapipe (Mesa 22.3, 2 cores, AVX2); why each value won is
/// said where the family defines its launch type. The GPU rows' GEMV shape was measured on an
/// H100 (Vulkan, subgroups of 32) with 4-byte loads: one subgroup per weight row, 8 rows per
/// workgroup (a whole workgroup per row spent its time launching and reducing); the rows now
/// take 16-byte loads (`GemvWide`) and the workgroup-tiled GEMM's tiles follow the classic
/// SGEMM shapes, neither yet measured on a GPU: `lowbit bench kernels --tune` there times them
/// against the alternatives and keeps the faster (see BENCHMARKS.md). The other GPU values are
/// conventional (enough lanes to hide memory latency), not yet measured.
const TABLE: [(AdapterClass, Launch); 3] = [
    (
        AdapterClass::Cpu,
        Launch {
            // 8 rows per invocation beat 1/2/4 (x loads shared) and 16 (register spills); GEMM
            // 4×4 and 2×8 tiles beat 8×N (x is staged 4 rows at a time for K = 4096).
            linear: Plan {
                gemv: Variant::GemvRows { wg: 64, rows: 8 },
                gemv_max_m: 4,
                gemm: Variant::GemmTiled { wg: 64, tm: 4, tn: 4 },
                gemm_small: None,
                gemm_large: None,
            },
            // Not flash: a workgroup is one thread looping over its lanes, so every barrier
            // splits that loop and workgroup memory is one more copy, while the WIDE layout
            // already shares each loaded K/V value among several queries (on lavapipe flash
            // took 3-8× as long in `lowbit bench kernels --only attention`).
            attention_kernel: AttentionKernel::PerQuery,
            attention: Layout { workgroup: 8, wide: true },
            kv_attend: AttendLanes { min: 8, max: 8 },
            w8a8: w8a8::Tiles { quantize_wg: 8, gemm_wg: 64, rows_per_wg: 32, tiles: None },
            norm: norm::RowLanes { max_lanes: 64, row_per_lane: true },
            vq: vq::SearchSplit { uniform_codes: true, lanes: 64, target_groups: 64, min_split: 256 },
        },
    ),
    (
        AdapterClass::Discrete,
        Launch {
            linear: Plan {
                gemv: Variant::GemvWide { wg: 256, team: 32 },
                gemv_max_m: 4,
                gemm: GPU_GEMM,
                gemm_small: Some((64, GPU_GEMM_SMALL)),
                gemm_large: Some((1024, GPU_GEMM_LARGE)),
            },
            attention_kernel: AttentionKernel::Flash,
            attention: Layout { workgroup: 64, wide: false },
            kv_attend: AttendLanes { min: 32, max: 64 },
            w8a8: w8a8::Tiles::GPU,
            norm: norm::RowLanes { max_lanes: 256, row_per_lane: false },
            vq: vq::SearchSplit { uniform_codes: false, lanes: 64, target_groups: 2048, min_split: 64 },
        },
    ),
    (
        AdapterClass::Integrated,
        Launch {
            linear: Plan {
                gemv: Variant::GemvWide { wg: 128, team: 32 },
                gemv_max_m: 4,
                gemm: GPU_GEMM,
                gemm_small: Some((64, GPU_GEMM_SMALL)),
                gemm_large: None,
            },
            attention_kernel: AttentionKernel::Flash,
            attention: Layout { workgroup: 64, wide: false },
            kv_attend: AttendLanes { min: 32, max: 64 },
            w8a8: w8a8::Tiles::GPU,
            norm: norm::RowLanes { max_lanes: 256, row_per_lane: false },
            vq: vq::SearchSplit { uniform_codes: false, lanes: 64, target_groups: 256, min_split: 128 },
        },
    ),
];

/// The table's row for a class of adapter.
pub fn for_class(class: AdapterClass) -> &'static Launch {
    &TABLE.iter().find(|(c, _)| *c == class).unwrap_or(&TABLE[2]).1
}

/// What `linear` runs on this adapter: the table's row, with the variants `--tune` saved for
/// this adapter (by name) in its place.
pub fn linear_plan(gpu: &Gpu) -> Plan {
    let mut plan = for_class(gpu.class).linear;
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
            crate::warn!("ignoring the unreadable tuning file {:?}", tuning_file());
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
