//! A VQGAN's config: taming's `config.yaml`, or LlamaGen's `config.json` (the first byte
//! picks which, so that one corpus serves both), through the sizes the model derives from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit::models::vqgan::VqganConfig;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let source = if pick & 1 == 0 { "config.yaml" } else { "config.json" };
    let Ok(c) = VqganConfig::parse(text, source) else { return };
    let _ = (c.latent_resolution(), c.upscale(), c.metric());
    for level in 0..c.ddconfig.ch_mult.len() {
        let _ = c.level_channels(level);
    }
});
