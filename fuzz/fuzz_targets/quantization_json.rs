//! `quantization.json` beside a lowbit-written checkpoint: its checksums and its copy of the
//! description (tensors, runtime, activation quantizers), as the loader reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit::formats::WeightFormat;
use lowbit::models::checksums::Record;
use lowbit::models::packed::{self, Description};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(record) = Record::parse(text, "quantization.json") else { return };
    let Ok(desc) = serde_json::from_value::<Description>(record.description) else { return };
    let _ = packed::points(Some(&desc));
    for t in desc.tensors.values() {
        let _ = WeightFormat::parse(&t.format);
    }
});
