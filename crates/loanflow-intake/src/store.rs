//! The intake's tables: applications, their decisions (the status projection) and
//! the outbox. Every function runs on a connection lent by [`loanflow_platform::db::blocking`].

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bytea, Int8, Text, Uuid as SqlUuid};
use serde_json::Value;
use uuid::Uuid;

use loanflow_domain::messages::StatusEvent;
use loanflow_domain::rules::Offer;
use loanflow_domain::{Decision, Reference, Status};
use loanflow_platform::db::DbError;

use crate::schema::{application_status, applications, awaiting, decisions, outbox};
use crate::sql::{ApplyEvents, InsertSubmissions, Known};

/// A message waiting in the outbox.
#[derive(Debug, Clone, QueryableByName)]
pub struct OutboxRow {
    #[diesel(sql_type = Int8)]
    pub id: i64,
    #[diesel(sql_type = SqlUuid)]
    pub message_id: Uuid,
    #[diesel(sql_type = Text)]
    pub reference: String,
    #[diesel(sql_type = Text)]
    pub exchange: String,
    #[diesel(sql_type = Text)]
    pub routing_key: String,
    #[diesel(sql_type = Bytea)]
    pub payload: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    pub traceparent: Option<String>,
}

/// A message to hand to the broker through the outbox.
#[derive(Debug)]
pub struct OutboxMessage {
    pub reference: Reference,
    pub message_id: Uuid,
    pub exchange: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    /// The trace of the act that queued it, which its publication continues.
    pub traceparent: Option<String>,
}

pub(crate) fn insert_outbox(conn: &mut PgConnection, m: &OutboxMessage) -> Result<(), diesel::result::Error> {
    diesel::insert_into(outbox::table)
        .values((
            outbox::message_id.eq(m.message_id),
            outbox::reference.eq(m.reference.as_str()),
            outbox::exchange.eq(&m.exchange),
            outbox::routing_key.eq(&m.routing_key),
            outbox::payload.eq(&m.payload),
            outbox::traceparent.eq(m.traceparent.as_deref()),
        ))
        .execute(conn)
        .map(drop)
}

/// What a submission writes, in one transaction.
#[derive(Debug)]
pub struct Submission {
    pub reference: Reference,
    pub application: Value,
    pub submitted_at: DateTime<Utc>,
    pub message: OutboxMessage,
}

/// What recording a submission did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    New,
    /// The idempotency key was seen before, with the same application.
    Existing(String),
    /// The idempotency key was seen before, with another application.
    KeyReused,
}

