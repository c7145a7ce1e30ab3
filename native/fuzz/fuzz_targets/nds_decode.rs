//! Arbitrary bytes into the NDS `NameTable` decoder: it must return an error
//! value or entries, never panic; decoded entries must survive an
//! encode/decode round trip unchanged; and building a table from them must
//! not panic either (an error is fine).

#![no_main]

use libfuzzer_sys::fuzz_target;
use pymesh_core::names::{decode_name_table, encode_name_table, NameConfig, NameTable};

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = decode_name_table(data) else { return };
    let encoded = encode_name_table(&entries);
    let decoded = decode_name_table(&encoded).expect("re-decoding our own encoding failed");
    assert_eq!(decoded, entries, "encode/decode round trip changed the entries");
    // Our encoding is canonical: encoding it again gives the same bytes.
    assert_eq!(encode_name_table(&decoded), encoded);
    let _ = NameTable::build(&entries, &NameConfig::default());
});
