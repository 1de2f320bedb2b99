//! Group commit for submissions: the requests that arrive while one transaction is
//! committing are recorded together in the next, so that a busy intake pays one commit
//! (one WAL flush) per group rather than per application. Each `202` is still answered
//! only after its own submission is committed: "accepted means durable" is unchanged.
//!
//! There is no timer: a submission that arrives alone is committed at once, and groups
//! grow by themselves as load rises (the same idea as the consumers' delivery batches).
//! One writer task per intake process; several intake processes each group their own.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify};

use loanflow_platform::db::{blocking, DbError, PgPool};

use crate::store::{self, Recorded, Submission};

/// The most submissions one transaction takes. Too low gives up the point of grouping
/// under load; too high makes one slow commit hold more applicants.
const MAX_GROUP: usize = 256;

/// Submissions waiting for the writer. A full queue makes new requests wait (the HTTP
/// workers' backpressure) instead of growing without bound.
const QUEUE: usize = 1024;

struct Job {
    submission: Submission,
    key: Option<String>,
    answer: oneshot::Sender<Result<Recorded, DbError>>,
}

/// The handle the API and the form submit through.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer task; it ends when every handle is dropped. `committed` is
    /// woken after every commit (the outbox relay publishes what was committed).
    pub fn start(pool: PgPool, committed: Arc<Notify>, remember_keys: chrono::Duration) -> Writer {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, queue, committed, remember_keys));
        Writer { jobs }
    }

    /// Records one submission, in whatever group it joins; answers once it is committed.
    pub async fn record(&self, submission: Submission, key: Option<String>) -> Result<Recorded, DbError> {
        let (answer, answered) = oneshot::channel();
        self.jobs.send(Job { submission, key, answer }).await.map_err(|_| DbError::Cancelled)?;
        answered.await.map_err(|_| DbError::Cancelled)?
    }
}

async fn run(pool: PgPool, mut queue: mpsc::Receiver<Job>, committed: Arc<Notify>, remember_keys: chrono::Duration) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    // `recv_many` takes what is waiting (at least one): the group is what arrived while
    // the last transaction was committing.
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        let jobs: Vec<Job> = std::mem::take(&mut group);
        let answers = record(&pool, jobs, chrono::Utc::now() - remember_keys).await;
        if answers.iter().any(|(_, result)| matches!(result, Ok(Recorded::New))) {
            committed.notify_one();
        }
        for (answer, result) in answers {
            // A requester that went away (its connection closed) needs no answer; what
            // was committed stays committed and is published.
            let _ = answer.send(result);
        }
    }
}

type Answered = (oneshot::Sender<Result<Recorded, DbError>>, Result<Recorded, DbError>);

/// The group in one transaction; should that fail, each submission on its own, so that
/// one that the database refuses (or a racing intake's key) fails no other.
async fn record(pool: &PgPool, jobs: Vec<Job>, keys_since: chrono::DateTime<chrono::Utc>) -> Vec<Answered> {
    let (answers, group): (Vec<_>, Vec<_>) = jobs.into_iter().map(|j| (j.answer, (j.submission, j.key))).unzip();
    let size = answers.len();
    let recorded = blocking(pool, move |conn| {
        let group: Vec<(&Submission, Option<&str>)> = group.iter().map(|(s, key)| (s, key.as_deref())).collect();
        Ok(match store::record_group(conn, &group, keys_since) {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) => {
                if group.len() > 1 {
                    tracing::warn!(error = %e, submissions = group.len(), "group not recorded; recording one by one");
                }
                group.iter().map(|(s, key)| store::record(conn, s, *key, keys_since)).collect::<Vec<_>>()
            }
        })
    })
    .await;
    match recorded {
        Ok(results) => answers.into_iter().zip(results).collect(),
        // No connection at all: every submission of the group fails alike.
        Err(e) => {
            tracing::warn!(error = %e, submissions = size, "submissions not recorded");
            let why = e.to_string();
            answers.into_iter().map(|a| (a, Err(DbError::Unavailable(why.clone())))).collect()
        }
    }
}
