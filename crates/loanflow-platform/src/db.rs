//! The database: one pool per service, bound to the service's own schema.
//!
//! Services use synchronous diesel on tokio's blocking pool ([`blocking`]); one access
//! style everywhere keeps transactions simple. Every pooled connection has its
//! `search_path` set to the service's schema, so the generated `schema.rs` stays
//! unqualified and the same migrations serve production and every test's fresh schema.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, Connection as _, InstrumentationEvent, TransactionManager};

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

use crate::settings::DatabaseSettings;

pub type PgPool = Pool<ConnectionManager<PgConnection>>;
pub type PgPooled = PooledConnection<ConnectionManager<PgConnection>>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no database connection: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    #[error("migrations failed: {0}")]
    Migration(String),
    #[error("database task was cancelled")]
    Cancelled,
    #[error("could not encode a value for the database: {0}")]
    Encode(String),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("unexpected value in the database: {0}")]
    Corrupt(String),
}

/// `[a-z_][a-z0-9_]*`: schema names are spliced into SQL, so only plain identifiers
/// are accepted (checked when settings load).
pub fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && s.len() <= 63
}

/// Statements and transactions every connection of a schema's pools has run: what a
/// test asserts on so that a later change cannot quietly undo the batching.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    statements: Arc<AtomicU64>,
    transactions: Arc<AtomicU64>,
}

impl Counters {
    /// The counters of every pool bound to `schema` in this process.
    pub fn of(schema: &str) -> Counters {
        static ALL: OnceLock<Mutex<HashMap<String, Counters>>> = OnceLock::new();
        let all = ALL.get_or_init(Default::default);
        let mut all = all.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        all.entry(schema.to_owned()).or_default().clone()
    }

    /// Statements sent (a `BEGIN` and a `COMMIT` count too: each is a round trip).
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Transactions opened explicitly (each autocommit statement is one more).
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    fn instrument(&self, conn: &mut PgConnection) {
        let (statements, transactions) = (self.statements.clone(), self.transactions.clone());
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| match event {
            InstrumentationEvent::StartQuery { .. } => {
                statements.fetch_add(1, Ordering::Relaxed);
            }
            InstrumentationEvent::FinishQuery { error: Some(error), .. } if is_connection_lost(error) => {
                CONNECTION_LOST.with(|lost| lost.set(true));
            }
            InstrumentationEvent::BeginTransaction { depth, .. } if depth.get() == 1 => {
                transactions.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        });
    }
}

