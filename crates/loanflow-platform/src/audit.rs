//! The audit trail: every human act (a decision, a claim or its release, a withdrawal,
//! a failed sign-in, a dead-letter replay), one row each, in an append-only table of the
//! service that performs it, in the transaction of the act itself: an act is recorded
//! if and only if it happened.
//!
//! Each row is chained to the one before: its hash is SHA-256 over the previous row's
//! hash and the row's own fields, so that changing or removing a row breaks the chain
//! from there on, and [`verify`] names the first row that no longer fits. The runtime
//! role may insert and read the table, never update or delete it (the schema's
//! append-only tables); the chain catches what a more privileged hand does. Removing the
//! newest rows leaves a shorter chain that is still whole: every append logs the new
//! head (`audit_head`) to the service's log, a record kept outside the database to
//! compare the head with.

use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bytea, Nullable, Text, Timestamptz};
use sha2::{Digest, Sha256};

use crate::db::DbError;

/// An act to record.
#[derive(Debug, Clone)]
pub struct Act<'a> {
    /// Who: `approver:<name>`, `operator:<name>`, `applicant`, or `client:<address>`
    /// for an authentication that named nobody.
    pub actor: &'a str,
    /// What, as a fixed word: `decision`, `claim`, `release`, `withdrawal`,
    /// `sign_in_failed`, `dead_letter_replay`.
    pub action: &'a str,
    pub reference: Option<&'a str>,
    /// What else matters (the outcome and reason of a decision…), as JSON; never
    /// personal data.
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, QueryableByName)]
pub struct Row {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Timestamptz)]
    pub at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub actor: String,
    #[diesel(sql_type = Text)]
    pub action: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub reference: Option<String>,
    #[diesel(sql_type = Text)]
    pub detail: String,
    #[diesel(sql_type = Bytea)]
    pub prev_hash: Vec<u8>,
    #[diesel(sql_type = Bytea)]
    pub hash: Vec<u8>,
}

/// The hash before the first row.
const GENESIS: [u8; 32] = [0; 32];

/// The row's hash: over the previous hash and each field, each length-prefixed, so no
/// two different rows encode alike.
fn hash_of(
    prev: &[u8],
    id: i64,
    at: DateTime<Utc>,
    actor: &str,
    action: &str,
    reference: Option<&str>,
    detail: &str,
) -> Vec<u8> {
    let mut h = Sha256::new();
    let at = at.timestamp_micros().to_string();
    let id = id.to_string();
    for field in [
        prev,
        id.as_bytes(),
        at.as_bytes(),
        actor.as_bytes(),
        action.as_bytes(),
        reference.unwrap_or("\u{0}").as_bytes(),
        detail.as_bytes(),
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    h.finalize().to_vec()
}

/// Appends `act` at `at`, on the caller's connection (inside the act's transaction when
/// it has one; a transaction of its own otherwise). Appends are serialised by a lock
/// on the table's newest row's position, so the chain never forks.
pub fn record(conn: &mut PgConnection, act: &Act<'_>, at: DateTime<Utc>) -> Result<(), DbError> {
    // The database keeps microseconds: the hash is over what is stored.
    let at = DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at);
    let detail = act.detail.to_string();
    conn.transaction(|conn| {
        // One appender at a time per schema; held until the act's transaction ends.
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.audit_trail'))")
            .execute(conn)?;
        let last: Option<Row> = diesel::sql_query(
            "SELECT id, at, actor, action, reference, detail, prev_hash, hash FROM audit_trail ORDER BY id DESC LIMIT 1",
        )
        .get_result(conn)
        .optional()?;
        let (id, prev) = last.map_or((1, GENESIS.to_vec()), |row| (row.id + 1, row.hash));
        let hash = hash_of(&prev, id, at, act.actor, act.action, act.reference, &detail);
        diesel::sql_query(
            "INSERT INTO audit_trail (id, at, actor, action, reference, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind::<BigInt, _>(id)
        .bind::<Timestamptz, _>(at)
        .bind::<Text, _>(act.actor)
        .bind::<Text, _>(act.action)
        .bind::<Nullable<Text>, _>(act.reference)
        .bind::<Text, _>(&detail)
        .bind::<Bytea, _>(&prev)
        .bind::<Bytea, _>(&hash)
        .execute(conn)?;
        tracing::info!(audit_head = id, hash = %hex(&hash), action = act.action, "audit trail appended");
        Ok::<(), DbError>(())
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What verification found wrong with a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// The row's fields no longer give its hash: it was changed.
    Changed { id: i64 },
    /// The row does not follow the one before it (its id or its link skips): rows before
    /// it were removed, or the row before it was rewritten with a fresh hash.
    Unlinked { id: i64 },
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Break::Changed { id } => write!(f, "row {id} was changed: its contents do not give its hash"),
            Break::Unlinked { id } => {
                write!(f, "row {id} does not follow the row before it: rows before it were removed or rewritten")
            }
        }
    }
}

/// The result of a verification: how many rows were read, the newest hash, and every
/// break found.
#[derive(Debug, Clone)]
pub struct Verified {
    pub rows: usize,
    pub head: Option<String>,
    pub breaks: Vec<Break>,
}

/// Reads the whole trail in order and checks every row's hash and link.
pub fn verify(conn: &mut PgConnection) -> Result<Verified, DbError> {
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT id, at, actor, action, reference, detail, prev_hash, hash FROM audit_trail ORDER BY id",
    )
    .load(conn)?;
    Ok(check(&rows))
}

