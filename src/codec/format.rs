//! The `.lbt` container. All integers little-endian:
//!
//! ```text
//! "LBT1"  version u16 (1)  flags u16 (bit 0: prior-coded; bit 1: adaptive order-0 model)
//! tokenizer_hash u64  prior_hash u64 (0 without a prior)
//! tokenizer_path u16 len + UTF-8   prior_path u16 len + UTF-8 (empty without a prior)
//! class u32 (the prior's conditioning token)  stages u16 (ids per position: sub-codebooks or stages)  codebook u32 (the coded range)
//! images u32, then per image: width u32, height u32 (the input's), grid_h u16, grid_w u16,
//!                             payload_len u32
//! payload_crc32 u32 (over all payloads)  header_crc32 u32 (over every byte before it)
//! payloads, one per image, back to back
//! ```
//!
//! The two CRCs mean a flipped byte anywhere is always an error, even where the rANS decoder
//! would have decoded something.

use crate::{invalid, Result};

pub const MAGIC: &[u8; 4] = b"LBT1";
pub const VERSION: u16 = 1;
/// More images than this in one file is a corrupted count, not a real file.
pub const MAX_IMAGES: usize = 1 << 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageEntry {
    /// The input image's size before the crop to whole token cells.
    pub width: u32,
    pub height: u32,
    pub grid: [usize; 2],
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub tokenizer_hash: u64,
    pub prior_hash: Option<u64>,
    /// Without a prior: the adaptive order-0 model rather than the uniform one.
    pub adaptive: bool,
    pub tokenizer_path: String,
    pub prior_path: String,
    pub class: u32,
    pub stages: u16,
    pub codebook: u32,
    pub images: Vec<ImageEntry>,
}

