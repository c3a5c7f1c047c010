//! An input image (PNG or JPEG) under the pixel and allocation limits, then timm's eval
//! transform (resize, crop, normalize) as `classify` applies it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit::models::files::decode_image;
use lowbit::models::{preprocess, PreprocessConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(img) = decode_image(data, std::path::Path::new("fuzz.png")) else { return };
    let cfg = PreprocessConfig { input_size: (32, 32), mean: [0.5; 3], std: [0.5; 3], crop_pct: 0.875, interpolation: "bicubic".into() };
    let _ = preprocess(&img, &cfg);
});
