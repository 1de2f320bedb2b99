//! An approval level: consumes its own queue, applies its rule, and forwards the
//! application to the next step of its routing slip (or ends the chain on a
//! rejection), publishing a status event for every decision.
//!
//! One crate serves every level; which one a process runs is configuration
//! (`loanflow level credit`). Several processes may run the same level: they share
//! its queue and the broker gives each delivery to one of them.

mod schema;
pub mod twin;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use loanflow_domain::messages::{ApproverDecision, Envelope, StatusEvent, WorkItem, WorkMessage};
use loanflow_domain::rules::{self, LevelKind, ManagerVerdict, Verdict};
use loanflow_domain::{DecidedBy, Decision, Outcome, Reference, Status};
use loanflow_platform::broker::{self, step_queue, BrokerError, Disposition, Incoming, Publisher};
use loanflow_platform::db::{self, blocking, inbox, DbError, PgPool};
use loanflow_platform::health::{self, Health};
use loanflow_platform::settings::LevelsSettings;
use loanflow_platform::shutdown::Running;
use loanflow_platform::Settings;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../schema/level");

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0:?} is not a known level (kyc, credit, underwriting, manager)")]
    UnknownLevel(String),
    #[error("level database: {0}")]
    Database(#[from] DbError),
    #[error("bureau client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("the synchronous twin needs twin.secret to be set")]
    NoTwinSecret,
}

/// Counts what this process did; tests read it to see that work was shared.
#[derive(Debug, Default)]
pub struct LevelStats {
    pub decided: AtomicU64,
}

struct Level {
    /// Message ids being handled right now by this process. The inbox catches a
    /// duplicate that arrives after the first copy is done; this catches one that
    /// arrives while it is still in progress.
    in_flight: std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>,
    name: String,
    rule: Rule,
    pool: PgPool,
    stats: Arc<LevelStats>,
}

/// A level's rule with what applying it needs: the policies and, for credit, the
/// bureau. The queue consumer and the synchronous twin decide through this one type.
pub(crate) struct Rule {
    kind: LevelKind,
    policies: LevelsSettings,
    bureau: reqwest::Client,
}

/// Starts level `name`: migrates its schema and consumes its queue until `shutdown`.
pub async fn start(
    settings: Settings,
    name: &str,
    shutdown: CancellationToken,
) -> Result<(Running, Arc<LevelStats>), StartError> {
    let rule = Rule::new(&settings, name)?;
    let pool = db::migrated_pool(&settings.levels.database_for(name), MIGRATIONS).await?;
    let stats = Arc::new(LevelStats::default());
    let level =
        Arc::new(Level { in_flight: Default::default(), name: name.to_owned(), rule, pool, stats: stats.clone() });
    let tasks = TaskTracker::new();
    let health = Health::default();
    let consuming = health.part("broker");
    let listen = settings.levels.health_listen.clone();
    let health_addr =
        health::serve(&listen, health, shutdown.clone(), &tasks).map_err(|e| StartError::Listen(listen, e))?;
    tasks.spawn(broker::consume(settings, step_queue(name), consuming, shutdown, move |incoming, publisher| {
        let level = level.clone();
        async move { level.handle(incoming, publisher).await }
    }));
    tracing::info!(level = name, health = %health_addr, "level started");
    Ok((Running::new(Some(health_addr), tasks), stats))
}

/// What a level's rule came to.
pub(crate) enum Step {
    Decided(Verdict),
    AwaitApprover,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error("bureau unavailable: {0}")]
    BureauUnavailable(String),
    #[error("{0}")]
    Misrouted(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// A claim on a message id while it is handled; released on drop.
struct InFlight<'a> {
    set: &'a std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>,
    id: uuid::Uuid,
}

impl<'a> InFlight<'a> {
    fn claim(set: &'a std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>, id: uuid::Uuid) -> Option<Self> {
        // The lock is released before the claim exists: a claim that is dropped (on
        // the duplicate path) must not re-lock a mutex this statement still holds.
        let inserted = set.lock().map(|mut ids| ids.insert(id)).unwrap_or(false);
        inserted.then(|| InFlight { set, id })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.id);
        }
    }
}

#[derive(serde::Deserialize)]
struct ScoreBody {
    score: u16,
}

