//! The graph executor: models describe their forward pass as a graph of ops on shaped values
//! (`ir`, `ops`); the planner gives every value a buffer, sharing buffers between values whose
//! lifetimes do not overlap (`planner`); a `Plan` records the whole pass into one command
//! encoder, reusing its bind groups from run to run, and can time every node (`executor`).
//!
//! ```text
//! let mut g = Graph::new();
//! let x = g.input(&[1, 197, 192], DType::F32);
//! let h = g.layer_norm("blocks.0.norm1", x, &norm1, 1e-6)?;
//! let qkv = g.linear("blocks.0.attn.qkv", &qkv_layer, h, None)?;
//! ...
//! g.output(logits);
//! let plan = Plan::new(&gpu, g)?;   // buffers, peak memory
//! plan.set_input(&gpu, 0, &pixels)?;
//! let [logits] = plan.run(&gpu)?[..] else { .. };
//! ```

mod executor;
mod ir;
mod ops;
mod ops_decode;
mod ops_quant;
mod planner;

pub use executor::{totals_per_op, NodeTime, Plan};
pub use ir::{Graph, Record, Value};
pub use ops::{Linear, Norm};
pub use planner::{plan, unshared, MemoryPlan};
