//! A planned graph: buffers made once, every node recorded into one command encoder per run,
//! and bind groups kept from run to run (the buffers never change, so neither do they).

use std::sync::{Arc, Mutex};
// std's Instant panics in the browser; web-time's reads `performance.now()` there.
use web_time::Instant;

use super::ir::Graph;
use super::planner::{plan, MemoryPlan, EXTERNAL};
use crate::gpu::{BindGroupCache, DType, Tensor};
use crate::{invalid, Encoder, Error, Gpu, Result};

pub struct Plan {
    graph: Graph,
    memory: MemoryPlan,
    /// One tensor per graph value: a view of its planned buffer.
    tensors: Vec<Tensor>,
    bind_groups: Arc<Mutex<BindGroupCache>>,
}

/// A graph's input shapes, which tell the user what made it large (`inputs [100000, 3, 224, 224]`).
fn describe_inputs(g: &Graph) -> String {
    let shapes: Vec<String> = g.inputs.iter().map(|v| format!("{:?}", g.values[v.0].shape)).collect();
    if shapes.is_empty() {
        "no inputs".into()
    } else {
        format!("inputs {}", shapes.join(", "))
    }
}

/// GPU time of one node in a profiled run.
#[derive(Clone, Debug)]
pub struct NodeTime {
    pub name: String,
    pub op: &'static str,
    pub ms: f64,
}

impl Plan {
    /// Plans `graph`'s memory and creates its buffers. Each buffer must fit one storage
    /// binding; a graph whose activations do not is refused with the size it would need.
    pub fn new(gpu: &Gpu, graph: Graph) -> Result<Plan> {
        let memory = plan(&graph)?;
        Self::with_memory(gpu, graph, memory)
    }

    /// A plan with a given buffer assignment (tests compare the planner's against one buffer
    /// per storage).
    pub fn with_memory(gpu: &Gpu, graph: Graph, memory: MemoryPlan) -> Result<Plan> {
        let fits = |(s, &b): (usize, &usize)| match &graph.storages[s].external {
            Some(_) => b == EXTERNAL,
            None => b < memory.buffers.len(),
        };
        if memory.assignment.len() != graph.storages.len() || !memory.assignment.iter().enumerate().all(fits) {
            invalid!("memory plan does not fit the graph");
        }
        // Every buffer and their total are checked before the first is created, so a graph
        // too large for this GPU (a huge batch or image) fails before any work is submitted.
        for &bytes in &memory.buffers {
            gpu.check_buffer(bytes, format_args!("one activation buffer of this graph ({})", describe_inputs(&graph)))?;
        }
        gpu.check_budget(memory.peak_bytes(), format_args!("the activations of this graph ({})", describe_inputs(&graph)))?;
        let buffers = memory
            .buffers
            .iter()
            .map(|&bytes| Tensor::zeros(gpu, &[(bytes as usize).div_ceil(4).max(1)], DType::U32).map(|t| t.buffer))
            .collect::<Result<Vec<_>>>()?;
        let tensors = graph
            .values
            .iter()
            .map(|v| {
                let buffer = match &graph.storages[v.storage].external {
                    Some(t) => t.buffer.clone(),
                    None => buffers[memory.assignment[v.storage]].clone(),
                };
                Tensor { buffer, shape: v.shape.clone(), dtype: v.dtype }
            })
            .collect();
        Ok(Plan { graph, memory, tensors, bind_groups: Default::default() })
    }

    /// A plan that keeps every value in its own buffer, so all of them can be read after a run
    /// (calibration reads each layer's inputs through `node_values`).
    pub fn unshared(gpu: &Gpu, graph: Graph) -> Result<Plan> {
        let memory = super::planner::unshared(&graph);
        Self::with_memory(gpu, graph, memory)
    }