fn check(rows: &[Row]) -> Verified {
    let mut breaks = Vec::new();
    let mut expected_id = 1;
    let mut prev = GENESIS.to_vec();
    for row in rows {
        if row.id != expected_id || row.prev_hash != prev {
            breaks.push(Break::Unlinked { id: row.id });
        }
        let hash =
            hash_of(&row.prev_hash, row.id, row.at, &row.actor, &row.action, row.reference.as_deref(), &row.detail);
        if hash != row.hash {
            breaks.push(Break::Changed { id: row.id });
        }
        expected_id = row.id + 1;
        prev = row.hash.clone();
    }
    Verified { rows: rows.len(), head: rows.last().map(|r| hex(&r.hash)), breaks }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<Row> {
        let mut prev = GENESIS.to_vec();
        let at = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
        (1..=n)
            .map(|id| {
                let detail = format!("{{\"n\":{id}}}");
                let hash = hash_of(&prev, id, at, "approver:grace", "claim", Some("LN-X"), &detail);
                let row = Row {
                    id,
                    at,
                    actor: "approver:grace".into(),
                    action: "claim".into(),
                    reference: Some("LN-X".into()),
                    detail,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                row
            })
            .collect()
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let verified = check(&chain(5));
        assert_eq!((verified.rows, verified.breaks), (5, vec![]));
    }

    #[test]
    fn a_changed_row_is_named() {
        let mut rows = chain(5);
        rows[2].detail = "{\"n\":99}".into();
        assert_eq!(check(&rows).breaks, vec![Break::Changed { id: 3 }]);
        let mut rows = chain(5);
        rows[1].actor = "approver:mallory".into();
        assert_eq!(check(&rows).breaks, vec![Break::Changed { id: 2 }]);
    }

    #[test]
    fn a_removed_row_is_found_even_when_the_ids_are_renumbered() {
        let mut rows = chain(5);
        rows.remove(1);
        assert_eq!(check(&rows).breaks, vec![Break::Unlinked { id: 3 }]);
        for (i, row) in rows.iter_mut().enumerate() {
            row.id = i as i64 + 1;
        }
        assert!(!check(&rows).breaks.is_empty(), "renumbering breaks the hashes instead");
    }

    #[test]
    fn a_rewritten_row_with_a_fresh_hash_breaks_the_next_link() {
        let mut rows = chain(4);
        rows[1].detail = "{\"n\":7}".into();
        rows[1].hash = hash_of(&rows[1].prev_hash, 2, rows[1].at, "approver:grace", "claim", Some("LN-X"), "{\"n\":7}");
        assert_eq!(check(&rows).breaks, vec![Break::Unlinked { id: 3 }]);
    }
}
