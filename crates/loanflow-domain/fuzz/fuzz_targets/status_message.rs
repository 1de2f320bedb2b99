//! The status message decoder, as its consumers call it on every delivery. No input may
//! panic; a message that decodes must encode to one that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loanflow_domain::messages::{Envelope, StatusMessage};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(message) = Envelope::<StatusMessage>::decode(bytes) {
        assert_eq!(Envelope::<StatusMessage>::decode(&message.encode()).ok(), Some(message));
    }
});
