//! Fuzzes the KMIP TTLV decoder: it must never panic, and whatever it accepts must
//! re-encode to exactly the input (the encoding is canonical) and decode again to the
//! same item.
//!
//! Run from `server/`: `cargo +nightly fuzz run decode -- -max_total_time=60`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shadowkeep_server::ttlv;

fuzz_target!(|data: &[u8]| {
    if let Ok(item) = ttlv::decode(data) {
        let encoded = ttlv::encode(&item);
        assert_eq!(encoded, data, "re-encoding differs from the accepted input");
        assert_eq!(item.encoded_len(), data.len());
        assert_eq!(ttlv::decode(&encoded), Ok(item));
    }
    if let Some(header) = data.first_chunk::<8>() {
        let _ = ttlv::read_header(header);
    }
});
