//! A case at the human level, as the intake keeps it: who claims it, the approvals it
//! has been given (dual control), when it is escalated, and the applicant's withdrawal.
//! Every act locks the application's status row first (`FOR UPDATE`), so acts on one
//! case — two approvers racing, a withdrawal racing a decision, the projection moving
//! the status — happen one after another, and each is recorded in the audit trail in
//! its own transaction.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Jsonb, Nullable, Text, Timestamptz};
use serde_json::{json, Value};

use loanflow_domain::messages::{EarlierApproval, StatusEvent};
use loanflow_domain::rules::{approvals_needed, ManagerPolicy};
use loanflow_domain::{Application, Outcome, Reference, Status};
use loanflow_platform::audit::{self, Act};
use loanflow_platform::db::DbError;

use crate::approvals::Approver;
use crate::schema::{approvals_given, awaiting, claims, decisions};
use crate::store::{insert_outbox, OutboxMessage};

/// Why an act on a case was refused.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("no such application")]
    NotFound,
    #[error("the application is not waiting for that decision")]
    NotAwaiting,
    #[error("this approver may not decide that level")]
    Forbidden,
    #[error("another approver holds this case")]
    ClaimedByOther(String),
    #[error("you have decided this application already")]
    AlreadyDecidedByYou,
    #[error("the application is final already")]
    AlreadyFinal,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for CaseError {
    fn from(e: diesel::result::Error) -> Self {
        CaseError::Db(DbError::Query(e))
    }
}

/// The suffix of the level whose approvers see a case once it is escalated.
pub const ESCALATED_SUFFIX: &str = "-escalated";

#[derive(QueryableByName)]
struct CaseRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Text>)]
    current_level: Option<String>,
    #[diesel(sql_type = Jsonb)]
    application: Value,
    #[diesel(sql_type = Bool)]
    withdrawing: bool,
    #[diesel(sql_type = Nullable<Bool>)]
    escalated: Option<bool>,
}

/// A case as found under its lock.
struct Case {
    status: Status,
    level: Option<String>,
    application: Value,
    withdrawing: bool,
    escalated: bool,
}

fn lock(conn: &mut PgConnection, reference: &Reference) -> Result<Case, CaseError> {
    let row: Option<CaseRow> = diesel::sql_query(
        "SELECT s.status, s.current_level, a.application, \
                s.withdrawal_requested_at IS NOT NULL AS withdrawing, \
                (SELECT q.escalated_at IS NOT NULL FROM awaiting q WHERE q.reference = s.reference) AS escalated \
         FROM application_status s JOIN applications a USING (reference) \
         WHERE s.reference = $1 FOR UPDATE OF s",
    )
    .bind::<Text, _>(reference.as_str())
    .get_result(conn)
    .optional()?;
    let row = row.ok_or(CaseError::NotFound)?;
    let status =
        Status::parse(&row.status).ok_or_else(|| DbError::Corrupt(format!("unknown status {:?}", row.status)))?;
    Ok(Case {
        status,
        level: row.current_level,
        application: row.application,
        withdrawing: row.withdrawing,
        escalated: row.escalated.unwrap_or(false),
    })
}

impl Case {
    /// The level a person may act on now: the case waits there, no withdrawal is
    /// pending, and `approver` may decide it (or its escalation, once escalated).
    fn level_for(&self, approver: &Approver) -> Result<String, CaseError> {
        let level = match (&self.level, self.status) {
            (Some(level), Status::AwaitingApprover) if !self.withdrawing => level.clone(),
            _ => return Err(CaseError::NotAwaiting),
        };
        if may_decide(approver, &level, self.escalated) {
            Ok(level)
        } else {
            Err(CaseError::Forbidden)
        }
    }
}

/// Whether `approver` may act on a case waiting at `level`.
pub fn may_decide(approver: &Approver, level: &str, escalated: bool) -> bool {
    approver.levels.iter().any(|l| l == level || (escalated && *l == format!("{level}{ESCALATED_SUFFIX}")))
}

fn actor(approver: &Approver) -> String {
    format!("approver:{}", approver.name)
}

/// The unexpired claim on a case by someone other than `approver`, if any.
fn held_by_other(
    conn: &mut PgConnection,
    reference: &Reference,
    approver: &Approver,
    now: DateTime<Utc>,
) -> Result<Option<String>, CaseError> {
    let holder: Option<String> = claims::table
        .find(reference.as_str())
        .filter(claims::claimed_until.gt(now))
        .select(claims::approver)
        .first(conn)
        .optional()?;
    Ok(holder.filter(|h| *h != approver.name).map(|h| format!("approver:{h}")))
}

/// A claim as the API answers it.
#[derive(Debug, Clone)]
pub struct Claim {
    pub claimed_by: String,
    pub claimed_until: DateTime<Utc>,
}

