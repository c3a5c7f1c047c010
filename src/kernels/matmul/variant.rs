//! The shapes `linear` can run in, and the plan that picks one per number of rows. Which plan
//! an adapter gets is `kernels::launch`'s business.

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

    /// `GemvRows` made smaller (fewer lanes per workgroup, down to 16, then fewer rows per
    /// lane) until a layer of `n` outputs spreads over at least `min_groups` workgroups; other
    /// variants as they are. llvmpipe runs a workgroup on one thread, so a small layer in one
    /// workgroup leaves the other cores idle: 128×512 f32 on 2 cores took 1.95 ms in one
    /// workgroup of 64 lanes × 8 rows, 0.51 ms in four of 16 × 2.
    pub fn spread(self, n: usize, min_groups: usize) -> Variant {
        let Variant::GemvRows { mut wg, mut rows } = self else { return self };
        let groups = |wg: u32, rows: u32| n.div_ceil((wg * rows) as usize);
        while groups(wg, rows) < min_groups && wg > 16 {
            wg /= 2;
        }
        while groups(wg, rows) < min_groups && rows > 1 {
            rows /= 2;
        }
        Variant::GemvRows { wg, rows }
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


#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::matmul::candidates;

    #[test]
    fn variant_names_round_trip() {
        for v in candidates(false).into_iter().chain(candidates(true)) {
            assert_eq!(Variant::parse(&v.name()), Some(v));
        }
        assert_eq!(Variant::parse("gemm_tiled wg64 4x"), None);
        assert_eq!(Variant::parse("gemv_rows wg64 r8 extra"), None);
    }

    #[test]
    fn small_layers_spread_over_threads() {
        let v = Variant::GemvRows { wg: 64, rows: 8 };
        assert_eq!(v.spread(4096, 4), v, "8 workgroups already");
        assert_eq!(v.spread(128, 4), Variant::GemvRows { wg: 16, rows: 2 });
        assert_eq!(v.spread(3, 64), Variant::GemvRows { wg: 16, rows: 1 }, "as small as it gets");
        let coop = Variant::GemvCoop { wg: 256, team: 32 };
        assert_eq!(coop.spread(1, 8), coop);
    }
}