impl Level {
    async fn handle(&self, incoming: Incoming, publisher: Publisher) -> Disposition {
        let envelope = match Envelope::<WorkMessage>::decode(&incoming.data) {
            Ok(e) => e,
            Err(e) => return Disposition::DeadLetter(e.to_string()),
        };
        let (reference, message_id) = (envelope.reference, envelope.message_id);
        let Some(_claim) = InFlight::claim(&self.in_flight, message_id) else {
            return Disposition::Retry("the same message is being handled already".into());
        };
        let (result, decided_so_far) = match envelope.body {
            WorkMessage::V1(work) => {
                let decided = work.decisions.len();
                (self.process(&reference, message_id, work, &publisher).await, Some(decided))
            }
            WorkMessage::ApprovalV1(decision) => {
                (self.process_approval(&reference, message_id, decision, &publisher).await, None)
            }
        };
        match result {
            Ok(()) => Disposition::Ack,
            Err(StepError::Misrouted(why)) => Disposition::DeadLetter(why),
            Err(StepError::Broker(e)) => {
                // The connection is likely gone; the delivery comes back when it returns.
                tracing::warn!(error = %e, "outgoing messages not confirmed");
                Disposition::Requeue
            }
            Err(e) => {
                tracing::warn!(error = %e, "step not completed");
                if let (true, Some(decided)) = (incoming.is_last_attempt(), decided_so_far) {
                    self.announce_failure(&reference, decided, &publisher).await;
                }
                Disposition::Retry(e.to_string())
            }
        }
    }

    /// The retry budget is spent: the application becomes `failed` (its message goes
    /// to the dead-letter queue, from which it can be replayed).
    async fn announce_failure(&self, reference: &Reference, decided_so_far: usize, publisher: &Publisher) {
        let event = StatusEvent::progress(decided_so_far, Status::Failed, Some(self.name.clone()), Utc::now());
        if let Err(e) = broker::send_status(publisher, reference, event).await {
            tracing::warn!(error = %e, "could not announce the failure");
        }
    }

    async fn process(
        &self,
        reference: &Reference,
        message_id: uuid::Uuid,
        mut work: WorkItem,
        publisher: &Publisher,
    ) -> Result<(), StepError> {
        if work.slip.current() != Some(self.name.as_str()) {
            return Err(StepError::Misrouted(format!(
                "message for step {:?} reached level {:?}",
                work.slip.current(),
                self.name
            )));
        }
        if blocking(&self.pool, move |conn| inbox::seen(conn, message_id)).await? {
            tracing::info!(level = %self.name, "duplicate delivery ignored");
            return Ok(());
        }
        let step = self.rule.decide(&mut work).await?;
        let now = Utc::now();
        match step {
            Step::AwaitApprover => {
                let row = serde_json::to_value(&work).map_err(|e| StepError::Misrouted(e.to_string()))?;
                let key = reference.as_str().to_owned();
                blocking(&self.pool, move |conn| {
                    diesel::insert_into(schema::waiting::table)
                        .values((schema::waiting::reference.eq(key), schema::waiting::work.eq(row)))
                        .on_conflict_do_nothing()
                        .execute(conn)
                        .map_err(DbError::from)
                })
                .await?;
                let waiting = Status::AwaitingApprover;
                let event = StatusEvent {
                    score: work.score,
                    ..StatusEvent::progress(work.decisions.len(), waiting, Some(self.name.clone()), now)
                };
                broker::send_status(publisher, reference, event).await?;
                tracing::info!(level = %self.name, "waiting for an approver");
            }
            Step::Decided(verdict) => {
                let decision = Decision {
                    level: self.name.clone(),
                    outcome: verdict.outcome,
                    reason: verdict.reason,
                    decided_by: DecidedBy::Auto,
                    decided_at: now,
                };
                self.apply_decision(reference, work, decision, publisher).await?;
            }
        }
        // Recorded only once everything above is committed and confirmed: a crash
        // before this line redelivers the message and the step is done again, with
        // the same message ids, which the next consumers recognise.
        blocking(&self.pool, move |conn| inbox::record(conn, message_id)).await?;
        self.stats.decided.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Announces a decision and, on approval, forwards the application to the next
    /// step of its slip; a rejection ends the chain.
    async fn apply_decision(
        &self,
        reference: &Reference,
        mut work: WorkItem,
        decision: Decision,
        publisher: &Publisher,
    ) -> Result<(), StepError> {
        let outcome = decision.outcome;
        work.decisions.push(decision.clone());
        let next = match outcome {
            Outcome::Approved => work.slip.advanced(),
            Outcome::Rejected => None,
        };
        let status = if next.is_some() { Status::InReview } else { Status::Rejected };
        let current_level = next.as_ref().and_then(|s| s.current_level().map(str::to_owned));
        let event = StatusEvent::decided(decision, work.decisions.len(), status, current_level);
        match next {
            Some(slip) => {
                work.slip = slip;
                // The decision is announced (and confirmed) before the next step can
                // start, so the status never shows a later step, or `approved`, ahead
                // of the decision that allowed it.
                broker::send_status(publisher, reference, event).await?;
                broker::send_work(publisher, reference, work).await?;
            }
            None => broker::send_status(publisher, reference, event).await?,
        }
        tracing::info!(level = %self.name, outcome = outcome.as_str(), "decided");
        Ok(())
    }

    /// A person decided an application waiting at this (human) level.
    async fn process_approval(
        &self,
        reference: &Reference,
        message_id: uuid::Uuid,
        approval: ApproverDecision,
        publisher: &Publisher,
    ) -> Result<(), StepError> {
        if self.rule.kind != LevelKind::Manager || approval.level != self.name {
            return Err(StepError::Misrouted(format!(
                "an approval for level {:?} reached level {:?}",
                approval.level, self.name
            )));
        }
        let key = reference.as_str().to_owned();
        let waiting = blocking(&self.pool, move |conn| {
            if inbox::seen(conn, message_id)? {
                return Ok(None);
            }
            Ok(Some(
                schema::waiting::table
                    .find(&key)
                    .select(schema::waiting::work)
                    .first::<serde_json::Value>(conn)
                    .optional()?,
            ))
        })
        .await?;
        match waiting {
            None => tracing::info!(level = %self.name, "duplicate delivery ignored"),
            Some(None) => tracing::info!(level = %self.name, "no application waiting; it was decided already"),
            Some(Some(row)) => {
                let work: WorkItem = serde_json::from_value(row)
                    .map_err(|e| StepError::Misrouted(format!("unreadable waiting application: {e}")))?;
                let decision = Decision {
                    level: self.name.clone(),
                    outcome: approval.outcome,
                    reason: approval.reason,
                    decided_by: DecidedBy::Approver(approval.approver),
                    decided_at: approval.decided_at,
                };
                self.apply_decision(reference, work, decision, publisher).await?;
                let key = reference.as_str().to_owned();
                blocking(&self.pool, move |conn| {
                    diesel::delete(schema::waiting::table.find(key)).execute(conn).map_err(DbError::from)
                })
                .await?;
                self.stats.decided.fetch_add(1, Ordering::Relaxed);
            }
        }
        blocking(&self.pool, move |conn| inbox::record(conn, message_id)).await?;
        Ok(())
    }
}

impl Rule {
    pub(crate) fn new(settings: &Settings, name: &str) -> Result<Rule, StartError> {
        let kind = LevelKind::from_name(name).ok_or_else(|| StartError::UnknownLevel(name.to_owned()))?;
        let bureau =
            reqwest::Client::builder().timeout(Duration::from_millis(settings.levels.bureau_timeout_ms)).build()?;
        Ok(Rule { kind, policies: settings.levels.clone(), bureau })
    }

