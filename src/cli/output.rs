//! What every writing command shares: standard output that a closed pipe ends quietly, checks
//! of output paths before any work, and files written whole or not at all.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// `outln!` that ends the process quietly when stdout is closed (`lowbit … | head -1`) and
/// with a one-line error when it cannot be written (`> /dev/full`), instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::output::write_line(format_args!($($arg)*)) };
}

pub fn write_line(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()) {
        stdout_failed(e);
    }
}

fn stdout_failed(e: std::io::Error) -> ! {
    // A reader that stopped reading has what it wanted: not an error.
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: writing to standard output: {e}");
    std::process::exit(1);
}

/// Checks an output path before any work: not a folder, not one of `inputs`, and not an
/// existing file unless `force`. `flag` names it in messages (`--out`).
pub fn check_target(flag: &str, path: &Path, inputs: &[&Path], force: bool) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!("{flag} {}: is a folder; give a file name", path.display());
    }
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if let Some(input) = inputs.iter().find(|i| same(path, i)) {
        bail!("{flag} {}: is also an input ({}); writing it would destroy the input, choose another name", path.display(), input.display());
    }
    if path.exists() && !force {
        bail!("{flag} {}: already exists; pass --force to overwrite it", path.display());
    }
    Ok(())
}

/// The image format for an output path, from its extension.
pub fn image_format(flag: &str, path: &Path) -> anyhow::Result<image::ImageFormat> {
    match image::ImageFormat::from_path(path) {
        Ok(f @ (image::ImageFormat::Png | image::ImageFormat::Jpeg)) => Ok(f),
        _ => bail!("{flag} {}: the output name must end in .png or .jpg", path.display()),
    }
}

/// Output files written under temporary names beside their targets and renamed into place
/// only by `commit`, so a failure half-way leaves no partial output; dropped uncommitted,
/// the temporaries are removed.
#[derive(Default)]
pub struct Staged {
    files: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    pub fn new() -> Staged {
        Staged::default()
    }

    /// Runs `write` on a temporary path in `path`'s folder, to become `path` on `commit`.
    /// The temporary is removed if the run fails or is interrupted (`interrupt`); one left by
    /// a killed earlier run writing the same name is removed first.
    pub fn write(&mut self, path: &Path, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let name = path.file_name().with_context(|| format!("{}: not a file name", path.display()))?.to_string_lossy().into_owned();
        let tmp = path.with_file_name(format!(".{name}.{}.lowbit-tmp", std::process::id()));
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let prefix = format!(".{name}.");
        super::interrupt::sweep_stale(folder, |f| f.strip_prefix(&prefix)?.strip_suffix(".lowbit-tmp")?.parse().ok());
        super::interrupt::register(&tmp);
        self.files.push((tmp.clone(), path.to_path_buf()));
        write(&tmp).with_context(|| format!("writing {}", path.display()))?;
        fault_write_delay();
        Ok(())
    }

    /// Renames every staged file into place.
    pub fn commit(mut self) -> anyhow::Result<()> {
        while let Some((tmp, path)) = self.files.first().cloned() {
            std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
            super::interrupt::forget(&tmp);
            self.files.remove(0);
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = std::fs::remove_file(tmp);
            super::interrupt::forget(tmp);
        }
    }
}

/// Fault injection for the interruption tests (`LOWBIT_FAULT_WRITE_DELAY_MS=N`): a pause after
/// each staged file, so a test can interrupt a run while its outputs are half written.
fn fault_write_delay() {
    if let Some(ms) = std::env::var("LOWBIT_FAULT_WRITE_DELAY_MS").ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Writes one file atomically.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut staged = Staged::new();
    staged.write(path, write)?;
    staged.commit()
}
