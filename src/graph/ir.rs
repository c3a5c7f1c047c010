//! The graph: values (tensor shapes, no memory yet) and the nodes that produce them.
//!
//! A model builds one graph per input shape by calling the op vocabulary in `ops.rs`, which
//! infers each output's shape and checks its inputs as it goes. Nothing touches the GPU until
//! `Plan::new` gives every value a buffer.

use crate::gpu::{DType, Tensor};
use crate::{invalid, Encoder, Gpu, Result};

/// A tensor in a graph: the handle model code passes between ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Value(pub(crate) usize);

/// What a node records: its dispatches, reading `inputs` and writing `out`. Layers (weights
/// already on the GPU) are captured by the closure.
pub type Record = Box<dyn Fn(&Gpu, &mut Encoder, &[&Tensor], &Tensor) -> Result<()>>;

pub(crate) struct ValueInfo {
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// Values that share memory (reshapes, in-place updates) share a storage.
    pub storage: usize,
    /// The node that produced it; None for graph inputs and for reshapes of inputs.
    pub def: Option<usize>,
}

pub(crate) struct Node {
    /// The checkpoint name of the layer (or the op), shown by `--profile`.
    pub name: String,
    /// The op kind ("linear", "conv2d", ...), for totals per kind.
    pub op: &'static str,
    pub inputs: Vec<Value>,
    pub output: Value,
    pub record: Record,
}

/// Memory behind one or more values.
pub(crate) struct StorageInfo {
    pub bytes: u64,
    pub is_input: bool,
    pub is_output: bool,
    /// A tensor that outlives the plan (a KV cache, a position counter): the planner gives it
    /// no buffer, and what nodes write there stays for the next run.
    pub external: Option<Tensor>,
}

#[derive(Default)]
pub struct Graph {
    pub(crate) values: Vec<ValueInfo>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) storages: Vec<StorageInfo>,
    pub(crate) inputs: Vec<Value>,
    pub(crate) outputs: Vec<Value>,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// A value the caller fills before each run (`Plan::set_input`).
    pub fn input(&mut self, shape: &[usize], dtype: DType) -> Value {
        let storage = self.new_storage(shape, dtype);
        self.storages[storage].is_input = true;
        let v = self.push_value(shape, dtype, storage, None);
        self.inputs.push(v);
        v
    }

    /// A value living in `t`, which the caller owns and keeps between runs (state such as a KV
    /// cache). Nodes may update it in place (`node_inplace`); the planner leaves it alone.
    pub fn external(&mut self, t: &Tensor) -> Value {
        let storage = self.new_storage(&t.shape, t.dtype);
        self.storages[storage].external = Some(t.clone());
        self.push_value(&t.shape, t.dtype, storage, None)
    }

    /// Marks `v` as a result of the graph: its memory is never reused, and `Plan::run`
    /// returns it.
    pub fn output(&mut self, v: Value) {
        let s = self.values[v.0].storage;
        self.storages[s].is_output = true;
        self.outputs.push(v);
    }

    pub fn shape(&self, v: Value) -> &[usize] {
        &self.values[v.0].shape
    }

    pub fn dtype(&self, v: Value) -> DType {
        self.values[v.0].dtype
    }

    /// The same memory seen with another shape of as many elements.
    pub fn reshape(&mut self, v: Value, shape: &[usize]) -> Result<Value> {
        let info = &self.values[v.0];
        let (have, want) = (info.shape.iter().product::<usize>(), shape.iter().product::<usize>());
        if have != want {
            invalid!("reshape {:?} → {shape:?}: {have} elements vs {want}", info.shape);
        }
        let (dtype, storage, def) = (info.dtype, info.storage, info.def);
        Ok(self.push_value(shape, dtype, storage, def))
    }

    /// A node writing a new value of `shape`; `record` gets the input tensors and the output.
    pub fn node(
        &mut self,
        name: impl Into<String>,
        op: &'static str,
        inputs: &[Value],
        shape: &[usize],
        dtype: DType,
        record: impl Fn(&Gpu, &mut Encoder, &[&Tensor], &Tensor) -> Result<()> + 'static,
    ) -> Value {
        let storage = self.new_storage(shape, dtype);
        self.push_node(name.into(), op, inputs, shape, dtype, storage, Box::new(record))
    }

    /// A node that updates `target` in place (a residual add): the result is a new value in
    /// `target`'s memory, and `target` itself may not be read afterwards (the planner checks).
    /// `record` gets `others` as inputs and `target`'s tensor as its output.
    pub fn node_inplace(
        &mut self,
        name: impl Into<String>,
        op: &'static str,
        target: Value,
        others: &[Value],
        record: impl Fn(&Gpu, &mut Encoder, &[&Tensor], &Tensor) -> Result<()> + 'static,
    ) -> Value {
        let info = &self.values[target.0];
        let (shape, dtype, storage) = (info.shape.clone(), info.dtype, info.storage);
        let mut inputs = vec![target];
        inputs.extend_from_slice(others);
        // The target travels as input 0 for liveness; the closure sees only the others.
        let record: Record = Box::new(move |gpu, enc, ins, out| record(gpu, enc, &ins[1..], out));
        self.push_node(name.into(), op, &inputs, &shape, dtype, storage, record)
    }

    /// Bytes of every value if none shared memory (what the planner saves against); external
    /// tensors not included.
    pub fn unplanned_bytes(&self) -> u64 {
        self.storages.iter().filter(|s| s.external.is_none()).map(|s| s.bytes).sum()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn new_storage(&mut self, shape: &[usize], dtype: DType) -> usize {
        let bytes = (shape.iter().product::<usize>() * dtype.size()) as u64;
        self.storages.push(StorageInfo { bytes, is_input: false, is_output: false, external: None });
        self.storages.len() - 1
    }

    fn push_value(&mut self, shape: &[usize], dtype: DType, storage: usize, def: Option<usize>) -> Value {
        self.values.push(ValueInfo { shape: shape.to_vec(), dtype, storage, def });
        Value(self.values.len() - 1)
    }

    #[allow(clippy::too_many_arguments)]
    fn push_node(&mut self, name: String, op: &'static str, inputs: &[Value], shape: &[usize], dtype: DType, storage: usize, record: Record) -> Value {
        let output = self.push_value(shape, dtype, storage, Some(self.nodes.len()));
        self.nodes.push(Node { name, op, inputs: inputs.to_vec(), output, record });
        output
    }
}
