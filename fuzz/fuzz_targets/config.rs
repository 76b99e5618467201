//! A config file's text, through the validation `townlink check` and
//! `townlink run` use (`config::parse`, which `config::load` calls after
//! reading the file). Must never panic; every refusal is a list of problems.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `config::load` reads the file with `read_to_string`: only UTF-8 gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if townlink_fuzz::may_name_outside_files(text) {
        return;
    }
    if let Err(problems) = townlink::config::parse(text, townlink_fuzz::fixture_dir()) {
        assert!(!problems.is_empty(), "a refusal names at least one problem");
        for p in &problems {
            // Rendering a problem (what `townlink check` prints) must not panic either.
            let _ = p.to_string();
        }
    }
});
