//! A token file (`decode --tokens`, `quantize --calib` for decoders): a safetensors file with
//! an integer `tokens` tensor [B, h, w], checked against a codebook.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit::models::vqgan::TokenGrid;

fuzz_target!(|data: &[u8]| {
    if let Ok(grid) = TokenGrid::from_bytes(data, "tokens", "fuzz.safetensors") {
        let _ = (grid.shape(), grid.check(1024));
    }
});
