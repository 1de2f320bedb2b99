//! The loan-approval domain, with no I/O: what an application is and how it is
//! validated, the rules each approval level applies, the offer arithmetic, and the
//! versioned messages the services exchange.
//!
//! Every service and the synchronous twin call these same functions, so a rule lives
//! in exactly one place. Nothing here reads a clock, a socket or a random source:
//! callers pass "today" and random bytes in, which keeps every rule unit-testable.

pub mod application;
pub mod booking;
pub mod messages;
pub mod money;
pub mod reference;
pub mod rules;
pub mod status;

pub use application::{Applicant, Application, FieldErrors};
pub use money::Money;
pub use reference::Reference;
pub use status::{DecidedBy, Decision, Outcome, Status};
