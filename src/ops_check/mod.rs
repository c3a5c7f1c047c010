//! The op-check registry: every op, weight format and launch-table variant run once on small,
//! odd shapes against its plain-Rust CPU reference, with an NMSE bound for each.
//!
//! `tests/ops.rs` runs it on lavapipe under each kernel plan; `lowbit test-ops` runs it on the
//! user's adapter. A case goes through the graph op where the op is one (so the graph's shape
//! checks and recording are part of what is checked), else through the kernel's entry point.
//!
//! Bounds follow from the arithmetic. Where the reference computes with exactly the values the
//! GPU uses (the decoded weights, the int8 codes), only the f32 summation order differs: the
//! relative error per output is ~√K·2⁻²⁴, an NMSE ~1e-13, and the bound is `SAME_VALUES`. A
//! looser bound is only given where the kernel's own precision differs from the reference's,
//! and says why (`Case::why`). Pure data movement must be exact (`EXACT`).

mod attention;
mod conv;
mod elementwise;
mod linear;
mod norm;
mod vq;
mod w4a8;

use crate::gpu::{AdapterClass, DType, Tensor};
use crate::graph::{Graph, Plan, Value};
use crate::{Gpu, Result};

/// Only the f32 summation order differs from the reference (see the module comment). The
/// measured maximum on lavapipe is a few 1e-13; 1e-10 leaves room for GPUs whose `exp`, `sqrt`
/// and division are a few ULP off (WGSL allows it).
pub const SAME_VALUES: f64 = 1e-10;

/// Copies, gathers and sign decodes: any difference is a bug.
pub const EXACT: f64 = 0.0;

/// What a case's check returns: (GPU output, not yet read back; CPU reference).
pub type Outputs = (Got, Vec<f32>);

/// A check's GPU outputs, concatenated when read: synchronously natively (`Case::run`), or
/// awaited in the browser, whose main thread cannot block on a readback (`Case::run_async`).
/// Token-id range checks of the lookups are read first: an out-of-range id is the error.
pub struct Got {
    pub tensors: Vec<Tensor>,
    pub id_checks: Vec<crate::kernels::vq::IdCheck>,
}

impl Got {
    pub fn of(tensors: Vec<Tensor>) -> Got {
        Got { tensors, id_checks: Vec::new() }
    }

    pub fn read(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        Gpu::block_on(self.read_async(gpu))
    }

    pub async fn read_async(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        for c in &self.id_checks {
            c.check_async(gpu).await?;
        }
        let mut out = Vec::new();
        for t in &self.tensors {
            out.extend(t.to_vec_f32_async(gpu).await?);
        }
        Ok(out)
    }

    /// These outputs followed by `other`'s.
    pub fn extend(&mut self, other: Got) {
        self.tensors.extend(other.tensors);
        self.id_checks.extend(other.id_checks);
    }
}

pub use linear::table_variants;

/// Builds the inputs (fixed seeds), runs the GPU op and the CPU reference.
pub type Check = Box<dyn Fn(&Gpu) -> Result<Outputs>>;

/// One op on one shape, variant and format, with its bound.
pub struct Case {
    pub op: &'static str,
    pub shape: String,
    /// The kernel variant that runs: a launch-table variant name for the linear layers, else
    /// the launch-table row and feature path (`cpu plan`, `gpu plan, fallback`, ...).
    pub variant: String,
    pub format: String,
    pub bound: f64,
    /// Why the bound is looser than `SAME_VALUES` (empty when it is not).
    pub why: &'static str,
    pub check: Check,
}

impl Case {
    fn new(op: &'static str, shape: impl Into<String>, variant: impl Into<String>, format: impl Into<String>, check: Check) -> Case {
        Case { op, shape: shape.into(), variant: variant.into(), format: format.into(), bound: SAME_VALUES, why: "", check }
    }

    /// This case with a bound other than `SAME_VALUES`, and the reason for it.
    fn bound(self, bound: f64, why: &'static str) -> Case {
        Case { bound, why, ..self }
    }

    /// The name `--filter` matches against: op, shape, variant and format.
    pub fn label(&self) -> String {
        format!("{} {} {} {}", self.op, self.shape, self.variant, self.format)
    }

