//! The float forward pass as calibration sees it: what each Linear and attention node of the
//! GPU graph (`forward.rs`) reads, under the graph's node names and shapes. On a CPU adapter
//! (lavapipe) the quantizer's calibration passes run here instead of through the graph: the same
//! f32 arithmetic, several times faster on the same cores (matrixmultiply's packed kernels
//! against lavapipe's f32 GEMM; `quant::calibrate::Forward`).

use super::layers::activate;
use super::{CpuVit, Embedded, Trace, BLOCK_LINEARS};
use crate::Result;

/// One node's input in one forward pass: the graph node's name, its first input (values and
/// shape) and its output's shape.
pub struct NodeInput<'x> {
    pub node: &'x str,
    pub values: &'x [f32],
    pub shape: &'x [usize],
    pub out_shape: &'x [usize],
}

impl CpuVit<'_> {
    /// Whether `visit_inputs` hands out the input of graph node `node`.
    pub fn sees(node: &str) -> bool {
        let in_block = node.strip_prefix("blocks.").and_then(|rest| rest.split_once('.')).is_some_and(|(i, n)| i.parse::<usize>().is_ok() && (n == "attn" || BLOCK_LINEARS.contains(&n)));
        in_block || matches!(node, "patch_embed.proj" | "head" | "head_dist")
    }

    /// Runs `images` ([n, 3, S, S], preprocessed) and hands `visit` the input of every node
    /// `wanted` names, in forward order: `patch_embed.proj` (the images), per block
    /// `blocks.{i}.attn.qkv`, `blocks.{i}.attn` (the fused qkv, after qk_norm),
    /// `blocks.{i}.attn.proj`, `blocks.{i}.mlp.fc1`, `blocks.{i}.mlp.fc2` (after the
    /// activation), then `head` and `head_dist`. The model's outputs come back. Each block's
    /// intermediate values are dropped before the next block runs.
    pub fn visit_inputs(&self, images: &[f32], wanted: &dyn Fn(&str) -> bool, visit: &mut dyn FnMut(NodeInput) -> Result<()>) -> Result<Vec<f32>> {
        let c = self.c;
        let (s, d, t, hidden, g) = (c.img_size, c.embed_dim, c.tokens(), c.mlp_hidden(), c.grid());
        let Embedded { mut x, images: n, .. } = self.embed_traced(images)?;
        if wanted("patch_embed.proj") {
            visit(NodeInput { node: "patch_embed.proj", values: images, shape: &[n, 3, s, s], out_shape: &[n, g * g, d] })?;
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let cache = self.block_forward(b, &mut x, n)?;
            let node = |linear: &str| format!("blocks.{i}.{linear}");
            let mut emit = |linear: &str, values: &[f32], width: usize, out: usize| -> Result<()> {
                let name = node(linear);
                if !wanted(&name) {
                    return Ok(());
                }
                visit(NodeInput { node: &name, values, shape: &[n, t, width], out_shape: &[n, t, out] })
            };
            if wanted(&node("attn.qkv")) {
                emit("attn.qkv", &b.norm1.output(&cache.ln1), d, 3 * d)?;
            }
            emit("attn", cache.qk_normed.as_ref().map_or(&cache.qkv, |q| &q.0), 3 * d, d)?;
            emit("attn.proj", &cache.heads, d, d)?;
            if wanted(&node("mlp.fc1")) {
                emit("mlp.fc1", &b.norm2.output(&cache.ln2), d, hidden)?;
            }
            if wanted(&node("mlp.fc2")) {
                let act: Vec<f32> = activate(c.act, &cache.pre_act);
                emit("mlp.fc2", &act, hidden, d)?;
            }
        }
        let mut trace = Trace::empty(n);
        let out = self.head_forward(&x, &mut trace);
        for (node, values, head) in [("head", &trace.head_in, &self.head), ("head_dist", &trace.dist_in, &self.head_dist)] {
            if let Some(h) = head.as_ref().filter(|_| wanted(node)) {
                // Pooled features [n, D], or every token without pooling ([n, T, D]).
                let per_image = values.len() / (n * d);
                let (shape, out_shape) = if per_image == 1 { (vec![n, d], vec![n, h.out]) } else { (vec![n, per_image, d], vec![n, per_image, h.out]) };
                visit(NodeInput { node, values, shape: &shape, out_shape: &out_shape })?;
            }
        }
        Ok(out)
    }
}
