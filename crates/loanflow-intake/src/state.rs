//! What every request handler of the intake shares.

use std::sync::Arc;

use tokio::sync::Notify;

use loanflow_platform::db::PgPool;
use loanflow_platform::Settings;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub chain: Arc<Vec<String>>,
    /// Wakes the outbox relay as soon as a group of submissions is committed.
    pub relay_wake: Arc<Notify>,
    /// Records submissions, grouped into shared transactions.
    pub writer: crate::writer::Writer,
    pub approvers: crate::approvals::Approvers,
    /// The approver pages' server-side sessions.
    pub sessions: crate::sessions::Sessions,
    /// Set when this intake runs the synchronous twin instead of the chain.
    pub twin: Option<Arc<crate::twin::TwinChain>>,
    /// The contract's limits per client address.
    pub limits: Arc<crate::limits::Limits>,
    /// How long a request body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// The time of claims and escalation.
    pub clock: loanflow_platform::clock::Clock,
    /// The human level's policy: dual control and escalation.
    pub manager: Arc<loanflow_domain::rules::ManagerPolicy>,
    /// How long a claim lasts.
    pub claim_for: chrono::Duration,
    /// The intake's settings, for the operations page: the operators, and the broker as
    /// the operator (queue figures, dead letters and their replay).
    pub settings: Arc<Settings>,
}

impl AppState {
    pub(crate) fn new(pool: PgPool, settings: &Settings, twin: Option<crate::twin::TwinChain>) -> AppState {
        let relay_wake = Arc::new(Notify::new());
        AppState {
            writer: crate::writer::Writer::start(
                pool.clone(),
                relay_wake.clone(),
                chrono::Duration::hours(i64::from(settings.intake.idempotency_hours)),
            ),
            pool,
            chain: Arc::new(settings.chain.names()),
            relay_wake,
            approvers: Arc::new(settings.intake.approvers.clone()),
            sessions: crate::sessions::Sessions::new(&settings.intake),
            twin: twin.map(Arc::new),
            limits: Arc::new(crate::limits::Limits::new(&settings.intake)),
            body_timeout: std::time::Duration::from_millis(settings.intake.body_timeout_ms.max(1)),
            clock: settings.clock.clone(),
            manager: Arc::new(settings.levels.manager.clone()),
            claim_for: chrono::Duration::minutes(i64::from(settings.intake.claim_minutes.max(1))),
            settings: Arc::new(settings.clone()),
        }
    }

    /// How long a case may wait before it is escalated.
    pub fn escalate_after(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.manager.escalate_after).unwrap_or(chrono::Duration::MAX)
    }
}