/// Records an accepted application, its first message and its idempotency key
/// atomically: all exist or none does. A key seen before returns the first
/// submission's reference instead, and records nothing.
pub fn record(
    conn: &mut PgConnection,
    s: &Submission,
    key: Option<&str>,
    keys_since: DateTime<Utc>,
) -> Result<Recorded, DbError> {
    // Two requests with the same new key can race; the loser's insert violates the
    // key's primary key, and its second pass finds the winner's row.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let recorded = record_group(conn, &[(s, key)], keys_since).map(|mut r| r.pop());
        match recorded {
            Ok(Some(recorded)) => return Ok(recorded),
            Ok(None) => return Err(DbError::Corrupt("a submission was not answered".into())),
            Err(DbError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            ))) if attempt < 2 && key.is_some() => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Records a group of submissions that arrived together in one transaction (group
/// commit): one commit, one WAL flush, for the whole group, and one statement per table.
/// Each submission's answer is what [`record`] would have given it alone, including
/// two submissions of the group with the same idempotency key (the second gets the
/// first's reference). All or nothing: on an error the caller records them one by one.
///
/// An idempotency key is remembered from `keys_since` on: an older one is forgotten
/// here (and by the retention sweep), so that the key may be used again.
pub fn record_group(
    conn: &mut PgConnection,
    group: &[(&Submission, Option<&str>)],
    keys_since: DateTime<Utc>,
) -> Result<Vec<Recorded>, DbError> {
    use crate::schema::idempotency_keys;
    if group.iter().all(|(_, key)| key.is_none()) {
        // Nothing to look up first: one statement, one round trip, for the whole group.
        // One statement is atomic: it recorded every submission of the group, or none.
        InsertSubmissions::new(group.iter().map(|(s, _)| *s)).execute(conn)?;
        return Ok(vec![Recorded::New; group.len()]);
    }
    conn.transaction(|conn| {
        let keys: Vec<&str> = group.iter().filter_map(|(_, key)| *key).collect();
        diesel::delete(
            idempotency_keys::table
                .filter(idempotency_keys::key.eq_any(&keys))
                .filter(idempotency_keys::created_at.lt(keys_since)),
        )
        .execute(conn)?;
        let earlier: HashMap<String, (String, Value)> = if keys.is_empty() {
            HashMap::new()
        } else {
            idempotency_keys::table
                .inner_join(applications::table)
                .filter(idempotency_keys::key.eq_any(&keys))
                .select((idempotency_keys::key, applications::reference, applications::application))
                .load::<(String, String, Value)>(conn)?
                .into_iter()
                .map(|(key, reference, application)| (key, (reference, application)))
                .collect()
        };
        let same = |first: &Value, again: &Value, reference: &str| {
            if first == again {
                Recorded::Existing(reference.to_owned())
            } else {
                Recorded::KeyReused
            }
        };
        let mut first_with_key: HashMap<&str, &Submission> = HashMap::new();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut new: Vec<(&Submission, Option<&str>)> = Vec::with_capacity(group.len());
        for (submission, key) in group {
            if let Some(key) = key {
                if let Some((reference, application)) = earlier.get(*key) {
                    outcomes.push(same(application, &submission.application, reference));
                    continue;
                }
                if let Some(first) = first_with_key.get(key) {
                    outcomes.push(same(&first.application, &submission.application, first.reference.as_str()));
                    continue;
                }
                first_with_key.insert(key, submission);
            }
            outcomes.push(Recorded::New);
            new.push((submission, *key));
        }
        if new.is_empty() {
            return Ok(outcomes);
        }
        let rows: Vec<_> = new
            .iter()
            .map(|(s, _)| {
                (
                    applications::reference.eq(s.reference.as_str()),
                    applications::application.eq(&s.application),
                    applications::submitted_at.eq(s.submitted_at),
                )
            })
            .collect();
        diesel::insert_into(applications::table).values(rows).execute(conn)?;
        let statuses: Vec<_> = new.iter().map(|(s, _)| submitted_status(&s.reference, s.submitted_at)).collect();
        diesel::insert_into(application_status::table).values(statuses).execute(conn)?;
        let messages: Vec<_> = new
            .iter()
            .map(|(s, _)| {
                let m = &s.message;
                (
                    outbox::message_id.eq(m.message_id),
                    outbox::reference.eq(m.reference.as_str()),
                    outbox::exchange.eq(&m.exchange),
                    outbox::routing_key.eq(&m.routing_key),
                    outbox::payload.eq(&m.payload),
                    outbox::traceparent.eq(m.traceparent.as_deref()),
                )
            })
            .collect();
        diesel::insert_into(outbox::table).values(messages).execute(conn)?;
        let keyed: Vec<_> = new
            .iter()
            .filter_map(|(s, key)| {
                key.map(|k| (idempotency_keys::key.eq(k), idempotency_keys::reference.eq(s.reference.as_str())))
            })
            .collect();
        if !keyed.is_empty() {
            diesel::insert_into(idempotency_keys::table).values(keyed).execute(conn)?;
        }
        Ok(outcomes)
    })
}

/// Records an application alone, with no message: the synchronous twin calls the
/// levels itself.
pub fn record_application(
    conn: &mut PgConnection,
    reference: &Reference,
    application: &Value,
    submitted_at: DateTime<Utc>,
) -> Result<(), DbError> {
    conn.transaction(|conn| insert_application(conn, reference, application, submitted_at))?;
    Ok(())
}

fn insert_application(
    conn: &mut PgConnection,
    reference: &Reference,
    application: &Value,
    submitted_at: DateTime<Utc>,
) -> Result<(), diesel::result::Error> {
    diesel::insert_into(applications::table)
        .values((
            applications::reference.eq(reference.as_str()),
            applications::application.eq(application),
            applications::submitted_at.eq(submitted_at),
        ))
        .execute(conn)?;
    diesel::insert_into(application_status::table).values(submitted_status(reference, submitted_at)).execute(conn)?;
    Ok(())
}

/// The status row of a new application.
#[allow(clippy::type_complexity)]
fn submitted_status(
    reference: &Reference,
    at: DateTime<Utc>,
) -> (
    diesel::dsl::Eq<application_status::reference, &str>,
    diesel::dsl::Eq<application_status::status, &'static str>,
    diesel::dsl::Eq<application_status::updated_at, DateTime<Utc>>,
) {
    (
        application_status::reference.eq(reference.as_str()),
        application_status::status.eq(Status::Submitted.as_str()),
        application_status::updated_at.eq(at),
    )
}

/// An application's status as the API shows it.
#[derive(Debug, Clone)]
pub struct StatusView {
    pub status: Status,
    pub current_level: Option<String>,
    pub submitted_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub decisions: Vec<Decision>,
    pub offer: Option<Offer>,
    /// The applicant asked to withdraw it; the ledger's answer is awaited.
    pub withdrawing: bool,
}

type StatusRow = (String, Option<String>, Option<Value>, DateTime<Utc>, DateTime<Utc>, Option<DateTime<Utc>>);
type DecisionRow = (String, String, String, String, DateTime<Utc>);

pub fn load_status(conn: &mut PgConnection, reference: &Reference) -> Result<Option<StatusView>, DbError> {
    let row: Option<StatusRow> = application_status::table
        .inner_join(applications::table)
        .filter(application_status::reference.eq(reference.as_str()))
        .select((
            application_status::status,
            application_status::current_level,
            application_status::offer,
            applications::submitted_at,
            application_status::updated_at,
            application_status::withdrawal_requested_at,
        ))
        .first(conn)
        .optional()?;
    let Some((status, current_level, offer, submitted_at, updated_at, withdrawal)) = row else {
        return Ok(None);
    };
    let mut decisions =
        decisions_of(conn, &[reference.as_str().to_owned()])?.remove(reference.as_str()).unwrap_or_default();
    // The CHECK constraint keeps the column to known statuses; anything else is an
    // error, never quietly shown as some other status.
    let status = Status::parse(&status).ok_or_else(|| DbError::Corrupt(format!("unknown status {status:?}")))?;
    // Once the applicant asked to withdraw it, no decision made after the request shows,
    // unless the ledger booked the loan first (then every decision that led to it does).
    if let (Some(requested), false) = (withdrawal, status == Status::Approved) {
        decisions.retain(|d| d.outcome == loanflow_domain::Outcome::Withdrawn || d.decided_at <= requested);
    }
    Ok(Some(StatusView {
        withdrawing: withdrawal.is_some(),
        status,
        current_level,
        submitted_at,
        updated_at,
        decisions,
        offer: offer.and_then(|o| serde_json::from_value(o).ok()),
    }))
}

/// Applies status events, idempotently and in any order, in one statement (see
/// [`ApplyEvents`]): each decision is added once per level, and each application's
/// status moves only forward (by `seq`) and never out of a final state. Returns the
/// references among them that exist; an event for any other is ignored.
pub fn apply_events<'a>(
    conn: &mut PgConnection,
    events: impl IntoIterator<Item = (&'a Reference, &'a StatusEvent)>,
) -> Result<HashSet<String>, DbError> {
    let known = ApplyEvents::new(events).load::<Known>(conn)?;
    Ok(known.into_iter().map(|k| k.reference).collect())
}

