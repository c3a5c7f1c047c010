//! Interrupted runs leave no partial outputs. Every output is written under a temporary name
//! (`output::Staged`, quantize's temporary folder) registered here; on SIGINT, SIGTERM or
//! SIGHUP the registered temporaries are removed and the process exits with 128 + signal, so
//! Ctrl-C leaves neither a half-written file under its final name nor temporary litter.
//! SIGKILL cannot be caught: its temporaries keep their hidden `.lowbit-tmp`/`.tmp-PID` names,
//! which nothing mistakes for an output, and the next run writing the same name removes them
//! (`sweep_stale`).
//!
//! A signal handler may only do async-signal-safe work, so it writes the signal number to a
//! pipe; a thread blocked on the pipe does the cleanup with the ordinary std calls.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Temporary files and folders of this process, removed if it is interrupted.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Registers a temporary to remove on interruption.
pub fn register(tmp: &Path) {
    lock().push(tmp.to_path_buf());
}

/// Forgets a temporary (renamed into place, or removed by its owner).
pub fn forget(tmp: &Path) {
    lock().retain(|p| p != tmp);
}

fn lock() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // A panic elsewhere must not stop the cleanup: the list stays valid whatever happened.
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes every registered temporary (the interruption path).
fn remove_pending() {
    let pending = lock();
    for tmp in pending.iter() {
        if !tmp.is_dir() {
            let _ = std::fs::remove_file(tmp);
            continue;
        }
        // The main thread may still be writing into the folder: a file it creates between
        // remove_dir_all's listing and its rmdir left both behind (seen in CI). Renamed
        // first, the folder gets no new entries (new files go by the old path and fail).
        let mut name = tmp.file_name().unwrap_or_default().to_os_string();
        name.push(".removing");
        let doomed = tmp.with_file_name(name);
        let _ = match std::fs::rename(tmp, &doomed) {
            Ok(()) => std::fs::remove_dir_all(&doomed),
            Err(_) => std::fs::remove_dir_all(tmp),
        };
    }
    // The guard is kept until exit: no new temporary can be registered (and created) after.
    std::mem::forget(pending);
}

/// Whether process `pid` still runs (a temporary of a live process is not stale).
#[cfg(unix)]
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
pub fn alive(_pid: u32) -> bool {
    true
}

/// Removes the temporaries of dead processes in `dir` whose names `parse` maps to a pid:
/// what a killed run (SIGKILL, power loss) left beside the output it never finished.
pub fn sweep_stale(dir: &Path, parse: impl Fn(&str) -> Option<u32>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = parse(&name).filter(|&pid| pid != std::process::id() && !alive(pid)) {
            let path = e.path();
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            if removed.is_ok() {
                crate::verbose!("removed {}, left by an interrupted run (process {pid})", path.display());
            }
        }
    }
}

#[cfg(unix)]
mod handler {
    use std::sync::atomic::{AtomicI32, Ordering};

    static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_signal(sig: libc::c_int) {
        let byte = sig as u8;
        // SAFETY: write(2) is async-signal-safe; a full pipe only drops a repeated signal.
        unsafe { libc::write(PIPE_WRITE.load(Ordering::Relaxed), (&byte as *const u8).cast(), 1) };
    }

    pub fn install() {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: a plain pipe(2) into a two-element array.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return;
        }
        PIPE_WRITE.store(fds[1], Ordering::Relaxed);
        let read = fds[0];
        let spawned = std::thread::Builder::new().name("lowbit-signals".into()).spawn(move || {
            let mut byte = 0u8;
            // SAFETY: reads one byte into a local; blocks until a signal arrives.
            let n = unsafe { libc::read(read, (&mut byte as *mut u8).cast(), 1) };
            if n == 1 {
                super::remove_pending();
                let name = match byte as libc::c_int {
                    libc::SIGINT => "interrupted (Ctrl-C)",
                    libc::SIGTERM => "terminated",
                    _ => "hung up",
                };
                eprintln!("error: {name}; no partial outputs were left");
                // _exit, not exit: the main thread may be inside the driver, whose static
                // destructors (run by exit) must not race with it.
                // SAFETY: ends the process at once; nothing here relies on destructors.
                unsafe { libc::_exit(128 + byte as i32) };
            }
        });
        if spawned.is_err() {
            return;
        }
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only calls write(2) on a pipe that stays open.
            unsafe { libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
        }
    }
}

/// Installs the handlers (once, at the start of `lowbit`).
pub fn install() {
    #[cfg(unix)]
    handler::install();
}
