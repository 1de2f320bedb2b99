//! The database: one pool per service, bound to the service's own schema.
//!
//! Services use synchronous diesel on tokio's blocking pool ([`blocking`]); one access
//! style everywhere keeps transactions simple. Every pooled connection has its
//! `search_path` set to the service's schema, so the generated `schema.rs` stays
//! unqualified and the same migrations serve production and every test's fresh schema.
//!
//! Two roles per service: migrations run as the owner (`<role>_owner`), which owns the
//! schema and its tables and grants the runtime role (`<role>`) only what they need; the
//! service serves as the runtime role. Neither is a superuser, and one service's roles
//! have no privilege on another's schema.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, Connection as _, InstrumentationEvent, TransactionManager};

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use crate::secret::Secret;
use crate::settings::DatabaseSettings;

/// A service's schema: its migrations, and its append-only tables, on which the runtime
/// role may insert and select but never update or delete. Services define it as a
/// `const`, so each use is a fresh value.
pub struct SchemaDefinition {
    pub migrations: EmbeddedMigrations,
    pub append_only: &'static [&'static str],
}

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

/// A PostgreSQL identifier loanflow splices into SQL (a schema or role name): only
/// `[a-z_][a-z0-9_]*`, at most 63 bytes, so a splice is safe by construction and
/// PostgreSQL never silently truncates it. Settings hold schema and role names as this
/// type, checked when they load.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Identifier(String);

impl Identifier {
    pub fn new(name: impl Into<String>) -> Result<Identifier, String> {
        let name = name.into();
        if is_identifier(&name) {
            Ok(Identifier(name))
        } else {
            Err(format!("{name:?} is not a plain identifier ([a-z_][a-z0-9_]*, at most 63 bytes)"))
        }
    }

    /// This identifier followed by `suffix` (a level's name after a prefix).
    pub fn followed_by(&self, suffix: &str) -> Result<Identifier, String> {
        Identifier::new(format!("{}{suffix}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Identifier {
    type Error = String;
    fn try_from(name: String) -> Result<Identifier, String> {
        Identifier::new(name)
    }
}

impl std::fmt::Display for Identifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for Identifier {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// `[a-z_][a-z0-9_]*`, at most 63 bytes.
pub fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && s.len() <= 63
}

/// A URL for the roles to be inserted into: `postgres://` or `postgresql://`, no user.
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| "must start with postgres://".to_owned())?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("must not name a user: services connect as their own roles (database.role)".into());
    }
    Ok(())
}

/// `url` with `role` (and its password, if configured) as the user; the connection is
/// named after the role in `pg_stat_activity`.
fn with_role(url: &str, role: &str, password: &Secret) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let credentials = if password.is_set() {
        format!("{role}:{}@", utf8_percent_encode(password.expose(), NON_ALPHANUMERIC))
    } else {
        format!("{role}@")
    };
    let separator = if rest.contains('?') { '&' } else { '?' };
    format!("{scheme}://{credentials}{rest}{separator}application_name=loanflow-{role}")
}

impl DatabaseSettings {
    /// The role that owns the schema and runs the migrations.
    pub fn owner_role(&self) -> String {
        format!("{}_owner", self.role)
    }

    /// Where the service connects to serve. Carries the password: never logged.
    pub fn runtime_url(&self) -> String {
        with_role(&self.url, &self.role, &self.password)
    }

    /// Where migrations connect. Carries the password: never logged.
    pub fn owner_url(&self) -> String {
        with_role(&self.url, &self.owner_role(), &self.owner_password)
    }
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
    schema: Identifier,
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
        .build_unchecked(ConnectionManager::new(settings.runtime_url()))
}

/// As the owner role: creates the schema if needed, runs pending migrations and grants
/// the runtime role what it needs, under an advisory lock so that instances starting
/// together migrate once, in turn.
pub fn migrate(settings: &DatabaseSettings, definition: SchemaDefinition) -> Result<(), DbError> {
    let mut conn = PgConnection::establish(&settings.owner_url())
        .map_err(|e| DbError::Unavailable(format!("as {}: {e}", settings.owner_role())))?;
    let schema = &settings.schema;
    conn.batch_execute(&format!(
        "SET statement_timeout = {}; SELECT pg_advisory_lock(hashtext('loanflow.migrate'))",
        settings.statement_timeout_ms.max(60_000)
    ))?;
    let result = conn
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"; SET search_path TO \"{schema}\""))
        .map_err(DbError::from)
        .and_then(|()| {
            conn.run_pending_migrations(definition.migrations).map(drop).map_err(|e| DbError::Migration(e.to_string()))
        })
        .and_then(|()| Ok(conn.batch_execute(&grants(schema, &settings.role, definition.append_only))?));
    let unlocked = conn.batch_execute("SELECT pg_advisory_unlock(hashtext('loanflow.migrate'))");
    result?;
    unlocked?;
    Ok(())
}