/// CRC-32 (IEEE, reflected, as zlib's `crc32`).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// The model identity: the first 8 bytes of SHA-256 over the parts, each prefixed with its
/// length (so moving bytes between parts changes it). Forging a checkpoint with the same 64
/// bits is a 2⁶⁴-work search, far past what a mix-up between models could hit by chance.
pub fn model_hash(parts: &[&[u8]]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("SHA-256 has 32 bytes"))
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<()> {
    let len = u16::try_from(s.len()).map_err(|_| crate::Error::Invalid(format!("path of {} bytes is too long for the header", s.len())))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

impl Container {
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut h = Vec::new();
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        if self.adaptive && self.prior_hash.is_some() {
            invalid!("a file is coded either with a prior or with the adaptive model, not both");
        }
        h.extend_from_slice(&(u16::from(self.prior_hash.is_some()) | u16::from(self.adaptive) << 1).to_le_bytes());
        h.extend_from_slice(&self.tokenizer_hash.to_le_bytes());
        h.extend_from_slice(&self.prior_hash.unwrap_or(0).to_le_bytes());
        put_str(&mut h, &self.tokenizer_path)?;
        put_str(&mut h, &self.prior_path)?;
        h.extend_from_slice(&self.class.to_le_bytes());
        h.extend_from_slice(&self.stages.to_le_bytes());
        h.extend_from_slice(&self.codebook.to_le_bytes());
        if self.images.is_empty() || self.images.len() > MAX_IMAGES {
            invalid!("a .lbt file holds 1..={MAX_IMAGES} images, got {}", self.images.len());
        }
        h.extend_from_slice(&(self.images.len() as u32).to_le_bytes());
        let mut payload = Vec::new();
        for img in &self.images {
            let [gh, gw] = img.grid.map(|g| u16::try_from(g).map_err(|_| crate::Error::Invalid(format!("token grid side {g} is over 65535"))));
            h.extend_from_slice(&img.width.to_le_bytes());
            h.extend_from_slice(&img.height.to_le_bytes());
            h.extend_from_slice(&gh?.to_le_bytes());
            h.extend_from_slice(&gw?.to_le_bytes());
            h.extend_from_slice(&(img.payload.len() as u32).to_le_bytes());
            payload.extend_from_slice(&img.payload);
        }
        h.extend_from_slice(&crc32(&payload).to_le_bytes());
        h.extend_from_slice(&crc32(&h.clone()).to_le_bytes());
        h.extend_from_slice(&payload);
        Ok(h)
    }

    /// Parses a whole file; every inconsistency is an error naming it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Container> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(4, "magic")? != MAGIC {
            invalid!("not a lowbit .lbt file (no LBT1 magic at the start)");
        }
        let version = r.u16("version")?;
        if version != VERSION {
            invalid!("unsupported .lbt version {version} (this lowbit reads version {VERSION})");
        }
        let flags = r.u16("flags")?;
        if flags > 2 {
            invalid!("unknown flags {flags:#x} in the header");
        }
        let tokenizer_hash = r.u64("tokenizer hash")?;
        let prior_hash = r.u64("prior hash")?;
        let tokenizer_path = r.string("tokenizer path")?;
        let prior_path = r.string("prior path")?;
        let class = r.u32("class")?;
        let stages = r.u16("stage count")?;
        let codebook = r.u32("codebook size")?;
        let n = r.u32("image count")? as usize;
        if n == 0 || n > MAX_IMAGES {
            invalid!("image count {n} is out of range 1..={MAX_IMAGES}: corrupted header");
        }
        let mut images = Vec::with_capacity(n);
        let mut lens = Vec::with_capacity(n);
        for _ in 0..n {
            let (width, height) = (r.u32("image width")?, r.u32("image height")?);
            let grid = [r.u16("grid height")? as usize, r.u16("grid width")? as usize];
            lens.push(r.u32("payload length")? as usize);
            images.push(ImageEntry { width, height, grid, payload: vec![] });
        }
        let payload_crc = r.u32("payload checksum")?;
        let header_end = r.pos;
        let header_crc = r.u32("header checksum")?;
        if crc32(&bytes[..header_end]) != header_crc {
            invalid!("header checksum mismatch: the file is corrupted");
        }
        let total: usize = lens.iter().sum();
        let rest = &bytes[r.pos..];
        if rest.len() < total {
            invalid!("truncated: the header announces {total} payload bytes, the file has {}", rest.len());
        }
        if rest.len() > total {
            invalid!("{} trailing bytes after the {total} payload bytes", rest.len() - total);
        }
        if crc32(rest) != payload_crc {
            invalid!("payload checksum mismatch: the file is corrupted");
        }
        let mut at = 0;
        for (img, len) in images.iter_mut().zip(lens) {
            img.payload = rest[at..at + len].to_vec();
            at += len;
        }
        // Without the prior flag the hash field is written as 0: anything else would be dropped
        // here and not come back on writing, so the file is not one lowbit wrote.
        if flags & 1 == 0 && prior_hash != 0 {
            invalid!("prior hash {prior_hash:#018x} in a file without a prior: corrupted header");
        }
        let prior_hash = (flags & 1 == 1).then_some(prior_hash);
        Ok(Container { tokenizer_hash, prior_hash, adaptive: flags & 2 == 2, tokenizer_path, prior_path, class, stages, codebook, images })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        let Some(s) = self.bytes.get(self.pos..self.pos + n) else {
            invalid!("truncated: the file ends in the header ({what} at byte {})", self.pos);
        };
        self.pos += n;
        Ok(s)
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u16(what)? as usize;
        String::from_utf8(self.take(len, what)?.to_vec()).map_err(|_| crate::Error::Invalid(format!("{what} in the header is not UTF-8: corrupted")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Container {
        let img = |p: &[u8]| ImageEntry { width: 32, height: 33, grid: [8, 8], payload: p.to_vec() };
        Container {
            tokenizer_hash: 1,
            prior_hash: Some(2),
            adaptive: false,
            tokenizer_path: "a/tok".into(),
            prior_path: "a/prior".into(),
            class: 10,
            stages: 1,
            codebook: 256,
            images: vec![img(&[1, 2, 3, 4]), img(&[5, 6, 7, 8, 9])],
        }
    }

    #[test]
    fn a_prior_hash_without_the_prior_flag_is_refused() {
        // Found by the `lbt` fuzz target: a file without a prior whose prior-hash field is not 0
        // (with checksums that match) parsed, and dropped the field.
        let bytes = include_bytes!("../../fuzz/seeds/lbt/prior-hash-without-prior");
        let err = Container::from_bytes(bytes).unwrap_err();
        assert!(err.to_string().contains("without a prior"), "{err}");
    }

    #[test]
    fn round_trips_and_rejects_every_damage() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let c = sample();
        let bytes = c.to_bytes().unwrap();
        assert_eq!(Container::from_bytes(&bytes).unwrap(), c);
        for cut in 0..bytes.len() {
            assert!(Container::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Container::from_bytes(&bad).is_err(), "flip at {i}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Container::from_bytes(&longer).unwrap_err().to_string().contains("trailing"));
    }
}
