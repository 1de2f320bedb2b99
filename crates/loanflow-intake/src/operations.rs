//! Operators' acts that the intake performs for them, each written to its audit trail:
//! today the dead-letter replay (`loanflow dlq replay`; the operations page will call
//! the same).

use loanflow_platform::audit::{self, Act};
use loanflow_platform::broker::BrokerError;
use loanflow_platform::db::{blocking, DbError, PgPool};
use loanflow_platform::Settings;

/// Why a replay could not be done or recorded.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("replaying: {0}")]
    Broker(#[from] BrokerError),
    #[error("recording the replay in the audit trail: {0}")]
    Audit(#[from] DbError),
}

/// Replays the dead letters of `reference` (all of them without one) as `operator`, and
/// records in the intake's audit trail (on `pool`, the intake's) who replayed which, and
/// how many.
pub async fn replay_dead_letters(
    settings: &Settings,
    pool: &PgPool,
    operator: &str,
    reference: Option<&str>,
) -> Result<usize, ReplayError> {
    let replayed = loanflow_platform::dlq::replay(settings, reference).await?;
    let (actor, reference, now) = (format!("operator:{operator}"), reference.map(str::to_owned), settings.clock.now());
    blocking(pool, move |conn| {
        let detail = serde_json::json!({ "replayed": replayed, "all": reference.is_none() });
        let act = Act { actor: &actor, action: "dead_letter_replay", reference: reference.as_deref(), detail };
        audit::record(conn, &act, now)
    })
    .await?;
    Ok(replayed)
}

/// What the operations page shows of the applications: how many are in each status, and
/// per minute over the last minutes how many arrived, how many reached a final status,
/// and how long those took from submission (median and 95th percentile).
#[derive(Debug, Clone, Default)]
pub struct Overview {
    pub statuses: Vec<(String, i64)>,
    pub minutes: Vec<Minute>,
}

#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct Minute {
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub minute: chrono::DateTime<chrono::Utc>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub submitted: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub finished: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    pub p50_seconds: Option<f64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    pub p95_seconds: Option<f64>,
}

/// The minutes the operations page charts.
pub const MINUTES: i32 = 15;

pub fn overview(conn: &mut diesel::PgConnection, now: chrono::DateTime<chrono::Utc>) -> Result<Overview, DbError> {
    use crate::schema::application_status as s;
    use diesel::prelude::*;
    use diesel::sql_types::{Integer, Timestamptz};
    let statuses = s::table
        .group_by(s::status)
        .select((s::status, diesel::dsl::count_star()))
        .order(s::status)
        .load::<(String, i64)>(conn)?;
    let minutes = diesel::sql_query(
        "WITH m AS (SELECT generate_series(date_trunc('minute', $1) - ($2 - 1) * interval '1 minute', \
                                           date_trunc('minute', $1), interval '1 minute') AS minute), \
              arrived AS (SELECT date_trunc('minute', submitted_at) AS minute, count(*) AS n FROM applications \
                          WHERE submitted_at >= date_trunc('minute', $1) - ($2 - 1) * interval '1 minute' GROUP BY 1), \
              done AS (SELECT date_trunc('minute', s.updated_at) AS minute, count(*) AS n, \
                              percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM s.updated_at - a.submitted_at)) AS p50, \
                              percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM s.updated_at - a.submitted_at)) AS p95 \
                       FROM application_status s JOIN applications a USING (reference) \
                       WHERE s.status IN ('approved', 'rejected', 'withdrawn') \
                         AND s.updated_at >= date_trunc('minute', $1) - ($2 - 1) * interval '1 minute' GROUP BY 1) \
         SELECT m.minute, COALESCE(arrived.n, 0) AS submitted, COALESCE(done.n, 0) AS finished, \
                done.p50 AS p50_seconds, done.p95 AS p95_seconds \
         FROM m LEFT JOIN arrived USING (minute) LEFT JOIN done USING (minute) ORDER BY m.minute",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<Integer, _>(MINUTES)
    .load::<Minute>(conn)?;
    Ok(Overview { statuses, minutes })
}
