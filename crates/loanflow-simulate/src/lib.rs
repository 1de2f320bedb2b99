//! `loanflow simulate`: rehearses a scenario against a running system through its
//! public API only, like its users would (applicants submit and poll, approvers use
//! the approvals API), shows progress, and ends with a summary, a report folder
//! (JSON and SVG charts) and a verdict on the scenario's expectations.

pub mod report;
mod run;
pub mod scenario;

pub use run::{run, Options, Outcome as RunOutcome};
pub use scenario::Scenario;
