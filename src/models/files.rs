//! Reading the files a user names: only regular files (a FIFO or a device such as /dev/zero
//! would block forever or never end), each kind under a stated size limit checked before
//! reading, and images under a pixel limit checked from their header before decoding.

use std::io::Read;
use std::path::Path;

use image::RgbImage;

use crate::{invalid, Error, Result};

/// Checkpoints: the largest model in the README's scope is far below this.
pub const MAX_CHECKPOINT_BYTES: u64 = 8 << 30;
/// Configs, label lists and other small text files.
pub const MAX_TEXT_BYTES: u64 = 16 << 20;
/// Token files (`--tokens`).
pub const MAX_TOKENS_BYTES: u64 = 256 << 20;
/// Image files, compressed.
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;
/// Decoded images: Pillow's decompression-bomb threshold rounded down (about 8192 × 8192).
pub const MAX_IMAGE_PIXELS: u64 = 64 << 20;

/// The size of `path` after checking it is a regular file of at most `limit` bytes; `what`
/// names it in errors (`checkpoint`, `--tokens`, `image`).
pub fn check_regular(path: &Path, what: &str, limit: u64) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| Error::Invalid(format!("{what} {}: {e}", path.display())))?;
    if meta.is_dir() {
        invalid!("{what} {}: is a folder, not a file", path.display());
    }
    if !meta.is_file() {
        invalid!("{what} {}: not a regular file (a pipe or device cannot be read as one)", path.display());
    }
    if meta.len() > limit {
        invalid!("{what} {}: {} bytes is over the limit of {} bytes ({} MiB)", path.display(), meta.len(), limit, limit >> 20);
    }
    Ok(meta.len())
}

/// Files at least this large are read with a progress bar.
const PROGRESS_BYTES: u64 = 64 << 20;

/// The bytes of the regular file `path`, at most `limit` of them.
pub fn read_limited(path: &Path, what: &str, limit: u64) -> Result<Vec<u8>> {
    let len = check_regular(path, what, limit)?;
    let file = std::fs::File::open(path).map_err(|e| Error::Invalid(format!("{what} {}: {e}", path.display())))?;
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` bounds a file that grows while it is read.
    let mut file = file.take(limit + 1);
    let err = |e: std::io::Error| Error::Invalid(format!("{what} {}: {e}", path.display()));
    if len < PROGRESS_BYTES {
        file.read_to_end(&mut bytes).map_err(err)?;
    } else {
        // A large checkpoint takes seconds from a disk: show it coming in.
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let progress = crate::log::Progress::bytes(&format!("reading {name}"), len);
        let mut chunk = vec![0u8; 8 << 20];
        loop {
            let n = file.read(&mut chunk).map_err(err)?;
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..n]);
            progress.add(n as u64);
        }
        progress.finish();
    }
    if bytes.len() as u64 > limit {
        invalid!("{what} {}: over the limit of {limit} bytes", path.display());
    }
    Ok(bytes)
}

/// The UTF-8 text of the regular file `path`, at most `MAX_TEXT_BYTES`.
pub fn read_text(path: &Path, what: &str) -> Result<String> {
    let bytes = read_limited(path, what, MAX_TEXT_BYTES)?;
    String::from_utf8(bytes).map_err(|_| Error::Invalid(format!("{what} {}: not UTF-8 text", path.display())))
}

/// Width and height of the image file `path` from its header, checked against the limits:
/// what a command checks of every input before its first result.
pub fn check_image(path: &Path) -> Result<(u32, u32)> {
    check_regular(path, "image", MAX_IMAGE_BYTES)?;
    let err = |e: std::io::Error| Error::Invalid(format!("image {}: {e}", path.display()));
    let reader = image::ImageReader::open(path).map_err(err)?.with_guessed_format().map_err(err)?;
    let (w, h) = reader.into_dimensions().map_err(|e| Error::Invalid(format!("image {}: {e}", path.display())))?;
    check_pixels(path, w, h)?;
    Ok((w, h))
}

fn check_pixels(path: &Path, w: u32, h: u32) -> Result<()> {
    if w as u64 * h as u64 > MAX_IMAGE_PIXELS {
        invalid!(
            "image {}: {w}×{h} is over the limit of {MAX_IMAGE_PIXELS} pixels (about 8192×8192); use a smaller image",
            path.display()
        );
    }
    Ok(())
}

/// Reads an image file (PNG or JPEG) as 8-bit RGB, refusing one whose header declares more
/// than `MAX_IMAGE_PIXELS` before decoding a single pixel.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = read_limited(path, "image", MAX_IMAGE_BYTES)?;
    decode_image(&bytes, path)
}

/// An image file's bytes (PNG or JPEG, a file dropped on the viewer; what the image fuzz target drives) decoded to RGB, with
/// the same limits as `load_image`; `path` names it in errors.
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    if bytes.len() as u64 > MAX_IMAGE_BYTES {
        invalid!("image {}: {} bytes, more than the {MAX_IMAGE_BYTES} an image may have", path.display(), bytes.len());
    }
    let err = |e: image::ImageError| Error::Invalid(format!("image {}: {e}", path.display()));
    let reader = || image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| Error::Invalid(format!("image {}: {e}", path.display())));
    let (w, h) = reader()?.into_dimensions().map_err(err)?;
    check_pixels(path, w, h)?;
    let mut reader = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    // RGBA16 at most, plus the RGB8 copy.
    limits.max_alloc = Some(MAX_IMAGE_PIXELS * 11);
    reader.limits(limits);
    Ok(reader.decode().map_err(err)?.to_rgb8())
}
