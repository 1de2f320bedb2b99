//! A `POST /api/loans` body as the intake reads it: the JSON object reader, then the
//! application validator. No input may panic; what is accepted must read back the same.
#![no_main]

use chrono::NaiveDate;
use libfuzzer_sys::fuzz_target;
use loanflow_domain::application::{read_object, Application};

fuzz_target!(|body: &[u8]| {
    let Ok(value) = read_object(body) else { return };
    let today = NaiveDate::from_ymd_opt(2026, 12, 1).expect("a date");
    if let Ok(application) = Application::parse(&value, today) {
        let again = serde_json::to_value(&application).expect("serialisable");
        assert_eq!(Application::parse(&again, today).ok(), Some(application));
    }
});
