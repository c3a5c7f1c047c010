//! A `.lbt` file (`lowbit decompress`): the container's header, per-image table and checksums.
//! What parses must write back to the same bytes (the format has one encoding per content).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit::codec::format::Container;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Container::from_bytes(data) {
        assert_eq!(c.to_bytes().ok().as_deref(), Some(data), "a parsed .lbt file re-encodes differently");
    }
});