/// What the runtime role may do in its service's schema: use it; select, insert, update
/// and delete rows, except in append-only tables (select and insert) and the migration
/// history (nothing). No DDL: it owns nothing. Identifiers are checked when settings
/// load ([`is_identifier`]) and append-only tables are the services' constants.
fn grants(schema: &Identifier, role: &Identifier, append_only: &[&str]) -> String {
    let mut sql = format!(
        "GRANT USAGE ON SCHEMA \"{schema}\" TO \"{role}\";
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{schema}\" TO \"{role}\";
         GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA \"{schema}\" TO \"{role}\";
         REVOKE ALL ON \"{schema}\".__diesel_schema_migrations FROM \"{role}\";"
    );
    for table in append_only {
        sql.push_str(&format!("REVOKE UPDATE, DELETE, TRUNCATE ON \"{schema}\".\"{table}\" FROM \"{role}\";"));
    }
    sql
}

/// The service's pool, once its schema is migrated: what every service starts with.
pub async fn migrated_pool(settings: &DatabaseSettings, definition: SchemaDefinition) -> Result<PgPool, DbError> {
    let for_migration = settings.clone();
    tokio::task::spawn_blocking(move || migrate(&for_migration, definition))
        .await
        .map_err(|_| DbError::Cancelled)??;
    Ok(pool(settings))
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

/// How often [`watch`] asks the database whether it answers.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps `health` up while the database answers a trivial query through `pool` (within
/// the pool's connection timeout), until `shutdown`.
pub async fn watch(pool: PgPool, health: crate::health::Flag, shutdown: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(WATCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let answered = blocking(&pool, |conn| Ok(conn.batch_execute("SELECT 1")?)).await;
        if let Err(e) = &answered {
            tracing::debug!(error = %e, "database not answering");
        }
        health.set(answered.is_ok());
    }
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
        let waited = std::time::Instant::now();
        let mut conn = pool.get()?;
        metrics::histogram!(crate::metrics::POOL_WAIT).record(waited.elapsed().as_secs_f64());
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
    #[test]
    fn only_plain_identifiers_reach_an_sql_splice() {
        use super::Identifier;
        assert_eq!(Identifier::new("level_kyc").unwrap().as_str(), "level_kyc");
        for bad in ["", "Level", "1abc", "intake\"; DROP SCHEMA ledger; --", "a b", "é", &"a".repeat(64)] {
            assert!(Identifier::new(bad).is_err(), "{bad:?}");
        }
        let prefix = Identifier::new("a".repeat(60)).unwrap();
        assert!(prefix.followed_by("kyc").is_ok() && prefix.followed_by("manager").is_err(), "63 bytes at most");
        let from_settings: Result<Identifier, _> = serde_json::from_str("\"x; --\"");
        assert!(from_settings.is_err(), "settings refuse it when they load");
    }

    #[test]
    fn services_connect_as_their_roles_with_the_password_encoded() {
        use crate::secret::Secret;
        assert!(super::check_url("postgres://db.internal:5432/loanflow?sslmode=verify-full").is_ok());
        assert!(super::check_url("postgresql://127.0.0.1/loanflow").is_ok());
        assert!(super::check_url("postgres://root@127.0.0.1/loanflow").is_err(), "a user in the URL is refused");
        assert!(super::check_url("mysql://127.0.0.1/loanflow").is_err());
        assert_eq!(
            super::with_role("postgres://h:5432/db?sslmode=disable", "loanflow_intake", &Secret::default()),
            "postgres://loanflow_intake@h:5432/db?sslmode=disable&application_name=loanflow-loanflow_intake"
        );
        assert_eq!(
            super::with_role("postgres://h/db", "r", &Secret::new("p@ss:/w?&")),
            "postgres://r:p%40ss%3A%2Fw%3F%26@h/db?application_name=loanflow-r"
        );
    }

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