/// An application waiting for a person, with what the person needs to decide.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub reference: String,
    pub level: String,
    pub application: Value,
    pub score: Option<i32>,
    pub waiting_since: DateTime<Utc>,
    pub escalated_at: Option<DateTime<Utc>>,
    /// The unexpired claim on it: who, until when.
    pub claim: Option<(String, DateTime<Utc>)>,
    pub decisions: Vec<Decision>,
}

/// The most applications one inbox page shows.
const INBOX_LIMIT: i64 = 200;

/// Applications waiting at any of `levels`, oldest first; a level `<name>-escalated`
/// means the escalated cases of `<name>`.
pub fn waiting_at(conn: &mut PgConnection, levels: &[String], now: DateTime<Utc>) -> Result<Vec<Waiting>, DbError> {
    use crate::schema::claims;
    type WaitingRow = (String, String, Value, Option<i32>, DateTime<Utc>, Option<DateTime<Utc>>);
    let escalated: Vec<&str> = levels.iter().filter_map(|l| l.strip_suffix(crate::cases::ESCALATED_SUFFIX)).collect();
    let rows: Vec<WaitingRow> = awaiting::table
        .inner_join(applications::table.inner_join(application_status::table))
        .filter(
            awaiting::level
                .eq_any(levels)
                .or(awaiting::level.eq_any(&escalated).and(awaiting::escalated_at.is_not_null())),
        )
        .order(awaiting::since.asc())
        .limit(INBOX_LIMIT)
        .select((
            awaiting::reference,
            awaiting::level,
            applications::application,
            application_status::score,
            awaiting::since,
            awaiting::escalated_at,
        ))
        .load(conn)?;
    let references: Vec<String> = rows.iter().map(|row| row.0.clone()).collect();
    let mut decisions = decisions_of(conn, &references)?;
    let mut claimed: HashMap<String, (String, DateTime<Utc>)> = claims::table
        .filter(claims::reference.eq_any(&references))
        .filter(claims::claimed_until.gt(now))
        .select((claims::reference, claims::approver, claims::claimed_until))
        .load::<(String, String, DateTime<Utc>)>(conn)?
        .into_iter()
        .map(|(reference, approver, until)| (reference, (approver, until)))
        .collect();
    Ok(rows
        .into_iter()
        .map(|(reference, level, application, score, waiting_since, escalated_at)| Waiting {
            decisions: decisions.remove(&reference).unwrap_or_default(),
            claim: claimed.remove(&reference),
            reference,
            level,
            application,
            score,
            waiting_since,
            escalated_at,
        })
        .collect())
}

