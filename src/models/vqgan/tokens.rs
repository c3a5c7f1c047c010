//! Token grids as a tokenizer writes them: an integer tensor [B, h, w] in a `.safetensors`
//! file (i32, i64 or u32; PyTorch's default is i64).

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::kernels::vq::check_ids;
use crate::{invalid, shape_err, Error, Result};

/// Token ids [batch, height, width], row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenGrid {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    /// Widened to i64 so negative ids survive to the range check and its message.
    pub ids: Vec<i64>,
}

impl TokenGrid {
    pub fn new(shape: &[usize], ids: Vec<i64>) -> Result<TokenGrid> {
        let &[batch, height, width] = shape else { shape_err!("tokens must be [B, h, w], got shape {shape:?}") };
        if batch == 0 || height == 0 || width == 0 {
            shape_err!("tokens of shape {shape:?}: every dimension must be non-zero");
        }
        if ids.len() != batch * height * width {
            shape_err!("tokens of shape {shape:?} need {} ids, got {}", batch * height * width, ids.len());
        }
        Ok(TokenGrid { batch, height, width, ids })
    }

    pub fn shape(&self) -> [usize; 3] {
        [self.batch, self.height, self.width]
    }

    /// Errors on the first id outside a codebook of `n_embed` entries, naming it.
    pub fn check(&self, n_embed: usize) -> Result<()> {
        check_ids(&self.ids, n_embed)
    }

    /// Reads tensor `name` of a safetensors file.
    pub fn load(path: &Path, name: &str) -> Result<TokenGrid> {
        let bytes = crate::models::files::read_limited(path, "tokens", crate::models::files::MAX_TOKENS_BYTES)?;
        Self::from_bytes(&bytes, name, &path.display().to_string())
    }

    /// Parses tensor `name` out of safetensors bytes; `source` names them in errors.
    pub fn from_bytes(bytes: &[u8], name: &str, source: &str) -> Result<TokenGrid> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Invalid(format!("tokens {source}: not a valid safetensors file: {e}")))?;
        let view = st.tensor(name).map_err(|_| {
            let names: Vec<_> = st.names();
            Error::Invalid(format!("tokens {source}: no tensor named {name} (has {names:?})"))
        })?;
        let raw = view.data();
        let ids: Vec<i64> = match view.dtype() {
            Dtype::I64 => raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
            Dtype::I32 => raw.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect(),
            Dtype::U32 => raw.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as i64).collect(),
            other => invalid!("tokens {source}: tensor {name} has dtype {other:?}; token ids must be I32, I64 or U32"),
        };
        Self::new(view.shape(), ids).map_err(|e| Error::Invalid(format!("tokens {source}: {e}")))
    }

    /// Writes the grid as tensor `name`, i32 [B, h, w].
    pub fn save(&self, path: &Path, name: &str) -> Result<()> {
        let ids = self
            .ids
            .iter()
            .map(|&id| i32::try_from(id).map_err(|_| Error::Invalid(format!("token id {id} does not fit i32"))))
            .collect::<Result<Vec<i32>>>()?;
        let view = safetensors::tensor::TensorView::new(Dtype::I32, self.shape().to_vec(), bytemuck::cast_slice(&ids))
            .map_err(|e| Error::Invalid(format!("tokens: {e}")))?;
        safetensors::serialize_to_file([(name, view)], None, path).map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))
    }
}
