//! The intake's hot statements, each a whole batch in one statement, its rows bound as
//! arrays (`unnest`), and prepared: each connection plans it once (diesel caches it,
//! since its SQL never changes with the batch's size, unlike a multi-row `VALUES`).
//!
//! [`InsertSubmissions`] records a group of submissions; [`ApplyEvents`] is the
//! projection's statement for a batch of status events.
//!
//! Per application, it does what applying the events one by one in sequence order
//! would: every decision recorded once (the event's own, and every earlier one it
//! carries), and the status row moved to its latest event
//! unless it was final already (or becomes final earlier in the same batch), keeping the
//! newest score any event carried; the approver inbox (`awaiting`) gains the
//! applications that now wait for a person and loses those that no longer do. Once the
//! applicant has asked to withdraw an application, only the ledger's final answer
//! (`withdrawn`, or `approved` if it booked the loan first) changes its status: the
//! update re-checks the status row's `withdrawal_requested_at` under its row lock, so an
//! event racing the request cannot slip past it. Decisions made after the request are
//! kept out here where the request is visible, and out of the status in any case
//! ([`crate::store::load_status`]), unless the ledger booked the loan first.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Array, Bytea, Int4, Jsonb, Nullable, Text, Timestamptz, Untyped};
use diesel::RunQueryDsl;

use chrono::{DateTime, Utc};

use loanflow_domain::messages::StatusEvent;
use loanflow_domain::{Reference, Status};

use crate::store::Submission;

/// New submissions (no idempotency key to check), with their outbox messages, in one
/// statement: atomic without an explicit transaction, and one round trip for a group.
#[derive(Debug, Default)]
pub struct InsertSubmissions {
    reference: Vec<String>,
    application: Vec<serde_json::Value>,
    submitted_at: Vec<DateTime<Utc>>,
    message_id: Vec<uuid::Uuid>,
    exchange: Vec<String>,
    routing_key: Vec<String>,
    payload: Vec<Vec<u8>>,
    traceparent: Vec<Option<String>>,
}

impl InsertSubmissions {
    pub fn new<'a>(submissions: impl IntoIterator<Item = &'a Submission>) -> InsertSubmissions {
        let mut q = InsertSubmissions::default();
        for s in submissions {
            q.reference.push(s.reference.as_str().to_owned());
            q.application.push(s.application.clone());
            q.submitted_at.push(s.submitted_at);
            q.message_id.push(s.message.message_id);
            q.exchange.push(s.message.exchange.clone());
            q.routing_key.push(s.message.routing_key.clone());
            q.payload.push(s.message.payload.clone());
            q.traceparent.push(s.message.traceparent.clone());
        }
        q
    }
}

impl QueryId for InsertSubmissions {
    type QueryId = InsertSubmissions;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for InsertSubmissions {
    type SqlType = Untyped;
}

impl<Conn> RunQueryDsl<Conn> for InsertSubmissions {}

impl QueryFragment<Pg> for InsertSubmissions {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        // The foreign keys of the status row and the outbox are checked at the end of
        // the statement, when the applications inserted beside them are visible.
        out.push_sql(
            "WITH app AS (INSERT INTO applications (reference, application, submitted_at) SELECT * FROM unnest(",
        );
        out.push_bind_param::<Array<Text>, _>(&self.reference)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Jsonb>, _>(&self.application)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Timestamptz>, _>(&self.submitted_at)?;
        out.push_sql(
            ")), \
             status AS (INSERT INTO application_status (reference, status, updated_at) \
                        SELECT reference, 'submitted', at FROM unnest(",
        );
        out.push_bind_param::<Array<Text>, _>(&self.reference)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Timestamptz>, _>(&self.submitted_at)?;
        out.push_sql(
            ") AS s(reference, at)), \
             queued AS (INSERT INTO outbox (message_id, reference, exchange, routing_key, payload, traceparent) \
                        SELECT * FROM unnest(",
        );
        out.push_bind_param::<Array<diesel::sql_types::Uuid>, _>(&self.message_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.reference)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.exchange)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.routing_key)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Bytea>, _>(&self.payload)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.traceparent)?;
        out.push_sql(") RETURNING 1) SELECT count(*) FROM queued");
        Ok(())
    }
}

/// The events of one batch, as columns.
#[derive(Debug, Default)]
pub struct ApplyEvents {
    reference: Vec<String>,
    seq: Vec<i32>,
    status: Vec<String>,
    current_level: Vec<Option<String>>,
    offer: Vec<Option<serde_json::Value>>,
    occurred_at: Vec<DateTime<Utc>>,
    score: Vec<Option<i32>>,
    /// Every decision the events carry (their own and the cumulative ones), as rows.
    decisions: Decisions,
    finals: Vec<&'static str>,
}

#[derive(Debug, Default)]
struct Decisions {
    reference: Vec<String>,
    level: Vec<String>,
    seq: Vec<i32>,
    outcome: Vec<String>,
    reason: Vec<String>,
    decided_by: Vec<String>,
    decided_at: Vec<DateTime<Utc>>,
    /// The status of the event that carried it.
    carried_by: Vec<String>,
}

impl Decisions {
    fn push(&mut self, reference: &Reference, seq: u32, d: &loanflow_domain::Decision, carried_by: Status) {
        self.carried_by.push(carried_by.as_str().to_owned());
        self.reference.push(reference.as_str().to_owned());
        self.level.push(d.level.clone());
        self.seq.push(i32::try_from(seq).unwrap_or(i32::MAX));
        self.outcome.push(d.outcome.as_str().to_owned());
        self.reason.push(d.reason.clone());
        self.decided_by.push(String::from(d.decided_by.clone()));
        self.decided_at.push(d.decided_at);
    }
}

