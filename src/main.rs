#[cfg(not(target_arch = "wasm32"))]
fn main() {
    std::process::exit(lowbit::cli::main());
}

/// The browser build is the library (`scripts/build-web`); this binary exists natively only.
#[cfg(target_arch = "wasm32")]
fn main() {}
