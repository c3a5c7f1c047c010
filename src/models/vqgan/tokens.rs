//! Token grids as a tokenizer writes them: an integer tensor [B, h, w] in a `.safetensors`
//! file (i32, i64 or u32; PyTorch's default is i64), or [B, S, h, w] for tokenizers with S
//! ids per position (FQGAN's sub-codebooks, a residual quantizer's stages, WeTok's groups).

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::kernels::vq::check_ids;
use crate::{invalid, shape_err, Error, Result};

/// Token ids [batch, height, width] or [batch, codes, height, width], row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenGrid {
    pub batch: usize,
    /// S of a [B, S, h, w] grid; None for [B, h, w] (one id per position).
    pub codes: Option<usize>,
    pub height: usize,
    pub width: usize,
    /// Widened to i64 so negative ids survive to the range check and its message.
    pub ids: Vec<i64>,
}

impl TokenGrid {
    /// A grid of shape [B, h, w] or [B, S, h, w].
    pub fn new(shape: &[usize], ids: Vec<i64>) -> Result<TokenGrid> {
        let (batch, codes, height, width) = match *shape {
            [b, h, w] => (b, None, h, w),
            [b, s, h, w] => (b, Some(s), h, w),
            _ => shape_err!("tokens must be [B, h, w] (or [B, S, h, w] with S ids per position), got shape {shape:?}"),
        };
        if shape.contains(&0) {
            shape_err!("tokens of shape {shape:?}: every dimension must be non-zero");
        }
        let n: usize = shape.iter().product();
        if ids.len() != n {
            shape_err!("tokens of shape {shape:?} need {n} ids, got {}", ids.len());
        }
        Ok(TokenGrid { batch, codes, height, width, ids })
    }

    /// [B, h, w]: the grid of positions, whatever the ids per position.
    pub fn shape(&self) -> [usize; 3] {
        [self.batch, self.height, self.width]
    }

    /// The tensor's full shape: [B, h, w] or [B, S, h, w].
    pub fn dims(&self) -> Vec<usize> {
        match self.codes {
            None => vec![self.batch, self.height, self.width],
            Some(s) => vec![self.batch, s, self.height, self.width],
        }
    }

    /// Ids per position (S, or 1 for a [B, h, w] grid).
    pub fn codes_per_position(&self) -> usize {
        self.codes.unwrap_or(1)
    }

    /// Errors on the first id outside a codebook of `n_embed` entries, naming it.
    pub fn check(&self, n_embed: usize) -> Result<()> {
        check_ids(&self.ids, n_embed)
    }

    /// Checks the grid against a tokenizer with one codebook per entry of `sizes` (its
    /// sub-codebooks or stages): a [B, h, w] grid only fits one codebook, a [B, S, h, w] grid
    /// needs S = sizes.len(), and an id outside its sub-codebook is named with it.
    pub fn check_codebooks(&self, sizes: &[usize], what: &str) -> Result<()> {
        match (self.codes, sizes) {
            (None, [k]) => return self.check(*k),
            (None, _) => shape_err!("tokens {:?} have one id per position, but the {what} takes {} per position: [B, {}, h, w]", self.dims(), sizes.len(), sizes.len()),
            (Some(s), _) if s != sizes.len() => {
                shape_err!("tokens {:?} have {s} ids per position, but the {what} takes {}: [B, {}, h, w]", self.dims(), sizes.len(), sizes.len())
            }
            _ => {}
        }
        let plane = self.height * self.width;
        for (i, plane_ids) in self.ids.chunks(plane).enumerate() {
            let (b, s) = (i / sizes.len(), i % sizes.len());
            if let Some(p) = plane_ids.iter().position(|&id| id < 0 || id as u64 >= sizes[s] as u64) {
                let (y, x) = (p / self.width, p % self.width);
                invalid!("token id {} at [{b}, {s}, {y}, {x}] is outside sub-codebook {s} of the {what} ({} entries)", plane_ids[p], sizes[s]);
            }
        }
        Ok(())
    }

    /// The ids position-major, [B·h·w, S] as u32 (the kernels' layout); call after a check.
    pub fn position_major(&self) -> Vec<u32> {
        let s = self.codes_per_position();
        let plane = self.height * self.width;
        let mut out = vec![0u32; self.ids.len()];
        for (i, plane_ids) in self.ids.chunks(plane).enumerate() {
            let (b, c) = (i / s, i % s);
            for (p, &id) in plane_ids.iter().enumerate() {
                out[(b * plane + p) * s + c] = id as u32;
            }
        }
        out
    }

    /// The inverse of `position_major`: ids [B·h·w, S] → a grid of shape `dims`.
    pub fn from_position_major(dims: &[usize], ids: &[u32]) -> Result<TokenGrid> {
        let (s, plane) = match *dims {
            [_, h, w] => (1, h * w),
            [_, s, h, w] => (s, h * w),
            _ => shape_err!("tokens must be [B, h, w] or [B, S, h, w], got {dims:?}"),
        };
        if ids.len() != dims.iter().product::<usize>() {
            shape_err!("tokens {dims:?}: got {} ids", ids.len());
        }
        let mut out = vec![0i64; ids.len()];
        for (t, row) in ids.chunks(s).enumerate() {
            let (b, p) = (t / plane.max(1), t % plane.max(1));
            for (c, &id) in row.iter().enumerate() {
                out[(b * s + c) * plane + p] = id as i64;
            }
        }
        TokenGrid::new(dims, out)
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

    /// Writes the grid as tensor `name`, i32 [B, h, w] (or [B, S, h, w]).
    pub fn save(&self, path: &Path, name: &str) -> Result<()> {
        let ids = self
            .ids
            .iter()
            .map(|&id| i32::try_from(id).map_err(|_| Error::Invalid(format!("token id {id} does not fit i32"))))
            .collect::<Result<Vec<i32>>>()?;
        let view = safetensors::tensor::TensorView::new(Dtype::I32, self.dims(), bytemuck::cast_slice(&ids))
            .map_err(|e| Error::Invalid(format!("tokens: {e}")))?;
        safetensors::serialize_to_file([(name, view)], None, path).map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_major_round_trips_and_checks_name_the_sub_codebook() {
        // [B=1, S=2, h=1, w=3]: plane 0 = [0, 1, 2], plane 1 = [3, 4, 5].
        let grid = TokenGrid::new(&[1, 2, 1, 3], vec![0, 1, 2, 3, 4, 5]).unwrap();
        assert_eq!(grid.position_major(), vec![0, 3, 1, 4, 2, 5]);
        assert_eq!(TokenGrid::from_position_major(&grid.dims(), &grid.position_major()).unwrap(), grid);
        assert!(grid.check_codebooks(&[3, 6], "model").is_ok());
        let err = grid.check_codebooks(&[6, 5], "model").unwrap_err().to_string();
        assert!(err.contains("token id 5 at [0, 1, 0, 2]") && err.contains("sub-codebook 1"), "{err}");
        let err = grid.check_codebooks(&[8, 8, 8], "model").unwrap_err().to_string();
        assert!(err.contains("2 ids per position") && err.contains("takes 3"), "{err}");
        assert!(TokenGrid::new(&[1, 2, 3, 4, 5], vec![0; 120]).is_err());
    }
}