    /// The names and op kinds of the nodes, in execution order.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.graph.nodes.iter().map(|n| (n.name.as_str(), n.op))
    }

    /// The input tensors and the output tensor of node `name` after a run. With shared memory
    /// (`Plan::new`) a value may since have been overwritten: use `Plan::unshared` to read them.
    pub fn node_values(&self, name: &str) -> Result<(Vec<Tensor>, Tensor)> {
        let Some(node) = self.graph.nodes.iter().find(|n| n.name == name) else { invalid!("graph has no node `{name}`") };
        let inputs = node.inputs.iter().map(|v| self.tensors[v.0].clone()).collect();
        Ok((inputs, self.tensors[node.output.0].clone()))
    }

    /// Fills every buffer with `word` (tests: results must not depend on what buffers held).
    pub fn fill_buffers(&self, gpu: &Gpu, word: u32) {
        let planned = self.tensors.iter().zip(&self.graph.values).filter(|(_, v)| self.graph.storages[v.storage].external.is_none());
        for (t, _) in planned {
            let words = vec![word; (t.buffer.size() / 4) as usize];
            gpu.queue.write_buffer(&t.buffer, 0, bytemuck::cast_slice(&words));
        }
    }

    /// Bytes of the planned activation buffers (weights not included).
    pub fn peak_bytes(&self) -> u64 {
        self.memory.peak_bytes()
    }

    /// Bytes the same graph would take with a buffer per value.
    pub fn unplanned_bytes(&self) -> u64 {
        self.graph.unplanned_bytes()
    }

    pub fn memory(&self) -> &MemoryPlan {
        &self.memory
    }

    /// Bind groups kept for the next run.
    pub fn cached_bind_groups(&self) -> usize {
        self.bind_groups.lock().unwrap().len()
    }

    pub fn node_count(&self) -> usize {
        self.graph.nodes.len()
    }

    /// The tensor of graph input `i`, to be filled before `run`.
    pub fn input(&self, i: usize) -> Result<&Tensor> {
        match self.graph.inputs.get(i) {
            Some(v) => Ok(&self.tensors[v.0]),
            None => invalid!("graph has {} inputs, asked for input {i}", self.graph.inputs.len()),
        }
    }

    /// Writes `data` into input `i` (its length must match the input's shape).
    pub fn set_input<T: bytemuck::Pod>(&self, gpu: &Gpu, i: usize, data: &[T]) -> Result<()> {
        let t = self.input(i)?;
        if std::mem::size_of_val(data) as u64 != t.bytes() {
            invalid!("graph input {i} is {:?} {:?}, got {} bytes", t.dtype, t.shape, std::mem::size_of_val(data));
        }
        gpu.queue.write_buffer(&t.buffer, 0, bytemuck::cast_slice(data));
        Ok(())
    }

    /// The output tensors: views of planned buffers, overwritten by the next run.
    pub fn outputs(&self) -> Vec<Tensor> {
        self.graph.outputs.iter().map(|v| self.tensors[v.0].clone()).collect()
    }

    /// Records every node into `enc`.
    pub fn record(&self, gpu: &Gpu, enc: &mut Encoder) -> Result<Vec<Tensor>> {
        let saved = enc.bind_groups.replace(self.bind_groups.clone());
        let result = self.graph.nodes.iter().try_for_each(|node| self.record_node(gpu, enc, node));
        self.bind_groups.lock().unwrap().end_run();
        enc.bind_groups = saved;
        result.map(|()| self.outputs())
    }

    /// One forward pass: one encoder, one submission. Read the outputs before the next run.
    pub fn run(&self, gpu: &Gpu) -> Result<Vec<Tensor>> {
        let mut enc = gpu.encoder();
        let out = self.record(gpu, &mut enc)?;
        gpu.submit(enc)?;
        Ok(out)
    }

    /// `run` with the inputs copied from GPU tensors (same shapes and dtypes as the graph's
    /// inputs) in the same submission.
    pub fn run_with(&self, gpu: &Gpu, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        if inputs.len() != self.graph.inputs.len() {
            invalid!("graph takes {} inputs, got {}", self.graph.inputs.len(), inputs.len());
        }
        let mut enc = gpu.encoder();
        for (i, t) in inputs.iter().enumerate() {
            let dst = self.input(i)?;
            if t.shape != dst.shape || t.dtype != dst.dtype {
                return Err(Error::Shape(format!("graph input {i} is {:?} {:?}, got {:?} {:?}", dst.dtype, dst.shape, t.dtype, t.shape)));
            }
            enc.raw().copy_buffer_to_buffer(&t.buffer, 0, &dst.buffer, 0, Some(t.bytes()));
        }
        let out = self.record(gpu, &mut enc)?;
        gpu.submit(enc)?;
        Ok(out)
    }

    /// A run that also measures each node: GPU timestamps around every dispatch where the
    /// adapter has them, else wall clock around each node submitted on its own.
    pub fn profile(&self, gpu: &Gpu) -> Result<(Vec<Tensor>, Vec<NodeTime>)> {
        if gpu.caps.timestamps {
            if let Some(times) = self.timestamp_times(gpu)? {
                return Ok((self.outputs(), times));
            }
        }
        Gpu::block_on(self.profile_async(gpu))
    }

    /// Each node on its own, timed by the wall clock from its submission until the GPU reports
    /// it done. The browser's way (its queue reports completion through the event loop, which
    /// adds its latency to each node); natively the fallback where timestamps are missing.
    pub async fn profile_async(&self, gpu: &Gpu) -> Result<(Vec<Tensor>, Vec<NodeTime>)> {
        // Warm-up: pipelines compile on first use and would dominate the first node's time.
        self.run(gpu)?;
        gpu.done_async().await?;
        let mut times = Vec::with_capacity(self.graph.nodes.len());
        for node in &self.graph.nodes {
            let mut enc = gpu.encoder();
            enc.bind_groups = Some(self.bind_groups.clone());
            self.record_node(gpu, &mut enc, node)?;
            let start = Instant::now();
            gpu.submit(enc)?;
            gpu.done_async().await?;
            times.push(NodeTime { name: node.name.clone(), op: node.op, ms: start.elapsed().as_secs_f64() * 1e3 });
        }
        self.bind_groups.lock().unwrap().end_run();
        Ok((self.outputs(), times))
    }

    /// Per-node times from GPU timestamps around every pass; None past the query budget.
    fn timestamp_times(&self, gpu: &Gpu) -> Result<Option<Vec<NodeTime>>> {
        self.run(gpu)?;
        gpu.wait()?;
        let nodes = &self.graph.nodes;
        let mut enc = gpu.profiling_encoder(4096)?;
        enc.bind_groups = Some(self.bind_groups.clone());
        let mut bounds = vec![0u32];
        for node in nodes {
            self.record_node(gpu, &mut enc, node)?;
            bounds.push(enc.passes_recorded());
        }
        self.bind_groups.lock().unwrap().end_run();
        if *bounds.last().unwrap() >= 2048 {
            gpu.submit(enc)?;
            return Ok(None);
        }
        let pass_ms = gpu.submit_profiled(enc)?;
        let times = nodes
            .iter()
            .zip(bounds.windows(2))
            .map(|(n, w)| NodeTime { name: n.name.clone(), op: n.op, ms: pass_ms[w[0] as usize..w[1] as usize].iter().sum() })
            .collect();
        Ok(Some(times))
    }

    fn record_node(&self, gpu: &Gpu, enc: &mut Encoder, node: &super::ir::Node) -> Result<()> {
        let inputs: Vec<&Tensor> = node.inputs.iter().map(|v| &self.tensors[v.0]).collect();
        // Name the node in argument errors; GPU failures (lost device, OOM) pass unchanged.
        (node.record)(gpu, enc, &inputs, &self.tensors[node.output.0]).map_err(|e| match e {
            Error::Shape(m) => Error::Shape(format!("node `{}` ({}): {m}", node.name, node.op)),
            Error::Invalid(m) => Error::Invalid(format!("node `{}` ({}): {m}", node.name, node.op)),
            other => other,
        })
    }
}

/// Node times summed per op kind, largest first, with each kind's node count.
pub fn totals_per_op(times: &[NodeTime]) -> Vec<(&'static str, usize, f64)> {
    let mut totals: Vec<(&'static str, usize, f64)> = Vec::new();
    for t in times {
        match totals.iter_mut().find(|(op, ..)| *op == t.op) {
            Some(e) => {
                e.1 += 1;
                e.2 += t.ms;
            }
            None => totals.push((t.op, 1, t.ms)),
        }
    }
    totals.sort_by(|a, b| b.2.total_cmp(&a.2));
    totals
}
