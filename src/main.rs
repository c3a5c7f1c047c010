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
    std::process::exit(lowbit::cli::main());
}

/// The browser build is the library (`scripts/build-web`); this binary exists natively only.
#[cfg(target_arch = "wasm32")]
fn main() {}
