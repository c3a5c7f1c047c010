//! A checkpoint's bytes (`model.safetensors`): the header, the tensor table, the dtypes, the
//! packed-matrix description and the packed words, as `Weights::load` and the models read them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit::formats::WeightFormat;
use lowbit::models::packed::{self, Description};
use lowbit::models::{WeightSummary, Weights};

fuzz_target!(|data: &[u8]| {
    let Ok(w) = Weights::from_bytes(data, "fuzz.safetensors") else { return };
    let _ = WeightSummary::new(&w).map(|s| (s.params(), s.bytes(WeightFormat::F32)));
    let Ok(Some(desc)) = Description::of(&w) else { return };
    let _ = packed::points(Some(&desc));
    // What the model loaders do with every packed matrix: rebuild it from its words.
    for (key, t) in &desc.tensors {
        let _ = w.matrix(key, &t.shape, WeightFormat::F32);
    }
});