/// One row per known application the batch had events for.
#[derive(Debug, diesel::QueryableByName)]
pub struct Known {
    #[diesel(sql_type = Text)]
    pub reference: String,
}

impl ApplyEvents {
    pub fn new<'a>(events: impl IntoIterator<Item = (&'a Reference, &'a StatusEvent)>) -> ApplyEvents {
        let mut q = ApplyEvents {
            finals: Status::ALL.iter().filter(|s| s.is_final()).map(|s| s.as_str()).collect(),
            ..ApplyEvents::default()
        };
        for (reference, event) in events {
            for (i, decision) in event.decisions.iter().enumerate() {
                q.decisions.push(reference, StatusEvent::decision_seq(i + 1), decision, event.status);
            }
            if let Some(decision) = &event.decision {
                q.decisions.push(reference, event.seq, decision, event.status);
            }
            q.reference.push(reference.as_str().to_owned());
            q.seq.push(i32::try_from(event.seq).unwrap_or(i32::MAX));
            q.status.push(event.status.as_str().to_owned());
            q.current_level.push(event.current_level.clone());
            q.offer.push(event.offer.as_ref().and_then(|o| serde_json::to_value(o).ok()));
            q.occurred_at.push(event.occurred_at);
            q.score.push(event.score.map(i32::from));
        }
        q
    }
}

impl QueryId for ApplyEvents {
    type QueryId = ApplyEvents;
    // The SQL is the same for every batch: safe to prepare once and cache.
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for ApplyEvents {
    type SqlType = Untyped;
}

impl<Conn> RunQueryDsl<Conn> for ApplyEvents {}

impl QueryFragment<Pg> for ApplyEvents {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        out.push_sql("WITH e AS (SELECT * FROM unnest(");
        out.push_bind_param::<Array<Text>, _>(&self.reference)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Int4>, _>(&self.seq)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.status)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.current_level)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Jsonb>>, _>(&self.offer)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Timestamptz>, _>(&self.occurred_at)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Int4>>, _>(&self.score)?;
        out.push_sql(
            ") AS e(reference, seq, status, current_level, offer, occurred_at, score)), \
             known AS (SELECT e.* FROM e WHERE EXISTS \
                         (SELECT 1 FROM application_status a WHERE a.reference = e.reference)), \
             wanted AS (SELECT k.* FROM known k WHERE k.status IN ('approved', 'withdrawn') OR NOT EXISTS \
                         (SELECT 1 FROM application_status a \
                          WHERE a.reference = k.reference AND a.withdrawal_requested_at IS NOT NULL)), \
             decided AS ( \
               INSERT INTO decisions (reference, level, seq, outcome, reason, decided_by, decided_at) \
               SELECT reference, level, seq, outcome, reason, decided_by, decided_at FROM unnest(",
        );
        let d = &self.decisions;
        out.push_bind_param::<Array<Text>, _>(&d.reference)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&d.level)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Int4>, _>(&d.seq)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&d.outcome)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&d.reason)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&d.decided_by)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Timestamptz>, _>(&d.decided_at)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&d.carried_by)?;
        out.push_sql(
            ") AS d(reference, level, seq, outcome, reason, decided_by, decided_at, carried_by) \
               WHERE EXISTS (SELECT 1 FROM application_status a WHERE a.reference = d.reference) \
                 AND (d.carried_by = 'approved' OR NOT EXISTS \
                       (SELECT 1 FROM application_status a \
                        WHERE a.reference = d.reference AND a.withdrawal_requested_at < d.decided_at)) \
               ORDER BY reference, seq \
               ON CONFLICT DO NOTHING), \
             first_final AS ( \
               SELECT reference, min(seq) AS seq FROM wanted WHERE status = ANY(",
        );
        out.push_bind_param::<Array<Text>, _>(&self.finals)?;
        out.push_sql(
            ") GROUP BY reference), \
             latest AS ( \
               SELECT DISTINCT ON (k.reference) k.*, \
                      (SELECT s.score FROM wanted s WHERE s.reference = k.reference AND s.score IS NOT NULL \
                       ORDER BY s.seq DESC LIMIT 1) AS newest_score \
               FROM wanted k LEFT JOIN first_final f USING (reference) \
               WHERE f.seq IS NULL OR k.seq <= f.seq \
               ORDER BY k.reference, k.seq DESC), \
             moved AS ( \
               UPDATE application_status a SET status = l.status, current_level = l.current_level, \
                      seq = l.seq, offer = l.offer, updated_at = l.occurred_at, \
                      score = COALESCE(l.newest_score, a.score) \
               FROM latest l \
               WHERE a.reference = l.reference AND a.seq < l.seq \
                 AND (a.withdrawal_requested_at IS NULL OR l.status IN ('approved', 'withdrawn')) \
                 AND a.status <> ALL(",
        );
        out.push_bind_param::<Array<Text>, _>(&self.finals)?;
        out.push_sql(
            ") \
               RETURNING a.reference, a.status, a.current_level, a.updated_at), \
             left_inbox AS ( \
               DELETE FROM awaiting w USING moved m \
               WHERE w.reference = m.reference AND m.status <> 'awaiting_approver'), \
             joined_inbox AS ( \
               INSERT INTO awaiting (reference, level, since) \
               SELECT reference, current_level, updated_at FROM moved \
               WHERE status = 'awaiting_approver' AND current_level IS NOT NULL \
               ON CONFLICT (reference) DO UPDATE SET level = EXCLUDED.level, since = EXCLUDED.since, \
                   escalated_at = CASE WHEN awaiting.level = EXCLUDED.level THEN awaiting.escalated_at END) \
             SELECT DISTINCT reference FROM known",
        );
        Ok(())
    }
}
