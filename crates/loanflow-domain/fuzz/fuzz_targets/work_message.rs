//! The work message decoder, as its consumers call it on every delivery. No input may
//! panic; a message that decodes must encode to one that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loanflow_domain::messages::{Envelope, WorkMessage};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(message) = Envelope::<WorkMessage>::decode(bytes) {
        assert_eq!(Envelope::<WorkMessage>::decode(&message.encode()).ok(), Some(message));
    }
});