/// The decisions of each of `references`, in chain order: one query for all.
fn decisions_of(conn: &mut PgConnection, references: &[String]) -> Result<HashMap<String, Vec<Decision>>, DbError> {
    let rows: Vec<(String, DecisionRow)> = decisions::table
        .filter(decisions::reference.eq_any(references))
        .order((decisions::reference.asc(), decisions::seq.asc()))
        .select((
            decisions::reference,
            (decisions::level, decisions::outcome, decisions::reason, decisions::decided_by, decisions::decided_at),
        ))
        .load(conn)?;
    let mut by_reference: HashMap<String, Vec<Decision>> = HashMap::new();
    for (reference, (level, outcome, reason, decided_by, decided_at)) in rows {
        // `outcome` has a CHECK constraint and `decided_by` is only written from a
        // `DecidedBy`, so both parse; a row that did not would be skipped, not shown.
        let (Some(outcome), Ok(decided_by)) = (loanflow_domain::Outcome::parse(&outcome), decided_by.try_into()) else {
            continue;
        };
        by_reference.entry(reference).or_default().push(Decision { level, outcome, reason, decided_by, decided_at });
    }
    Ok(by_reference)
}

/// Forgets every idempotency key older than `keys_since` (the retention sweep).
pub fn forget_idempotency_keys(conn: &mut PgConnection, keys_since: DateTime<Utc>) -> Result<usize, DbError> {
    use crate::schema::idempotency_keys;
    Ok(diesel::delete(idempotency_keys::table.filter(idempotency_keys::created_at.lt(keys_since))).execute(conn)?)
}

/// Leases up to `batch` unsent outbox rows, oldest first. Rows another relay holds
/// (an unexpired lease, or a row locked right now) are skipped, so several intake
/// instances share the outbox without publishing a row twice in the normal case.
pub fn claim_outbox(conn: &mut PgConnection, batch: i64) -> Result<Vec<OutboxRow>, DbError> {
    Ok(diesel::sql_query(
        "UPDATE outbox SET claimed_until = now() + interval '30 seconds' \
         WHERE id IN (SELECT id FROM outbox \
                      WHERE claimed_until IS NULL OR claimed_until < now() \
                      ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
         RETURNING id, message_id, reference, exchange, routing_key, payload, traceparent",
    )
    .bind::<BigInt, _>(batch)
    .load(conn)?)
}

/// How many messages wait in the outbox, and how old the oldest is (seconds; 0 if none).
pub fn outbox_backlog(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<(i64, f64), DbError> {
    let (count, oldest): (i64, Option<DateTime<Utc>>) =
        outbox::table.select((diesel::dsl::count_star(), diesel::dsl::min(outbox::created_at))).first(conn)?;
    let age = oldest.map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
    Ok((count, age))
}

/// Removes rows whose messages the broker has confirmed.
pub fn delete_outbox(conn: &mut PgConnection, ids: &[i64]) -> Result<(), DbError> {
    diesel::delete(outbox::table.filter(outbox::id.eq_any(ids))).execute(conn)?;
    Ok(())
}

/// Gives rows back after a failed publish, so the next attempt need not wait for the lease.
pub fn release_outbox(conn: &mut PgConnection, ids: &[i64]) -> Result<(), DbError> {
    diesel::update(outbox::table.filter(outbox::id.eq_any(ids)))
        .set(outbox::claimed_until.eq(None::<DateTime<Utc>>))
        .execute(conn)?;
    Ok(())
}
