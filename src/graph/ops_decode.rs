//! Graph ops of autoregressive decoding, over state kept between runs (`Graph::external`): the
//! token + position embedding at the current position, appending K and V to a layer's cache,
//! and causal attention of the new queries over it (`kernels::attention::kv_cache`). The
//! position is a GPU word the caller moves between runs, so a decoding step is one plan run
//! again and again with the same bind groups.

use super::ir::{Graph, Value};
use crate::gpu::{DType, Tensor};
use crate::kernels::attention::kv_cache::{embed_at, kv_append, kv_attend, KvCache, Position};
use crate::{shape_err, Result};

impl Graph {
    /// A layer's KV cache as graph state: one value standing for its K and V (the nodes get
    /// the cache itself).
    pub fn kv_cache(&mut self, cache: &KvCache) -> Value {
        self.external(&cache.k)
    }

    /// `tok_emb[ids] + pos_emb[position + t]` for `ids` u32 [B, T]: [B, T, E].
    pub fn embed_at(&mut self, name: &str, ids: Value, tok_emb: &Tensor, pos_emb: &Tensor, pos: &Position) -> Result<Value> {
        let &[b, t] = self.shape(ids) else { shape_err!("{name}: ids must be [B, T], got {:?}", self.shape(ids)) };
        let &[_, e] = &tok_emb.shape[..] else { shape_err!("{name}: token embedding must be [V, E], got {:?}", tok_emb.shape) };
        let (tok_emb, pos_emb, pos) = (tok_emb.clone(), pos_emb.clone(), pos.clone());
        Ok(self.node(name, "embed", &[ids], &[b, t, e], DType::F32, move |gpu, enc, i, out| {
            embed_at(gpu, enc, i[0], &tok_emb, &pos_emb, &pos, out)
        }))
    }

    /// Writes the K and V of `qkv` [B, T, 3E] into `cache` at the position; returns the
    /// cache's new state (`state` is its old one).
    pub fn kv_append(&mut self, name: &str, state: Value, qkv: Value, cache: &KvCache, pos: &Position) -> Result<Value> {
        let (cache, pos) = (cache.clone(), pos.clone());
        Ok(self.node_inplace(name, "kv_append", state, &[qkv], move |gpu, enc, i, _| kv_append(gpu, enc, i[0], &cache, &pos)))
    }

    /// Causal attention of `qkv`'s queries over the cache (`state`, after this step's
    /// `kv_append`): [B, T, E].
    pub fn kv_attend(&mut self, name: &str, qkv: Value, state: Value, cache: &KvCache, pos: &Position) -> Result<Value> {
        let &[b, t, w] = self.shape(qkv) else { shape_err!("{name}: qkv must be [B, T, 3E], got {:?}", self.shape(qkv)) };
        let (cache, pos) = (cache.clone(), pos.clone());
        Ok(self.node(name, "kv_attend", &[qkv, state], &[b, t, w / 3], DType::F32, move |gpu, enc, i, out| {
            kv_attend(gpu, enc, i[0], &cache, &pos, out)
        }))
    }
}