    /// Runs the check. An error (a refused shape, a lost device) or a non-finite output is a
    /// failure with an infinite NMSE.
    pub fn run(&self, gpu: &Gpu) -> Outcome {
        let result = (self.check)(gpu).and_then(|(got, want)| Ok((got.read(gpu)?, want)));
        Self::outcome(result, self.bound)
    }

    /// `run` without blocking on the readback (the browser's way).
    pub async fn run_async(&self, gpu: &Gpu) -> Outcome {
        let result = match (self.check)(gpu) {
            Ok((got, want)) => got.read_async(gpu).await.map(|g| (g, want)),
            Err(e) => Err(e),
        };
        Self::outcome(result, self.bound)
    }

    fn outcome(result: Result<(Vec<f32>, Vec<f32>)>, bound: f64) -> Outcome {
        let (nmse, error) = match result {
            Ok((got, want)) if got.len() != want.len() => (f64::INFINITY, Some(format!("{} outputs, the reference has {}", got.len(), want.len()))),
            Ok((got, _)) if got.iter().any(|v| !v.is_finite()) => (f64::INFINITY, Some("non-finite output".into())),
            Ok((got, want)) => (crate::metrics::nmse(&got, &want), None),
            Err(e) => (f64::INFINITY, Some(e.to_string())),
        };
        Outcome { nmse, pass: error.is_none() && nmse <= bound, error }
    }
}

/// The result of one case.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub nmse: f64,
    pub pass: bool,
    pub error: Option<String>,
}

/// Every case, named for this adapter's launch-table row and features.
pub fn cases(gpu: &Gpu) -> Vec<Case> {
    let mut all = Vec::new();
    all.extend(linear::cases(gpu));
    all.extend(conv::cases(gpu));
    all.extend(norm::cases(gpu));
    all.extend(elementwise::cases(gpu));
    all.extend(attention::cases(gpu));
    all.extend(vq::cases(gpu));
    all.extend(w4a8::cases(gpu));
    all
}

/// The launch-table row and feature path the non-linear kernels take on `gpu`.
pub fn path_name(gpu: &Gpu) -> String {
    let row = if gpu.class == AdapterClass::Cpu { "cpu plan" } else { "gpu plan" };
    let c = gpu.caps;
    match (c.f16, c.subgroups, c.packed_dot) {
        (false, false, false) => format!("{row}, fallback"),
        (true, true, true) => row.to_string(),
        _ => {
            let missing: Vec<&str> = [("f16", c.f16), ("subgroups", c.subgroups), ("packed_dot", c.packed_dot)]
                .iter()
                .filter(|(_, has)| !has)
                .map(|(n, _)| *n)
                .collect();
            format!("{row}, no {}", missing.join("/"))
        }
    }
}

/// Deterministic values in [-scale, scale).
fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    crate::synthetic::uniform(n, seed, scale)
}

/// Runs a one-op graph on f32 inputs and returns its single output.
fn run_graph(gpu: &Gpu, inputs: &[(&[usize], &[f32])], op: impl FnOnce(&mut Graph, &[Value]) -> Result<Value>) -> Result<Got> {
    let mut g = Graph::new();
    let values: Vec<Value> = inputs.iter().map(|(shape, _)| g.input(shape, DType::F32)).collect();
    let out = op(&mut g, &values)?;
    g.output(out);
    let plan = Plan::new(gpu, g)?;
    for (i, (_, data)) in inputs.iter().enumerate() {
        plan.set_input(gpu, i, data)?;
    }
    let outs = plan.run(gpu)?;
    Ok(Got::of(vec![outs[0].clone()]))
}

/// Runs recorded kernel calls in one submission; `out` is read later.
fn run_kernel(gpu: &Gpu, out: &Tensor, record: impl FnOnce(&mut crate::Encoder) -> Result<()>) -> Result<Got> {
    let mut enc = gpu.encoder();
    record(&mut enc)?;
    gpu.submit(enc)?;
    Ok(Got::of(vec![out.clone()]))
}

/// The shape as `AxBxC`.
fn dims(shape: &[usize]) -> String {
    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}
