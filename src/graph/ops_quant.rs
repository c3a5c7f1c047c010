//! Graph ops whose activations run in low precision: the W8A8 Linear (per-token dynamic int8
//! activations × int8 weights, i32 accumulation: `kernels::w8a8`), used by checkpoints that
//! `lowbit quantize --recipe w8a8` wrote.

use std::sync::{Arc, OnceLock};

use super::ir::{Graph, Value};
use crate::gpu::DType;
use crate::kernels::w8a8::{w8a8_forward, QuantizedActivations, W8A8Linear};
use crate::{shape_err, Result};

impl Graph {
    /// `x [..., in] → [..., out]`: quantize each token of x to int8 (absmax scale), then the
    /// integer GEMM with the layer's int8 weights (and its GELU, if it has one).
    pub fn w8a8_linear(&mut self, name: &str, layer: &Arc<W8A8Linear>, x: Value) -> Result<Value> {
        let Some((&width, rest)) = self.shape(x).split_last() else { shape_err!("{name}: a scalar input") };
        if width != layer.cols {
            shape_err!("{name}: input width {width}, the layer takes {}", layer.cols);
        }
        let rows: usize = rest.iter().product();
        let mut shape = self.shape(x).to_vec();
        *shape.last_mut().unwrap() = layer.rows;
        let layer = layer.clone();
        // The int8 codes of x: made on the first run, reused by later runs of the plan.
        let scratch: OnceLock<QuantizedActivations> = OnceLock::new();
        Ok(self.node(name, "w8a8_linear", &[x], &shape, DType::F32, move |gpu, enc, i, out| {
            if scratch.get().is_none() {
                let _ = scratch.set(QuantizedActivations::new(gpu, rows, layer.cols)?);
            }
            w8a8_forward(gpu, enc, &layer, i[0], scratch.get().unwrap(), out)
        }))
    }
}
