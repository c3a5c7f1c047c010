#[cfg(not(target_arch = "wasm32"))]
fn main() {
    // Mesa's device-select Vulkan layer looks for a Wayland display to order the GPUs, and on a
    // headless machine prints "XDG_RUNTIME_DIR is invalid or not set" twice per run, which reads
    // like a failure. lowbit ranks adapters itself, so the layer is switched off when there is
    // no session (unless the user asked it for a device).
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() && std::env::var_os("MESA_VK_DEVICE_SELECT").is_none() && std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: no other thread exists yet to read the environment concurrently.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
    keep_freed_memory();
    std::process::exit(lowbit::cli::main());
}

/// glibc hands every allocation above its mmap threshold (at most 32 MiB) fresh pages from the
/// kernel and unmaps them on free. The CPU ViT's per-block buffers are larger (a 518-px
/// ViT-S/14's attention probabilities: 360 MB per block and pass of 8 images), so each block
/// paid its page faults again: on the 2-core test VM, 24 s of system time in a 34 s
/// `quantize`; with freed memory kept in the heap, 3 s (BENCHMARKS.md). The process keeps up
/// to its peak memory mapped instead of returning it between blocks.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes the allocator's thresholds; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// The browser build is the library (`scripts/build-web`); this binary exists natively only.
#[cfg(target_arch = "wasm32")]
fn main() {}
