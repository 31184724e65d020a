//! YAML as `sluice run DIR` reads it: load it, and if it loads, translate it to the IR
//! and render the statuses and IR as the admin API does. Nothing may panic, and every
//! input must finish within libFuzzer's `-timeout` (run.sh sets it), which catches
//! inputs that take quadratic time.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(loaded) = sluice_resources::load_str("fuzz.yaml", text) else {
        return;
    };
    let inputs = sluice_translate::Inputs::default();
    let first = sluice_translate::translate(&loaded.resources, &inputs);
    // The translation is a function of its input: a reload of the same files must not
    // churn statuses or the snapshot.
    let again = sluice_translate::translate(&loaded.resources, &inputs);
    assert!(
        first == again,
        "translating the same resources twice gave two answers"
    );
    // The admin API renders it as JSON (`/status`, `/config_dump`).
    if let Err(e) = serde_json::to_string(&first) {
        panic!("the translation does not render as JSON: {e}");
    }
});
