//! Config parsing: arbitrary bytes as the TOML config file, merged and
//! validated exactly as `ron-kms serve --config FILE` does. Errors are fine;
//! panics are not.
#![no_main]
use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ron_kms::config::{load, Flags};

fn path() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fuzz_target!(|data: &[u8]| {
    let file = path().join("ron-kms.toml");
    std::fs::write(&file, data).unwrap();
    let flags = Flags {
        config: Some(file),
        ..Flags::default()
    };
    let _ = load(&flags, &HashMap::<String, String>::new());
});
