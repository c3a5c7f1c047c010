//! Memory planning: every storage of a graph gets a buffer, and storages whose lifetimes do not
//! overlap share one. Lifetimes are node indices in execution order: a storage is born at the
//! node that first writes it (graph inputs before the first node) and dies after the last node
//! that reads it (graph inputs and outputs live to the end).
//!
//! The assignment is the greedy one most inference runtimes use: walk the nodes in order, give
//! each new storage the smallest free buffer that fits (or grow the largest free one, or make a
//! new one), and free buffers as storages die. The peak is the sum of the buffers.

use super::ir::Graph;
use crate::{invalid, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Size of each buffer, in bytes.
    pub buffers: Vec<u64>,
    /// The buffer of each storage ([`EXTERNAL`] for storages in a caller's tensor).
    pub assignment: Vec<usize>,
}

/// The assignment of a storage that lives in an external tensor (`Graph::external`).
pub const EXTERNAL: usize = usize::MAX;

impl MemoryPlan {
    /// Bytes of all activation buffers together: the graph's peak GPU memory besides weights.
    pub fn peak_bytes(&self) -> u64 {
        self.buffers.iter().sum()
    }
}

/// Birth and death of each storage, as positions in execution order where 0 is "before the
/// first node" and node i runs at position i + 1.
fn lifetimes(g: &Graph) -> Result<Vec<(usize, usize)>> {
    let end = g.nodes.len() + 1;
    let mut life: Vec<Option<(usize, usize)>> = vec![None; g.storages.len()];
    let mut touch = |s: usize, at: usize| {
        let l = life[s].get_or_insert((at, at));
        l.0 = l.0.min(at);
        l.1 = l.1.max(at);
    };
    for &v in &g.inputs {
        touch(g.values[v.0].storage, 0);
    }
    // Nodes writing each storage, to catch reads of a value after an in-place update.
    let mut writers: Vec<Vec<usize>> = vec![Vec::new(); g.storages.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for &v in &node.inputs {
            let info = &g.values[v.0];
            let born = info.def.map_or(0, |d| d + 1);
            if let Some(&w) = writers[info.storage].iter().find(|&&w| w + 1 > born && w < i) {
                invalid!("graph: node `{}` reads a value that node `{}` already updated in place", node.name, g.nodes[w].name);
            }
            touch(info.storage, i + 1);
        }
        let s = g.values[node.output.0].storage;
        writers[s].push(i);
        touch(s, i + 1);
    }
    // Inputs stay untouched so a plan can run again on the same inputs; outputs are read after.
    for &v in g.outputs.iter().chain(&g.inputs) {
        touch(g.values[v.0].storage, end);
    }
    life.into_iter()
        .enumerate()
        .map(|(s, l)| l.ok_or_else(|| crate::Error::Invalid(format!("graph: storage {s} is never written or read"))))
        .collect()
}

pub fn plan(g: &Graph) -> Result<MemoryPlan> {
    let life = lifetimes(g)?;
    let steps = g.nodes.len() + 2;
    let mut born: Vec<Vec<usize>> = vec![Vec::new(); steps];
    let mut dies: Vec<Vec<usize>> = vec![Vec::new(); steps];
    for (s, &(first, last)) in life.iter().enumerate() {
        if g.storages[s].external.is_some() {
            continue;
        }
        born[first].push(s);
        dies[last].push(s);
    }
    let mut buffers: Vec<u64> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut assignment = vec![EXTERNAL; g.storages.len()];
    for t in 0..steps {
        for &s in &born[t] {
            let need = g.storages[s].bytes;
            let fitting = free.iter().enumerate().filter(|(_, &b)| buffers[b] >= need).min_by_key(|(_, &b)| buffers[b]);
            let pick = fitting.or_else(|| free.iter().enumerate().max_by_key(|(_, &b)| buffers[b])).map(|(i, _)| i);
            let b = match pick {
                Some(i) => free.swap_remove(i),
                None => {
                    buffers.push(0);
                    buffers.len() - 1
                }
            };
            buffers[b] = buffers[b].max(need);
            assignment[s] = b;
        }
        for &s in &dies[t] {
            free.push(assignment[s]);
        }
    }
    Ok(MemoryPlan { buffers, assignment })
}

/// One buffer per storage: no sharing (the baseline the planner is measured and tested against).
pub fn unshared(g: &Graph) -> MemoryPlan {
    let mut plan = MemoryPlan { buffers: vec![], assignment: vec![] };
    for s in &g.storages {
        plan.assignment.push(if s.external.is_some() { EXTERNAL } else { plan.buffers.len() });
        if s.external.is_none() {
            plan.buffers.push(s.bytes);
        }
    }
    plan
}
