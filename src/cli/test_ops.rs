//! `lowbit test-ops [--filter NAME] [--json]`: the op-check registry (`crate::ops_check`) on
//! this adapter, like ggml's test-backend-ops. Each case prints its NMSE against the CPU
//! reference and pass/fail against its bound; any failure makes the command fail.

use std::io::Write;
use std::time::Instant;

use anyhow::bail;

use crate::ops_check::cases;
use crate::Gpu;

#[derive(clap::Args, Debug)]
pub struct TestOpsArgs {
    /// Only cases whose op, shape, variant or format contains NAME (case-sensitive).
    #[arg(long, value_name = "NAME")]
    pub filter: Option<String>,
    /// One JSON object per case: op, shape, variant, format, nmse, bound, pass, adapter.
    #[arg(long)]
    pub json: bool,
}

pub fn run(gpu: &Gpu, args: TestOpsArgs) -> anyhow::Result<()> {
    let adapter = gpu.adapter_name();
    let all = cases(gpu);
    let total = all.len();
    let picked: Vec<_> = all.into_iter().filter(|c| args.filter.as_ref().is_none_or(|f| c.label().contains(f.as_str()))).collect();
    if picked.is_empty() {
        bail!("--filter {:?} matches none of the {total} cases (names are `op shape variant format`)", args.filter.unwrap_or_default());
    }
    if !args.json {
        outln!("adapter: {adapter}  (launch-table row {:?}, caps {:?})", gpu.class, gpu.caps);
        outln!("{:<24} {:<20} {:<30} {:<14} {:>10} {:>8}  result", "op", "shape", "variant", "format", "nmse", "bound");
    }
    let start = Instant::now();
    let mut failed = Vec::new();
    let mut out = std::io::stdout().lock();
    for case in &picked {
        let o = case.run(gpu);
        if args.json {
            let nmse = if o.nmse.is_finite() { serde_json::json!(o.nmse) } else { serde_json::Value::Null };
            let row = serde_json::json!({"op": case.op, "shape": case.shape, "variant": case.variant, "format": case.format,
                "nmse": nmse, "bound": case.bound, "pass": o.pass, "adapter": adapter, "error": o.error});
            writeln!(out, "{row}")?;
        } else {
            let result = match (&o.error, o.pass) {
                (Some(e), _) => format!("FAIL ({e})"),
                (None, true) => "ok".to_string(),
                (None, false) => "FAIL".to_string(),
            };
            writeln!(out, "{:<24} {:<20} {:<30} {:<14} {:>10.3e} {:>8.0e}  {result}", case.op, case.shape, case.variant, case.format, o.nmse, case.bound)?;
        }
        if !o.pass {
            failed.push(format!("{} {} ({}, {}): NMSE {:.3e} > {:.0e}", case.op, case.shape, case.variant, case.format, o.nmse, case.bound));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if !failed.is_empty() {
        bail!("{} of {} cases failed on {adapter}:\n  {}", failed.len(), picked.len(), failed.join("\n  "));
    }
    if !args.json {
        outln!("{} of {} cases passed on {adapter} in {secs:.1} s", picked.len(), picked.len());
    }
    Ok(())
}
