//! A classifier's or a prior's `config.json` (timm's hub layout; the minGPT prior's), through
//! everything the model constructors compute from it before reading a weight.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit::models::prior::PriorConfig;
use lowbit::models::timm_config::HubConfig;
use lowbit::models::ClassifierConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = PriorConfig::from_json(text);
    let Ok(hub) = HubConfig::from_json(text) else { return };
    let Ok(config) = ClassifierConfig::from_hub(&hub) else { return };
    let _ = (config.describe(), config.num_classes(), config.label_names().len());
    // The eval transform the config describes, on a small image: sizes and crop_pct decide
    // what the resize allocates. Only up to 1024 px a side: larger sizes (up to the config's
    // limit of 8192) run the same code for longer, which is legitimate work, not a hang, but
    // seconds per input in this debug-assertion build (a 3232-px config took 3.8 s).
    let (h, w) = config.preprocess().input_size;
    if h.max(w) as f64 / config.preprocess().crop_pct.max(0.05) <= 1024.0 {
        let _ = lowbit::models::preprocess(&image::RgbImage::new(8, 8), config.preprocess());
    }
    match &config {
        ClassifierConfig::Vit(c) => {
            let _ = (c.tokens(), c.head_dim(), c.mlp_hidden(), c.describe());
        }
        ClassifierConfig::Swin(c) => {
            let _ = (c.stages(), c.num_features());
        }
    }
});
