//! Measuring GPU time: timestamp queries around every compute pass where the adapter has them,
//! else wall clock over many dispatches in one submission.

use std::time::Instant;

use super::{Encoder, Gpu};
use crate::{Error, Result};

/// Hands out begin/end timestamp slots, one pair per compute pass.
pub struct PassTimer {
    query_set: wgpu::QuerySet,
    capacity: u32,
    used: u32,
}

impl PassTimer {
    pub(crate) fn next_pass(&mut self) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        if self.used + 2 > self.capacity {
            return None;
        }
        let i = self.used;
        self.used += 2;
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.query_set,
            beginning_of_pass_write_index: Some(i),
            end_of_pass_write_index: Some(i + 1),
        })
    }
}

/// How a measurement was taken, printed next to the number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    Timestamps,
    WallClock,
}

impl Encoder {
    /// Passes recorded so far under a profiler (for grouping timestamps by step).
    pub fn passes_recorded(&self) -> u32 {
        self.profiler.as_ref().map_or(0, |p| p.used / 2)
    }
}

impl Gpu {
    /// An encoder whose next `passes` compute passes each write begin/end timestamps.
    pub fn profiling_encoder(&self, passes: u32) -> Result<Encoder> {
        let mut enc = self.encoder();
        if self.caps.timestamps {
            let capacity = (passes * 2).clamp(2, 4096);
            let query_set = self.scoped(|| {
                self.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("pass timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: capacity,
                })
            })?;
            enc.profiler = Some(PassTimer { query_set, capacity, used: 0 });
        }
        Ok(enc)
    }

    /// Submits a profiling encoder and returns each pass's GPU time in milliseconds.
    pub fn submit_profiled(&self, mut enc: Encoder) -> Result<Vec<f64>> {
        let Some(timer) = enc.profiler.take() else {
            return Err(Error::Invalid("encoder has no timestamp queries".into()));
        };
        let bytes = timer.used as u64 * 8;
        if bytes == 0 {
            self.submit(enc)?;
            return Ok(vec![]);
        }
        let resolve = self.scoped(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        })?;
        enc.raw().resolve_query_set(&timer.query_set, 0..timer.used, &resolve, 0);
        self.submit(enc)?;
        let raw = self.read_bytes(&resolve, bytes)?;
        let ticks: &[u64] = bytemuck::cast_slice(&raw);
        let period = self.queue.get_timestamp_period() as f64;
        Ok(ticks.chunks(2).map(|p| p[1].saturating_sub(p[0]) as f64 * period * 1e-6).collect())
    }

    /// Median time in ms of one call of `step` (which records one or more dispatches), and the
    /// clock used. Timestamps bracket each pass; a step's time is the sum of its passes.
    pub fn time_step(&self, reps: usize, mut step: impl FnMut(&mut Encoder) -> Result<()>) -> Result<(f64, Clock)> {
        // Warm-up: compiles pipelines, faults in memory.
        let mut enc = self.encoder();
        step(&mut enc)?;
        self.submit(enc)?;
        self.wait()?;
        if self.caps.timestamps {
            let mut enc = self.profiling_encoder(4096)?;
            let mut bounds = vec![0u32];
            for _ in 0..reps {
                step(&mut enc)?;
                bounds.push(enc.passes_recorded());
            }
            if *bounds.last().unwrap() * 2 <= 4096 {
                let pass_ms = self.submit_profiled(enc)?;
                let mut per_step: Vec<f64> =
                    bounds.windows(2).map(|w| pass_ms[w[0] as usize..w[1] as usize].iter().sum()).collect();
                if per_step.iter().any(|&t| t > 0.0) {
                    return Ok((median(&mut per_step), Clock::Timestamps));
                }
            }
        }
        // Wall clock: several batches of `reps` steps in one submission each.
        let mut samples = Vec::new();
        for _ in 0..5 {
            let mut enc = self.encoder();
            for _ in 0..reps {
                step(&mut enc)?;
            }
            let t = Instant::now();
            self.submit(enc)?;
            self.wait()?;
            samples.push(t.elapsed().as_secs_f64() * 1e3 / reps as f64);
        }
        Ok((median(&mut samples), Clock::WallClock))
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}
