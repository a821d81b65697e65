//! Any text given to `canaryd check` or a reload: validation returns a config or errors
//! that name a field, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match canaryd::config::Config::from_yaml(text) {
        Ok(cfg) => {
            // A valid config always builds a router (what a reload does next).
            let _ = canaryd::router::Router::new(&cfg);
        }
        Err(e) => assert!(!e.errors.is_empty() && e.errors.iter().all(|e| !e.field.is_empty())),
    }
});