/// Claims (or renews) a waiting case for `approver` until `until`.
pub fn claim(
    conn: &mut PgConnection,
    reference: &Reference,
    approver: &Approver,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Claim, CaseError> {
    conn.transaction(|conn| {
        lock(conn, reference)?.level_for(approver)?;
        if let Some(other) = held_by_other(conn, reference, approver, now)? {
            return Err(CaseError::ClaimedByOther(other));
        }
        diesel::insert_into(claims::table)
            .values((
                claims::reference.eq(reference.as_str()),
                claims::approver.eq(&approver.name),
                claims::claimed_until.eq(until),
            ))
            .on_conflict(claims::reference)
            .do_update()
            .set((claims::approver.eq(&approver.name), claims::claimed_until.eq(until)))
            .execute(conn)?;
        let detail = json!({ "claimed_until": crate::status::timestamp(until) });
        audit::record(
            conn,
            &Act { actor: &actor(approver), action: "claim", reference: Some(reference.as_str()), detail },
            now,
        )?;
        Ok(Claim { claimed_by: actor(approver), claimed_until: until })
    })
}

/// Releases `approver`'s claim on a case. Releasing a case nobody holds changes
/// nothing; another approver's claim is theirs to release.
pub fn release(
    conn: &mut PgConnection,
    reference: &Reference,
    approver: &Approver,
    now: DateTime<Utc>,
) -> Result<(), CaseError> {
    conn.transaction(|conn| {
        lock(conn, reference)?;
        if let Some(other) = held_by_other(conn, reference, approver, now)? {
            return Err(CaseError::ClaimedByOther(other));
        }
        let released = diesel::delete(
            claims::table.filter(claims::reference.eq(reference.as_str())).filter(claims::approver.eq(&approver.name)),
        )
        .execute(conn)?;
        if released > 0 {
            let act = Act {
                actor: &actor(approver),
                action: "release",
                reference: Some(reference.as_str()),
                detail: json!({}),
            };
            audit::record(conn, &act, now)?;
        }
        Ok(())
    })
}

/// A person's decision on a case.
#[derive(Debug)]
pub struct Decision<'a> {
    pub approver: &'a Approver,
    pub outcome: Outcome,
    pub reason: String,
    pub now: DateTime<Utc>,
}

/// What a decision did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// An approval that dual control needs another for: recorded, still waiting.
    Recorded { level: String },
    /// The deciding act: handed to the level with the approvals before it.
    Handed { level: String },
}

/// Decides a case: the approver must be allowed to, the case unclaimed or theirs, and
/// not decided by them before. An approval the case needs more of is recorded (in its
/// timeline too) and the case keeps waiting; the last approval, or any rejection, goes
/// to the level through the outbox (`message` builds it from the level and the earlier
/// approvals) and the case leaves the inbox.
pub fn decide(
    conn: &mut PgConnection,
    reference: &Reference,
    decision: &Decision<'_>,
    policy: &ManagerPolicy,
    message: impl FnOnce(&str, Vec<EarlierApproval>) -> OutboxMessage,
) -> Result<Decided, CaseError> {
    let Decision { approver, outcome, reason, now } = decision;
    conn.transaction(|conn| {
        let case = lock(conn, reference)?;
        let level = case.level_for(approver)?;
        if let Some(other) = held_by_other(conn, reference, approver, *now)? {
            return Err(CaseError::ClaimedByOther(other));
        }
        let given: Vec<(String, String, DateTime<Utc>)> = approvals_given::table
            .filter(approvals_given::reference.eq(reference.as_str()))
            .filter(approvals_given::level.eq(&level))
            .order(approvals_given::decided_at.asc())
            .select((approvals_given::approver, approvals_given::reason, approvals_given::decided_at))
            .load(conn)?;
        if given.iter().any(|(name, _, _)| *name == approver.name) {
            return Err(CaseError::AlreadyDecidedByYou);
        }
        let application: Application = serde_json::from_value(case.application)
            .map_err(|e| DbError::Corrupt(format!("stored application {reference}: {e}")))?;
        let detail = json!({ "level": level, "outcome": outcome.as_str(), "reason": reason });
        audit::record(
            conn,
            &Act { actor: &actor(approver), action: "decision", reference: Some(reference.as_str()), detail },
            *now,
        )?;
        diesel::delete(claims::table.find(reference.as_str())).execute(conn)?;
        if *outcome == Outcome::Approved && given.len() + 1 < approvals_needed(&application, policy) {
            diesel::insert_into(approvals_given::table)
                .values((
                    approvals_given::reference.eq(reference.as_str()),
                    approvals_given::level.eq(&level),
                    approvals_given::approver.eq(&approver.name),
                    approvals_given::reason.eq(reason),
                    approvals_given::decided_at.eq(now),
                ))
                .execute(conn)?;
            // In the timeline at once: the level will announce it again, with the same
            // place in the order, when the last approval reaches it.
            let decided = level_decisions(conn, reference)?;
            diesel::insert_into(decisions::table)
                .values((
                    decisions::reference.eq(reference.as_str()),
                    decisions::level.eq(&level),
                    decisions::seq.eq(i32::try_from(StatusEvent::decision_seq(decided + 1)).unwrap_or(i32::MAX)),
                    decisions::outcome.eq(outcome.as_str()),
                    decisions::reason.eq(reason),
                    decisions::decided_by.eq(actor(approver)),
                    decisions::decided_at.eq(now),
                ))
                .on_conflict_do_nothing()
                .execute(conn)?;
            return Ok(Decided::Recorded { level });
        }
        let earlier = given
            .into_iter()
            .map(|(approver, reason, decided_at)| EarlierApproval { approver, reason, decided_at })
            .collect();
        insert_outbox(conn, &message(&level, earlier))?;
        diesel::delete(approvals_given::table.filter(approvals_given::reference.eq(reference.as_str())))
            .execute(conn)?;
        diesel::delete(awaiting::table.find(reference.as_str())).execute(conn)?;
        diesel::update(crate::schema::application_status::table.find(reference.as_str()))
            .set((
                crate::schema::application_status::status.eq(Status::InReview.as_str()),
                crate::schema::application_status::updated_at.eq(Utc::now()),
            ))
            .execute(conn)?;
        Ok(Decided::Handed { level })
    })
}

