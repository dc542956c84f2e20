//! The wrap envelope parser (docs/wrap-envelope.md): never panics, and what
//! it accepts lies exactly inside the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ron_kms::crypto::envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = envelope::parse(data) {
        assert_eq!(p.header.len() + 12 + p.sealed.len(), data.len());
        assert_eq!(&data[..p.header.len()], p.header);
        // what parses re-assembles to the same bytes
        assert_eq!(envelope::assemble(p.header, &p.nonce, p.sealed), data);
    }
});