    pub(crate) async fn decide(&self, work: &mut WorkItem) -> Result<Step, StepError> {
        let policies = &self.policies;
        let app = &work.application;
        Ok(match self.kind {
            LevelKind::Kyc => Step::Decided(rules::kyc(app, work.submitted_on, &policies.kyc)),
            LevelKind::Credit => {
                let score = self.fetch_score(app.applicant.national_id.as_str()).await?;
                work.score = Some(score);
                Step::Decided(rules::credit(score, &policies.credit))
            }
            LevelKind::Underwriting => {
                let score = work.score.ok_or_else(|| {
                    StepError::Misrouted("underwriting needs a credit score: the chain must run credit first".into())
                })?;
                let found = rules::underwriting(app, score, &policies.underwriting);
                work.offer = found.offer;
                Step::Decided(found.verdict)
            }
            LevelKind::Manager => match rules::manager(app, &policies.manager) {
                ManagerVerdict::Decided(v) => Step::Decided(v),
                ManagerVerdict::AwaitApprover => Step::AwaitApprover,
            },
        })
    }

    /// Asks the bureau, synchronously: credit cannot decide without the score.
    async fn fetch_score(&self, national_id: &str) -> Result<u16, StepError> {
        let url = format!("{}/api/scores/{national_id}", self.policies.bureau_url.trim_end_matches('/'));
        let unavailable = |e: reqwest::Error| StepError::BureauUnavailable(e.without_url().to_string());
        let response = self.bureau.get(url).send().await.map_err(unavailable)?;
        let response = response.error_for_status().map_err(unavailable)?;
        let body: ScoreBody = response.json().await.map_err(unavailable)?;
        Ok(body.score)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::InFlight;

    #[test]
    fn a_second_claim_on_an_id_is_refused_without_releasing_the_first() {
        let set = Mutex::new(HashSet::new());
        let id = uuid::Uuid::new_v4();
        let first = InFlight::claim(&set, id).expect("first claim");
        assert!(InFlight::claim(&set, id).is_none(), "the duplicate is refused");
        assert!(set.lock().unwrap().contains(&id), "and the first claim still holds");
        drop(first);
        assert!(InFlight::claim(&set, id).is_some(), "free again once the first is done");
    }
}