/// How many decisions the levels have made (the timeline's other entries aside).
fn level_decisions(conn: &mut PgConnection, reference: &Reference) -> Result<usize, CaseError> {
    let verdicts: Vec<&str> = Outcome::ALL.iter().filter(|o| o.is_verdict()).map(|o| o.as_str()).collect();
    let n: i64 = decisions::table
        .filter(decisions::reference.eq(reference.as_str()))
        .filter(decisions::outcome.eq_any(verdicts))
        .count()
        .get_result(conn)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// What a withdrawal request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawing {
    /// Requested now: its message is queued.
    Requested,
    /// Requested before and not answered yet.
    Pending,
}

/// Records an applicant's withdrawal and queues its message to the ledger, unless the
/// application is final. The case leaves the approver inbox at once.
pub fn withdraw(
    conn: &mut PgConnection,
    reference: &Reference,
    reason: Option<&str>,
    now: DateTime<Utc>,
    message: &OutboxMessage,
) -> Result<Withdrawing, CaseError> {
    use crate::schema::withdrawals;
    conn.transaction(|conn| {
        let case = lock(conn, reference)?;
        if case.status.is_final() {
            return Err(CaseError::AlreadyFinal);
        }
        if case.withdrawing {
            return Ok(Withdrawing::Pending);
        }
        diesel::insert_into(withdrawals::table)
            .values((
                withdrawals::reference.eq(reference.as_str()),
                withdrawals::reason.eq(reason),
                withdrawals::requested_at.eq(now),
            ))
            .execute(conn)?;
        diesel::update(crate::schema::application_status::table.find(reference.as_str()))
            .set(crate::schema::application_status::withdrawal_requested_at.eq(now))
            .execute(conn)?;
        for table in ["awaiting", "claims", "approvals_given"] {
            diesel::sql_query(format!("DELETE FROM {table} WHERE reference = $1"))
                .bind::<Text, _>(reference.as_str())
                .execute(conn)?;
        }
        insert_outbox(conn, message)?;
        let detail = json!({ "reason": reason });
        audit::record(
            conn,
            &Act { actor: "applicant", action: "withdrawal", reference: Some(reference.as_str()), detail },
            now,
        )?;
        Ok(Withdrawing::Requested)
    })
}

/// Escalates every case that has waited since before `due_before`, at `now`: the inbox
/// marks it and the timeline gets an `escalated` entry. One statement; a case is
/// escalated once. Returns how many were.
pub fn escalate_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    due_before: DateTime<Utc>,
    reason: &str,
) -> Result<usize, DbError> {
    #[derive(QueryableByName)]
    struct Escalated {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let done: Escalated = diesel::sql_query(
        "WITH due AS ( \
           UPDATE awaiting SET escalated_at = $1 WHERE escalated_at IS NULL AND since <= $2 \
           RETURNING reference, level), \
         entries AS ( \
           INSERT INTO decisions (reference, level, seq, outcome, reason, decided_by, decided_at) \
           SELECT d.reference, d.level, \
                  2 * (SELECT count(*) FROM decisions x \
                       WHERE x.reference = d.reference AND x.outcome IN ('approved', 'rejected')) + 1, \
                  'escalated', $3, 'auto', $1 \
           FROM due d ON CONFLICT DO NOTHING RETURNING 1) \
         SELECT count(*) AS n FROM due",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<Timestamptz, _>(due_before)
    .bind::<Text, _>(reason)
    .get_result(conn)?;
    Ok(usize::try_from(done.n).unwrap_or(0))
}
