//! The database side of a test system: its own schemas in the test database, read and
//! changed as the harness's superuser (or as a service role, to show what it may not do).

use anyhow::Context;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;

use crate::TestSystem;

/// The PostgreSQL server tests use (a database of their own is created on it).
pub(crate) fn pg_server() -> String {
    std::env::var("LOANFLOW_TEST_PG").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432".into())
}

pub(crate) const TEST_DATABASE: &str = "loanflow_test";

impl TestSystem {
    /// Rows in a table of any schema of this test (see [`TestSystem::count`]).
    pub async fn count_in_schema(&self, schema: &str, table: &str) -> i64 {
        let sql = format!("SELECT count(*) AS n FROM \"{schema}\".\"{table}\"");
        count_rows(sql).await
    }

    /// The schema a service of this test owns (`"intake"`, `"ledger"`, or a level's name).
    pub fn schema(&self, service: &str) -> String {
        match service {
            "intake" => self.settings.intake.database.schema.to_string(),
            "ledger" => self.settings.ledger.database.schema.to_string(),
            level => format!("{}{level}", self.settings.levels.database.schema),
        }
    }

    /// Runs a statement the test writes on the test database (schema-qualified with
    /// [`TestSystem::schema`]), e.g. to age rows past a retention period.
    pub async fn execute_sql(&self, sql: &str) {
        execute_on_test_database(sql.to_owned()).await;
    }

    /// The first column (as text, named `v`) of a query on the test database, as the
    /// test harness's own superuser.
    pub async fn text_rows(&self, sql: &str) -> Vec<String> {
        let (url, sql) = (format!("{}/{TEST_DATABASE}", pg_server()), sql.to_owned());
        tokio::task::spawn_blocking(move || {
            #[derive(QueryableByName)]
            struct Row {
                #[diesel(sql_type = diesel::sql_types::Text)]
                v: String,
            }
            let mut conn = PgConnection::establish(&url).expect("database");
            diesel::sql_query(sql).load::<Row>(&mut conn).expect("query").into_iter().map(|r| r.v).collect()
        })
        .await
        .expect("query task")
    }

    /// Runs statements connected through `url` (a service role's, say): the database's
    /// error, if any, as text.
    pub async fn sql_as(&self, url: String, sql: &str) -> Result<(), String> {
        let sql = sql.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut conn = PgConnection::establish(&url).map_err(|e| e.to_string())?;
            conn.batch_execute(&sql).map_err(|e| e.to_string())
        })
        .await
        .expect("statement task")
    }

    /// Rows in one of this test's tables, e.g. `count("ledger", "loans", None)`.
    pub async fn count(&self, service: &str, table: &str, reference: Option<&str>) -> i64 {
        let filter = reference.map(|r| format!("reference = '{}'", r.replace('\'', ""))).unwrap_or_default();
        self.count_matching(service, table, &filter).await
    }

    /// Rows of one of this test's tables that match an SQL condition (a literal the
    /// test writes; empty: every row).
    pub async fn count_matching(&self, service: &str, table: &str, condition: &str) -> i64 {
        let schema = self.schema(service);
        let filter = if condition.is_empty() { String::new() } else { format!(" WHERE {condition}") };
        count_rows(format!("SELECT count(*) AS n FROM \"{schema}\".\"{table}\"{filter}")).await
    }
}

/// Runs a statement on the test database (for a test that ages rows, say).
pub(crate) async fn execute_on_test_database(sql: String) {
    let url = format!("{}/{TEST_DATABASE}", pg_server());
    tokio::task::spawn_blocking(move || {
        let mut conn = PgConnection::establish(&url).expect("database");
        conn.batch_execute(&sql).expect("statement");
    })
    .await
    .expect("statement task");
}

/// Runs a `SELECT count(*) AS n …` on the test database.
pub(crate) async fn count_rows(sql: String) -> i64 {
    let url = format!("{}/{TEST_DATABASE}", pg_server());
    tokio::task::spawn_blocking(move || {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = PgConnection::establish(&url).expect("database");
        diesel::sql_query(sql).get_result::<Count>(&mut conn).expect("count").n
    })
    .await
    .expect("count task")
}

/// The database server's address, for proxies in front of it.
pub(crate) fn pg_addr() -> anyhow::Result<std::net::SocketAddr> {
    let server = pg_server();
    let host_port = server.rsplit('@').next().unwrap_or(&server).trim_start_matches("postgres://");
    use std::net::ToSocketAddrs;
    host_port.to_socket_addrs()?.next().context("database address")
}

pub(crate) async fn ensure_test_database() -> anyhow::Result<()> {
    let url = format!("{}/postgres", pg_server());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut conn = PgConnection::establish(&url).context("PostgreSQL must be running")?;
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let exists =
            diesel::sql_query(format!("SELECT count(*) AS n FROM pg_database WHERE datname = '{TEST_DATABASE}'"))
                .get_result::<Count>(&mut conn)?
                .n
                > 0;
        if !exists {
            // Tests race to create it; losing the race is fine.
            let _ = conn.batch_execute(&format!("CREATE DATABASE {TEST_DATABASE}"));
        }
        Ok(())
    })
    .await?
}
