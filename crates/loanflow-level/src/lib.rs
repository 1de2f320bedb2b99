//! An approval level: consumes its own queue, applies its rule, and forwards the
//! application to the next step of its routing slip (or ends the chain on a
//! rejection), publishing a status event for every decision.
//!
//! One crate serves every level; which one a process runs is configuration
//! (`loanflow level credit`). Several processes may run the same level: they share
//! its queue and the broker gives each delivery to one of them.

mod schema;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use loanflow_domain::messages::{Envelope, StatusEvent, WorkItem, WorkMessage};
use loanflow_domain::rules::{self, LevelKind, ManagerVerdict, Verdict};
use loanflow_domain::{DecidedBy, Decision, Outcome, Reference, Status};
use loanflow_platform::broker::{self, step_queue, BrokerError, Disposition, Incoming, Publisher};
use loanflow_platform::db::{self, blocking, DbError, PgPool};
use loanflow_platform::shutdown::Running;
use loanflow_platform::Settings;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../schema/level");

/// How long a credit decision waits before trying an unavailable bureau again.
/// Too short hammers a bureau that is struggling; too long delays applications after
/// it recovers.
const BUREAU_RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0:?} is not a known level (kyc, credit, underwriting, manager)")]
    UnknownLevel(String),
    #[error("level database: {0}")]
    Database(#[from] DbError),
    #[error("bureau client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Counts what this process did; tests read it to see that work was shared.
#[derive(Debug, Default)]
pub struct LevelStats {
    pub decided: AtomicU64,
}

struct Level {
    name: String,
    kind: LevelKind,
    settings: Settings,
    pool: PgPool,
    bureau: reqwest::Client,
    stats: Arc<LevelStats>,
}

/// Starts level `name`: migrates its schema and consumes its queue until `shutdown`.
pub async fn start(
    settings: Settings,
    name: &str,
    shutdown: CancellationToken,
) -> Result<(Running, Arc<LevelStats>), StartError> {
    let kind = LevelKind::from_name(name).ok_or_else(|| StartError::UnknownLevel(name.to_owned()))?;
    let db_settings = settings.levels.database_for(name);
    let pool = db::pool(&db_settings);
    let migrate_pool = pool.clone();
    tokio::task::spawn_blocking(move || db::migrate(&migrate_pool, &db_settings.schema, MIGRATIONS))
        .await
        .map_err(|_| DbError::Cancelled)??;
    let bureau =
        reqwest::Client::builder().timeout(Duration::from_millis(settings.levels.bureau_timeout_ms)).build()?;
    let stats = Arc::new(LevelStats::default());
    let level =
        Arc::new(Level { name: name.to_owned(), kind, settings: settings.clone(), pool, bureau, stats: stats.clone() });
    let tasks = TaskTracker::new();
    tasks.spawn(broker::consume(settings, step_queue(name), shutdown, move |incoming, publisher| {
        let level = level.clone();
        async move { level.handle(incoming, publisher).await }
    }));
    tracing::info!(level = name, "level started");
    Ok((Running::new(None, tasks), stats))
}

/// What a level's rule came to.
enum Step {
    Decided(Verdict),
    AwaitApprover,
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("bureau unavailable: {0}")]
    BureauUnavailable(String),
    #[error("{0}")]
    Misrouted(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
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
        let WorkMessage::V1(work) = envelope.body;
        match self.process(&envelope.reference, work, &publisher).await {
            Ok(()) => Disposition::Ack,
            Err(StepError::Misrouted(why)) => Disposition::DeadLetter(why),
            Err(e @ StepError::BureauUnavailable(_)) => {
                tracing::warn!(error = %e, "credit check delayed");
                tokio::time::sleep(BUREAU_RETRY_DELAY).await;
                Disposition::Requeue
            }
            Err(e) => {
                tracing::warn!(error = %e, "step not completed; will retry");
                Disposition::Requeue
            }
        }
    }

    async fn process(&self, reference: &Reference, mut work: WorkItem, publisher: &Publisher) -> Result<(), StepError> {
        if work.slip.current() != Some(self.name.as_str()) {
            return Err(StepError::Misrouted(format!(
                "message for step {:?} reached level {:?}",
                work.slip.current(),
                self.name
            )));
        }
        let step = self.decide(&mut work).await?;
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
                let event = StatusEvent {
                    seq: StatusEvent::progress_seq(work.decisions.len()),
                    status: Status::AwaitingApprover,
                    current_level: Some(self.name.clone()),
                    decision: None,
                    offer: None,
                    occurred_at: now,
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
                work.decisions.push(decision.clone());
                let next = match verdict.outcome {
                    Outcome::Approved => work.slip.advanced(),
                    Outcome::Rejected => None,
                };
                let event = StatusEvent {
                    seq: StatusEvent::decision_seq(work.decisions.len()),
                    status: if next.is_some() { Status::InReview } else { Status::Rejected },
                    current_level: next.as_ref().and_then(|s| s.current_level().map(str::to_owned)),
                    decision: Some(decision),
                    offer: None,
                    occurred_at: now,
                };
                match next {
                    Some(slip) => {
                        work.slip = slip;
                        tokio::try_join!(
                            broker::send_status(publisher, reference, event),
                            broker::send_work(publisher, reference, work),
                        )?;
                    }
                    None => broker::send_status(publisher, reference, event).await?,
                }
                tracing::info!(level = %self.name, outcome = verdict.outcome.as_str(), "decided");
            }
        }
        self.stats.decided.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn decide(&self, work: &mut WorkItem) -> Result<Step, StepError> {
        let policies = &self.settings.levels;
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
        let url = format!("{}/api/scores/{national_id}", self.settings.levels.bureau_url.trim_end_matches('/'));
        let unavailable = |e: reqwest::Error| StepError::BureauUnavailable(e.without_url().to_string());
        let response = self.bureau.get(url).send().await.map_err(unavailable)?;
        let response = response.error_for_status().map_err(unavailable)?;
        let body: ScoreBody = response.json().await.map_err(unavailable)?;
        Ok(body.score)
    }
}
