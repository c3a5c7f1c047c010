//! A token file (`decode --tokens`, `quantize --calib` for decoders): a safetensors file with
//! an integer `tokens` tensor [B, h, w] or [B, S, h, w], checked against a codebook and against
//! two sub-codebooks, and put in the kernels' position-major order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit::models::vqgan::TokenGrid;

fuzz_target!(|data: &[u8]| {
    if let Ok(grid) = TokenGrid::from_bytes(data, "tokens", "fuzz.safetensors") {
        let _ = (grid.shape(), grid.dims(), grid.check(1024), grid.check_codebooks(&[1024, 16], "fuzz"));
        if grid.check_codebooks(&[1024, 16], "fuzz").is_ok() {
            let _ = TokenGrid::from_position_major(&grid.dims(), &grid.position_major());
        }
    }
});
