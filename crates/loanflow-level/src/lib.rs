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

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_migrations::embed_migrations;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

use futures_util::future::join_all;
use loanflow_domain::messages::{ApproverDecision, RoutingSlip, StatusEvent, WorkItem, WorkMessage};
use loanflow_domain::rules::{self, LevelKind, ManagerVerdict, Verdict};
use loanflow_domain::{DecidedBy, Decision, Outcome, Reference, Status};
use loanflow_platform::broker::access::{self, Senders};
use loanflow_platform::broker::{self, step_queue, Announcement, Answers, Batch, BrokerError, Disposition, Publisher};
use loanflow_platform::db::{self, blocking, inbox, DbError, PgPool};
use loanflow_platform::service;
use loanflow_platform::settings::LevelsSettings;
use loanflow_platform::shutdown::Running;
use loanflow_platform::Settings;

/// The service's schema. The precise reasons behind decisions are a record: never changed.
pub const SCHEMA: db::SchemaDefinition =
    db::SchemaDefinition { migrations: embed_migrations!("../../schema/level"), append_only: &["internal_reasons"] };

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
    #[error(transparent)]
    Health(#[from] service::ListenError),
    #[error("the synchronous twin needs twin.secret to be set")]
    NoTwinSecret,
}

/// Counts what this process did; tests read it to see that work was shared.
#[derive(Debug, Default)]
pub struct LevelStats {
    pub decided: AtomicU64,
    /// The most deliveries one batch held.
    pub largest_batch: AtomicU64,
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
    /// Who may send an approver's decision (the intake).
    deciders: Senders,
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
    mut settings: Settings,
    name: &str,
    shutdown: CancellationToken,
) -> Result<(Running, Arc<LevelStats>), StartError> {
    settings.broker = settings.broker.acting_as(&access::level(name));
    let rule = Rule::new(&settings, name)?;
    let database = settings.levels.database_for(name).map_err(|_| StartError::UnknownLevel(name.to_owned()))?;
    let pool = db::migrated_pool(&database, SCHEMA).await?;
    let stats = Arc::new(LevelStats::default());
    // A person's decision comes from the intake, where approvers sign in; from no level.
    let deciders = Senders::just(&settings.broker, vec![access::INTAKE.to_owned()]);
    let level = Arc::new(Level {
        in_flight: Default::default(),
        name: name.to_owned(),
        rule,
        pool,
        stats: stats.clone(),
        deciders,
    });
    let (pool, retention) = (level.pool.clone(), settings.retention.clone());
    let every = Duration::from_secs(retention.sweep_minutes.saturating_mul(60));
    let sweep = loanflow_platform::retention::every(every, "inbox", shutdown.clone(), move || {
        let (pool, before) = (pool.clone(), loanflow_platform::retention::cutoff_days(retention.inbox_days));
        async move { blocking(&pool, move |conn| inbox::forget_before(conn, before)).await }
    });
    let consumer = service::Consumer {
        queue: step_queue(name),
        senders: Senders::of(&settings.broker, access::Queue::Level(name)),
        health_listen: settings.levels.health_listen.clone(),
    };
    let running = service::start(
        settings,
        consumer,
        shutdown,
        |tasks| drop(tasks.spawn(sweep)),
        move |batch, publisher| {
            let level = level.clone();
            async move { level.handle_batch(batch, publisher).await }
        },
    )?;
    tracing::info!(level = name, health = ?running.addr, "level started");
    Ok((running, stats))
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

/// One work item of a batch, on its way through [`Level::handle_batch`].
struct Item {
    /// Its place in the batch (and in the answer).
    index: usize,
    reference: Reference,
    message_id: uuid::Uuid,
    work: WorkItem,
    last_attempt: bool,
    /// Its delivery's span: its trace goes on in what it sends.
    span: Span,
}

/// An item whose rule decided, until its batch's writes are done: what a failure of
/// those writes needs to retry it, or, on its last attempt, to announce it `failed`.
struct Decided {
    index: usize,
    message_id: uuid::Uuid,
    reference: Reference,
    decided_so_far: usize,
    last_attempt: bool,
    span: Span,
}

/// What each item's rule came to, ready to be written and announced.
struct Outcomes {
    /// Events to announce, confirmed before any work is forwarded: the status never
    /// shows a later step, or `approved`, ahead of the decision that allowed it.
    events: Vec<Announcement>,
    /// Approved items, forwarded to the next step of their slip.
    forwards: Vec<(Reference, WorkItem, Span)>,
    /// Applications that wait for a person (with their trace), stored before they are
    /// announced.
    waiting: Vec<(String, serde_json::Value, Option<String>)>,
    /// Precise reasons behind neutral public ones, kept in this level's own table.
    internal: Vec<(String, String, DateTime<Utc>)>,
}

impl Level {
    /// Handles a delivery batch: one inbox look-up and one inbox record for the whole
    /// batch, the rules applied concurrently (credit asks the bureau for every item at
    /// once, each call with its own timeout), every outgoing message sent before any
    /// confirm is awaited. Each item still gets its own disposition.
    async fn handle_batch(&self, batch: Batch, publisher: Publisher) -> Vec<Disposition> {
        self.stats.largest_batch.fetch_max(batch.len() as u64, Ordering::Relaxed);
        let mut answers = Answers::for_batch(&batch);
        let mut items = Vec::new();
        let mut claims = Vec::new();
        let mut approvals = Vec::new();
        for (index, envelope) in answers.decode::<WorkMessage>(&batch) {
            let incoming = &batch[index];
            let (reference, message_id) = (envelope.reference, envelope.message_id);
            // Also catches the same message twice in one batch.
            let Some(claim) = InFlight::claim(&self.in_flight, message_id) else {
                answers.set(index, Disposition::Retry("the same message is being handled already".into()));
                continue;
            };
            claims.push(claim);
            match envelope.body {
                WorkMessage::V1(work) if work.slip.current() != Some(self.name.as_str()) => {
                    let why = format!("message for step {:?} reached level {:?}", work.slip.current(), self.name);
                    answers.set(index, Disposition::DeadLetter(why));
                }
                WorkMessage::V1(work) => items.push(Item {
                    index,
                    reference,
                    message_id,
                    work,
                    last_attempt: incoming.is_last_attempt(),
                    span: incoming.span.clone(),
                }),
                WorkMessage::ApprovalV1(_) if !self.deciders.allows(incoming.sender.as_deref()) => {
                    let sender = incoming.sender.as_deref().unwrap_or("nobody");
                    tracing::warn!(security_event = "decision_refused", %reference, %sender, "an approver's decision from a sender that may not send one");
                    answers.set(
                        index,
                        Disposition::DeadLetter(format!("refused: {sender} may not send an approver's decision")),
                    );
                }
                WorkMessage::ApprovalV1(decision) => {
                    approvals.push((index, reference, message_id, decision, incoming.span.clone()))
                }
                WorkMessage::WithdrawalV1(_) => {
                    let why = format!("a withdrawal reached level {:?}; withdrawals go to the ledger", self.name);
                    answers.set(index, Disposition::DeadLetter(why));
                }
            }
        }
        for (index, reference, message_id, decision, span) in approvals {
            let result = self
                .process_approval(&reference, message_id, decision, &publisher, &span)
                .instrument(span.clone())
                .await;
            answers.set(index, self.disposition(result, &reference, false, None, &publisher, &span).await);
        }
        if !items.is_empty() {
            for (index, answer) in self.process_items(items, &publisher).await {
                answers.set(index, answer);
            }
        }
        drop(claims);
        answers.into_dispositions()
    }

    /// Work items through the inbox, the rule, the writes and the announcements.
    async fn process_items(&self, items: Vec<Item>, publisher: &Publisher) -> Vec<(usize, Disposition)> {
        let ids: Vec<uuid::Uuid> = items.iter().map(|i| i.message_id).collect();
        let seen = match blocking(&self.pool, move |conn| inbox::seen_any(conn, &ids)).await {
            Ok(seen) => seen,
            Err(e) => return self.all_failed(items, StepError::Db(e), publisher).await,
        };
        let (duplicates, mut fresh): (Vec<Item>, Vec<Item>) =
            items.into_iter().partition(|item| seen.contains(&item.message_id));
        let mut answers: Vec<(usize, Disposition)> = duplicates
            .into_iter()
            .map(|item| {
                item.span.in_scope(
                    || tracing::info!(level = %self.name, reference = %item.reference, "duplicate delivery ignored"),
                );
                (item.index, Disposition::Ack)
            })
            .collect();

        let steps = join_all(fresh.iter_mut().map(|item| {
            let span = item.span.clone();
            self.rule.decide(&mut item.work).instrument(span)
        }))
        .await;
        let mut outcomes =
            Outcomes { events: Vec::new(), forwards: Vec::new(), waiting: Vec::new(), internal: Vec::new() };
        let mut decided = Vec::new();
        for (item, step) in fresh.into_iter().zip(steps) {
            match step {
                Ok(step) => {
                    let done = Decided {
                        index: item.index,
                        message_id: item.message_id,
                        reference: item.reference.clone(),
                        decided_so_far: item.work.decisions.len(),
                        last_attempt: item.last_attempt,
                        span: item.span.clone(),
                    };
                    match item
                        .span
                        .in_scope(|| self.outcome(item.reference.clone(), item.work, step, &item.span, &mut outcomes))
                    {
                        Ok(()) => decided.push(done),
                        Err(e) => answers.push((item.index, Disposition::DeadLetter(e.to_string()))),
                    }
                }
                Err(e) => {
                    let decided_so_far = Some(item.work.decisions.len());
                    let answer = self
                        .disposition(Err(e), &item.reference, item.last_attempt, decided_so_far, publisher, &item.span)
                        .await;
                    answers.push((item.index, answer));
                }
            }
        }
        let written = self.write_and_announce(outcomes, publisher).await;
        let result = match written {
            Ok(()) => {
                // Recorded only once everything above is committed and confirmed: a crash
                // before this redelivers the batch and the steps are done again, with the
                // same message ids, which the next consumers recognise.
                let ids: Vec<uuid::Uuid> = decided.iter().map(|d| d.message_id).collect();
                blocking(&self.pool, move |conn| inbox::record_all(conn, &ids)).await.map_err(StepError::Db)
            }
            Err(e) => Err(e),
        };
        let answer = match result {
            Ok(()) => {
                self.stats.decided.fetch_add(decided.len() as u64, Ordering::Relaxed);
                Disposition::Ack
            }
            Err(StepError::Broker(e)) => {
                // The connection is likely gone; the deliveries come back when it returns.
                tracing::warn!(error = %e, "outgoing messages not confirmed");
                Disposition::Requeue
            }
            Err(e) => {
                tracing::warn!(error = %e, "batch not completed");
                for d in decided.iter().filter(|d| d.last_attempt) {
                    self.announce_failure(&d.reference, d.decided_so_far, publisher, &d.span).await;
                }
                Disposition::Retry(e.to_string())
            }
        };
        answers.extend(decided.into_iter().map(|d| (d.index, answer.clone())));
        answers
    }

    /// Adds what one item's step came to.
    fn outcome(
        &self,
        reference: Reference,
        mut work: WorkItem,
        step: Step,
        span: &Span,
        outcomes: &mut Outcomes,
    ) -> Result<(), StepError> {
        let now = Utc::now();
        match step {
            Step::AwaitApprover => {
                let row = serde_json::to_value(&work).map_err(|e| StepError::Misrouted(e.to_string()))?;
                let traceparent = loanflow_platform::trace::traceparent(span);
                outcomes.waiting.push((reference.as_str().to_owned(), row, traceparent));
                let event = StatusEvent {
                    score: work.score,
                    ..StatusEvent::progress(
                        work.decisions.len(),
                        Status::AwaitingApprover,
                        Some(self.name.clone()),
                        now,
                    )
                }
                .with_decisions(&work.decisions);
                tracing::info!(level = %self.name, %reference, "waiting for an approver");
                outcomes.events.push((reference, event, span.clone()));
            }
            Step::Decided(verdict) => {
                if let Some(internal) = verdict.internal_reason {
                    outcomes.internal.push((reference.as_str().to_owned(), internal, now));
                }
                let decision = Decision {
                    level: self.name.clone(),
                    outcome: verdict.outcome,
                    reason: verdict.reason,
                    decided_by: DecidedBy::Auto,
                    decided_at: now,
                };
                let (event, next) = Self::decided(&mut work, decision);
                tracing::info!(level = %self.name, %reference, outcome = verdict.outcome.as_str(), "decided");
                let (level, outcome) = (self.name.clone(), verdict.outcome.as_str());
                metrics::counter!(loanflow_platform::metrics::DECISIONS, "level" => level, "outcome" => outcome)
                    .increment(1);
                if let Some(slip) = next {
                    work.slip = slip;
                    outcomes.forwards.push((reference.clone(), work, span.clone()));
                }
                outcomes.events.push((reference, event, span.clone()));
            }
        }
        Ok(())
    }

    /// Stores the waiting applications (one statement), then announces every event and
    /// waits for their confirms once, then forwards every approved item and waits once.
    async fn write_and_announce(&self, outcomes: Outcomes, publisher: &Publisher) -> Result<(), StepError> {
        let Outcomes { events, forwards, waiting, internal } = outcomes;
        if !waiting.is_empty() || !internal.is_empty() {
            blocking(&self.pool, move |conn| {
                use schema::{internal_reasons as notes, waiting as w};
                if !waiting.is_empty() {
                    let rows: Vec<_> = waiting
                        .into_iter()
                        .map(|(key, row, trace)| (w::reference.eq(key), w::work.eq(row), w::traceparent.eq(trace)))
                        .collect();
                    diesel::insert_into(w::table).values(rows).on_conflict_do_nothing().execute(conn)?;
                }
                if !internal.is_empty() {
                    let rows: Vec<_> = internal
                        .into_iter()
                        .map(|(key, reason, at)| {
                            (notes::reference.eq(key), notes::reason.eq(reason), notes::decided_at.eq(at))
                        })
                        .collect();
                    diesel::insert_into(notes::table).values(rows).on_conflict_do_nothing().execute(conn)?;
                }
                Ok::<(), DbError>(())
            })
            .await?;
        }
        broker::confirmed(broker::start_statuses(publisher, events).await?).await?;
        let mut confirms = Vec::with_capacity(forwards.len());
        for (reference, work, span) in forwards {
            confirms.push(broker::start_work(publisher, &reference, work, &span).await?);
        }
        broker::confirmed(confirms).await?;
        Ok(())
    }

    /// Every item failed alike (the inbox could not be read).
    async fn all_failed(&self, items: Vec<Item>, e: StepError, publisher: &Publisher) -> Vec<(usize, Disposition)> {
        tracing::warn!(error = %e, "batch not started");
        let mut answers = Vec::with_capacity(items.len());
        for item in items {
            let retry = Disposition::Retry(e.to_string());
            if item.last_attempt {
                self.announce_failure(&item.reference, item.work.decisions.len(), publisher, &item.span).await;
            }
            answers.push((item.index, retry));
        }
        answers
    }

    /// The disposition of one item's result. A work item that fails on its last attempt
    /// is announced `failed` (`decided_so_far` is its decisions so far; `None` for an
    /// approver's decision, which has no retry budget of its own to announce).
    async fn disposition(
        &self,
        result: Result<(), StepError>,
        reference: &Reference,
        last_attempt: bool,
        decided_so_far: Option<usize>,
        publisher: &Publisher,
        span: &Span,
    ) -> Disposition {
        match result {
            Ok(()) => Disposition::Ack,
            Err(StepError::Misrouted(why)) => Disposition::DeadLetter(why),
            Err(StepError::Broker(e)) => {
                // The connection is likely gone; the delivery comes back when it returns.
                tracing::warn!(error = %e, "outgoing messages not confirmed");
                Disposition::Requeue
            }
            Err(e) => {
                span.in_scope(|| tracing::warn!(error = %e, %reference, "step not completed"));
                if let (true, Some(decided)) = (last_attempt, decided_so_far) {
                    self.announce_failure(reference, decided, publisher, span).await;
                }
                Disposition::Retry(e.to_string())
            }
        }
    }

    /// The retry budget is spent: the application becomes `failed` (its message goes
    /// to the dead-letter queue, from which it can be replayed).
    async fn announce_failure(&self, reference: &Reference, decided_so_far: usize, publisher: &Publisher, span: &Span) {
        let event = StatusEvent::progress(decided_so_far, Status::Failed, Some(self.name.clone()), Utc::now());
        if let Err(e) = broker::send_status(publisher, reference, event, span).await {
            tracing::warn!(error = %e, "could not announce the failure");
        }
    }

    /// Records a decision on the work item; the event announcing it, and the slip the
    /// item goes on with (none: the chain ends here).
    fn decided(work: &mut WorkItem, decision: Decision) -> (StatusEvent, Option<RoutingSlip>) {
        let outcome = decision.outcome;
        work.decisions.push(decision.clone());
        let next = match outcome {
            Outcome::Approved => work.slip.advanced(),
            _ => None,
        };
        let status = if next.is_some() { Status::InReview } else { Status::Rejected };
        let current_level = next.as_ref().and_then(|s| s.current_level().map(str::to_owned));
        let event = StatusEvent::decided(decision, work.decisions.len(), status, current_level);
        (event.with_decisions(&work.decisions), next)
    }

    /// Announces a decision and, on approval, forwards the application to the next
    /// step of its slip; a rejection ends the chain.
    async fn apply_decision(
        &self,
        reference: &Reference,
        mut work: WorkItem,
        decision: Decision,
        publisher: &Publisher,
        span: &Span,
    ) -> Result<(), StepError> {
        let outcome = decision.outcome;
        let (event, next) = Self::decided(&mut work, decision);
        match next {
            Some(slip) => {
                work.slip = slip;
                // The decision is announced (and confirmed) before the next step can
                // start, so the status never shows a later step, or `approved`, ahead
                // of the decision that allowed it.
                broker::send_status(publisher, reference, event, span).await?;
                broker::send_work(publisher, reference, work, span).await?;
            }
            None => broker::send_status(publisher, reference, event, span).await?,
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
        span: &Span,
    ) -> Result<(), StepError> {
        if self.rule.kind != LevelKind::Manager || approval.level != self.name {
            return Err(StepError::Misrouted(format!(
                "an approval for level {:?} reached level {:?}",
                approval.level, self.name
            )));
        }
        if !approval.outcome.is_verdict() {
            return Err(StepError::Misrouted(format!("an approver cannot decide {:?}", approval.outcome.as_str())));
        }
        let key = reference.as_str().to_owned();
        let waiting = blocking(&self.pool, move |conn| {
            if inbox::seen(conn, message_id)? {
                return Ok(None);
            }
            Ok(Some(
                schema::waiting::table
                    .find(&key)
                    .select((schema::waiting::work, schema::waiting::traceparent))
                    .first::<(serde_json::Value, Option<String>)>(conn)
                    .optional()?,
            ))
        })
        .await?;
        match waiting {
            None => tracing::info!(level = %self.name, "duplicate delivery ignored"),
            Some(None) => tracing::info!(level = %self.name, "no application waiting; it was decided already"),
            Some(Some((row, traceparent))) => {
                // The application goes on in its own trace, linked to the decision's.
                let resumed = tracing::info_span!(parent: None, "decided by a person", reference = %reference);
                loanflow_platform::trace::continue_trace(
                    &resumed,
                    loanflow_platform::trace::context_of(traceparent.as_deref()),
                );
                loanflow_platform::trace::link(&resumed, span);
                let span = &resumed;
                let mut work: WorkItem = serde_json::from_value(row)
                    .map_err(|e| StepError::Misrouted(format!("unreadable waiting application: {e}")))?;
                // Four eyes: the rule, checked here too, whatever the sender checked.
                let mut approvers: Vec<&str> = approval.earlier.iter().map(|e| e.approver.as_str()).collect();
                approvers.push(&approval.approver);
                approvers.sort_unstable();
                approvers.dedup();
                let needed = rules::approvals_needed(&work.application, &self.rule.policies.manager);
                if approval.outcome == Outcome::Approved && approvers.len() < needed {
                    return Err(StepError::Misrouted(format!(
                        "dual control: {needed} different approvers must approve, {} did",
                        approvers.len()
                    )));
                }
                for earlier in &approval.earlier {
                    work.decisions.push(Decision {
                        level: self.name.clone(),
                        outcome: Outcome::Approved,
                        reason: earlier.reason.clone(),
                        decided_by: DecidedBy::Approver(earlier.approver.clone()),
                        decided_at: earlier.decided_at,
                    });
                }
                let decision = Decision {
                    level: self.name.clone(),
                    outcome: approval.outcome,
                    reason: approval.reason,
                    decided_by: DecidedBy::Approver(approval.approver),
                    decided_at: approval.decided_at,
                };
                self.apply_decision(reference, work, decision, publisher, span).await?;
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
        let url = format!("{}/api/scores", self.policies.bureau_url.trim_end_matches('/'));
        let unavailable = |e: reqwest::Error| StepError::BureauUnavailable(e.without_url().to_string());
        let request = serde_json::json!({ "national_id": national_id });
        let call = loanflow_platform::trace::inject_http(&Span::current(), self.bureau.post(url));
        let response = call.json(&request).send().await.map_err(unavailable)?;
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