#[derive(Debug)]
struct SessionSetup {
    schema: String,
    statement_timeout_ms: u64,
    counters: Counters,
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for SessionSetup {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        self.counters.instrument(conn);
        conn.batch_execute(&format!(
            "SET search_path TO \"{}\"; SET statement_timeout = {}; SET TIME ZONE 'UTC';",
            self.schema, self.statement_timeout_ms
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// A pool for the service's schema. Connections are opened lazily, so a service can
/// start (and report not-ready) while the database is still coming up.
pub fn pool(settings: &DatabaseSettings) -> PgPool {
    Pool::builder()
        .max_size(settings.pool_size.max(1))
        .min_idle(Some(0))
        // No `SELECT 1` before every checkout: it doubled the round trips of the short
        // statements every message makes. A connection broken since its last use
        // fails its query instead, and that work is retried like any other failure.
        .test_on_check_out(false)
        .connection_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .connection_customizer(Box::new(SessionSetup {
            schema: settings.schema.clone(),
            statement_timeout_ms: settings.statement_timeout_ms,
            counters: Counters::of(&settings.schema),
        }))
        .build_unchecked(ConnectionManager::new(&settings.url))
}

/// Creates the schema if needed and runs pending migrations, under an advisory lock
/// so that instances starting together migrate once, in turn.
pub fn migrate(pool: &PgPool, schema: &str, migrations: EmbeddedMigrations) -> Result<(), DbError> {
    let mut conn = pool.get()?;
    conn.batch_execute("SELECT pg_advisory_lock(hashtext('loanflow.migrate'))")?;
    let result =
        conn.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).map_err(DbError::from).and_then(
            |()| conn.run_pending_migrations(migrations).map(drop).map_err(|e| DbError::Migration(e.to_string())),
        );
    let unlocked = conn.batch_execute("SELECT pg_advisory_unlock(hashtext('loanflow.migrate'))");
    result?;
    unlocked?;
    Ok(())
}

/// The service's pool, once its schema is migrated: what every service starts with.
pub async fn migrated_pool(settings: &DatabaseSettings, migrations: EmbeddedMigrations) -> Result<PgPool, DbError> {
    let pool = pool(settings);
    let (for_migration, schema) = (pool.clone(), settings.schema.clone());
    tokio::task::spawn_blocking(move || migrate(&for_migration, &schema, migrations))
        .await
        .map_err(|_| DbError::Cancelled)??;
    Ok(pool)
}

thread_local! {
    /// Set by a connection's instrumentation, on the thread that ran the query, when
    /// the server was found gone; read by [`blocking`].
    static CONNECTION_LOST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn is_connection_lost(error: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    matches!(
        error,
        Error::DatabaseError(DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand, _)
    )
}

/// Runs blocking diesel work on tokio's blocking pool, keeping the caller's tracing
/// span so its logs still carry the reference.
pub async fn blocking<T, F>(pool: &PgPool, work: F) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnOnce(&mut PgConnection) -> Result<T, DbError> + Send + 'static,
{
    let pool = pool.clone();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let mut conn = pool.get()?;
        CONNECTION_LOST.with(|lost| lost.set(false));
        let result = work(&mut conn);
        if CONNECTION_LOST.with(|lost| lost.get()) {
            // The pool would lend this dead connection again (diesel reports a
            // connection broken only after a failed transaction), and every later piece
            // of work would fail at once, burning its retries in milliseconds. Marked
            // broken, the pool drops it and connects anew, waiting up to its timeout.
            let conn: &mut PgConnection = &mut conn;
            AnsiTransactionManager::transaction_manager_status_mut(conn).set_in_error();
        }
        result
    })
    .await
    .map_err(|_| DbError::Cancelled)?
}

/// The inbox every consuming service keeps (`processed_messages`, created by its own
/// migrations): ids of the messages it has fully handled.
pub mod inbox {
    use std::collections::HashSet;

    use diesel::prelude::*;
    use diesel::sql_types::Uuid as SqlUuid;
    use uuid::Uuid;

    use super::DbError;

    diesel::table! {
        processed_messages (message_id) {
            message_id -> Uuid,
            processed_at -> Timestamptz,
        }
    }

    /// Forgets the messages handled before `before` (the retention sweep).
    pub fn forget_before(conn: &mut PgConnection, before: chrono::DateTime<chrono::Utc>) -> Result<usize, DbError> {
        use processed_messages::dsl;
        Ok(diesel::delete(dsl::processed_messages.filter(dsl::processed_at.lt(before))).execute(conn)?)
    }

    /// Which of `ids` were fully handled before: one statement for a whole batch.
    pub fn seen_any(conn: &mut PgConnection, ids: &[Uuid]) -> Result<HashSet<Uuid>, DbError> {
        use processed_messages::dsl;
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let found: Vec<Uuid> =
            dsl::processed_messages.filter(dsl::message_id.eq_any(ids)).select(dsl::message_id).load(conn)?;
        Ok(found.into_iter().collect())
    }

    /// Records `ids` as handled: one statement for a whole batch. Keys are sorted so
    /// that concurrent batches lock rows in the same order and cannot deadlock.
    pub fn record_all(conn: &mut PgConnection, ids: &[Uuid]) -> Result<(), DbError> {
        use processed_messages::dsl;
        if ids.is_empty() {
            return Ok(());
        }
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let rows: Vec<_> = sorted.into_iter().map(|id| dsl::message_id.eq(id)).collect();
        diesel::insert_into(dsl::processed_messages).values(rows).on_conflict_do_nothing().execute(conn)?;
        Ok(())
    }

    pub fn seen(conn: &mut PgConnection, message_id: Uuid) -> Result<bool, DbError> {
        let found = diesel::sql_query("SELECT 1 FROM processed_messages WHERE message_id = $1")
            .bind::<SqlUuid, _>(message_id)
            .execute(conn)?;
        Ok(found > 0)
    }

    pub fn record(conn: &mut PgConnection, message_id: Uuid) -> Result<(), DbError> {
        diesel::sql_query("INSERT INTO processed_messages (message_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind::<SqlUuid, _>(message_id)
            .execute(conn)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_are_schema_names() {
        for ok in ["intake", "level_kyc", "_t1", "t_0a1b"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["", "Intake", "1abc", "a-b", "a\"; drop", "a b", &"a".repeat(64)] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }
}
