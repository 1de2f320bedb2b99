//! Page sessions of approvers (the inbox) and operators (the operations page), kept on
//! the server. An operator's session names `operator:<name>`; an approver's, the
//! approver's name (which never has a colon), so neither can pass for the other.
//!
//! Signing in with a token creates a session: a random id in a cookie, and a row (the
//! id's digest, the approver's name, the session's CSRF token, its expiry) in the
//! intake's database, so every intake instance knows it and signing out revokes it. A
//! session expires after `intake.session_idle_minutes` without use, and after
//! `intake.session_hours` whatever happens. The approver's levels are read from the
//! configuration on every request, so removing an approver ends their sessions too.
//!
//! Forms carry the session's CSRF token, compared against the row (not against a second
//! cookie an attacker's subdomain could plant). The sign-in form carries a pre-session
//! token (a cookie and a hidden field that must match) so that another site cannot sign
//! a victim in as the attacker (login CSRF). Cookies are `HttpOnly`, `SameSite=Strict`,
//! host-only and `Path=/`; with `intake.secure_cookies` (the default, for TLS) they are
//! `Secure` with the `__Host-` prefix, which browsers accept only from a secure origin
//! and never from a subdomain. Development mode serves plain HTTP and turns it off.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::HttpRequest;
use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use subtle::ConstantTimeEq;

use loanflow_platform::db::{blocking, DbError, PgPool};
use loanflow_platform::secret::{new_token, TokenHash};
use loanflow_platform::settings::{IntakeSettings, OperatorSettings};

use crate::approvals::{self, Approver, Approvers};
use crate::schema::approver_sessions;

/// A signed-in approver and the CSRF token of their forms.
#[derive(Debug, Clone)]
pub struct Session {
    pub approver: Approver,
    pub csrf: String,
    id: TokenHash,
}

/// A signed-in operator and the CSRF token of their forms.
#[derive(Debug, Clone)]
pub struct OperatorSession {
    pub name: String,
    pub csrf: String,
    id: TokenHash,
}

/// How an operator's session names them.
pub const OPERATOR_PREFIX: &str = "operator:";

/// How sessions are made: their lifetimes and their cookies' kind.
#[derive(Debug, Clone)]
pub struct Sessions {
    idle: Duration,
    lifetime: Duration,
    secure: bool,
}

impl Sessions {
    pub fn new(settings: &IntakeSettings) -> Sessions {
        Sessions {
            idle: Duration::minutes(i64::from(settings.session_idle_minutes.max(1))),
            lifetime: Duration::hours(i64::from(settings.session_hours.max(1))),
            secure: settings.secure_cookies,
        }
    }

    fn session_cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-lf_session"
        } else {
            "lf_session"
        }
    }

    fn sign_in_cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-lf_sign_in"
        } else {
            "lf_sign_in"
        }
    }

    fn cookie(&self, name: &'static str, value: String) -> Cookie<'static> {
        Cookie::build(name, value).path("/").http_only(true).secure(self.secure).same_site(SameSite::Strict).finish()
    }

    /// The live session the request's cookie names (who, its CSRF token, its id): its
    /// idle expiry moves on.
    async fn live(&self, req: &HttpRequest, pool: &PgPool) -> Option<(String, String, TokenHash)> {
        let id = TokenHash::of(req.cookie(self.session_cookie_name())?.value());
        let (idle, lifetime) = (self.idle, self.lifetime);
        let key = id.clone();
        match blocking(pool, move |conn| touch(conn, &key, Utc::now(), idle, lifetime)).await {
            Ok(found) => found.map(|(who, csrf)| (who, csrf, id)),
            Err(e) => {
                tracing::warn!(error = %e, "session look-up failed");
                None
            }
        }
    }

    /// The approver's session the request's cookie names, if it is live.
    pub async fn current(&self, req: &HttpRequest, pool: &PgPool, approvers: &Approvers) -> Option<Session> {
        let (name, csrf, id) = self.live(req, pool).await?;
        let approver = approvals::by_name(approvers, &name)?;
        Some(Session { approver, csrf, id })
    }

    /// The operator's session the request's cookie names, if it is live and the
    /// operator is still configured.
    pub async fn current_operator(
        &self,
        req: &HttpRequest,
        pool: &PgPool,
        operators: &[OperatorSettings],
    ) -> Option<OperatorSession> {
        let (who, csrf, id) = self.live(req, pool).await?;
        let name = who.strip_prefix(OPERATOR_PREFIX)?;
        operators.iter().any(|o| o.name == name).then(|| OperatorSession { name: name.to_owned(), csrf, id })
    }

    /// Starts a session for `approver`; the cookie to set goes with it.
    pub async fn start(&self, pool: &PgPool, approver: &Approver) -> Result<Cookie<'static>, DbError> {
        self.start_for(pool, approver.name.clone()).await
    }

    /// Starts a session for the operator `name`.
    pub async fn start_operator(&self, pool: &PgPool, name: &str) -> Result<Cookie<'static>, DbError> {
        self.start_for(pool, format!("{OPERATOR_PREFIX}{name}")).await
    }

    async fn start_for(&self, pool: &PgPool, who: String) -> Result<Cookie<'static>, DbError> {
        let id = new_token();
        let row = (
            approver_sessions::id_sha256.eq(TokenHash::of(&id).as_bytes().to_vec()),
            approver_sessions::approver.eq(who),
            approver_sessions::csrf.eq(new_token()),
            approver_sessions::created_at.eq(Utc::now()),
            approver_sessions::expires_at.eq(Utc::now() + self.idle.min(self.lifetime)),
        );
        blocking(pool, move |conn| {
            diesel::insert_into(approver_sessions::table).values(row).execute(conn)?;
            Ok(())
        })
        .await?;
        Ok(self.cookie(self.session_cookie_name(), id))
    }

    /// Revokes the session; the cookie that removes it goes back to the browser.
    pub async fn end(&self, pool: &PgPool, session: &Session) -> Result<Cookie<'static>, DbError> {
        self.end_id(pool, &session.id).await
    }

    pub async fn end_operator(&self, pool: &PgPool, session: &OperatorSession) -> Result<Cookie<'static>, DbError> {
        self.end_id(pool, &session.id).await
    }

    async fn end_id(&self, pool: &PgPool, id: &TokenHash) -> Result<Cookie<'static>, DbError> {
        let key = id.as_bytes().to_vec();
        blocking(pool, move |conn| {
            diesel::delete(approver_sessions::table.find(key)).execute(conn)?;
            Ok(())
        })
        .await?;
        let mut gone = self.cookie(self.session_cookie_name(), String::new());
        gone.make_removal();
        Ok(gone)
    }

    /// A fresh pre-session token for the sign-in form, and its cookie.
    pub fn sign_in_token(&self) -> (String, Cookie<'static>) {
        let token = new_token();
        (token.clone(), self.cookie(self.sign_in_cookie_name(), token))
    }

    /// Whether a sign-in form came from our own sign-in page: its hidden token matches
    /// the pre-session cookie set with that page.
    pub fn sign_in_form_ok(&self, req: &HttpRequest, sent: Option<&String>) -> bool {
        matches!((req.cookie(self.sign_in_cookie_name()), sent),
            (Some(cookie), Some(sent)) if !sent.is_empty() && bool::from(cookie.value().as_bytes().ct_eq(sent.as_bytes())))
    }

    /// The cookie that removes the pre-session token once it has served.
    pub fn sign_in_token_removal(&self) -> Cookie<'static> {
        let mut gone = self.cookie(self.sign_in_cookie_name(), String::new());
        gone.make_removal();
        gone
    }
}

/// Whether a form carries the session's CSRF token `csrf`.
fn csrf_matches(csrf: &str, sent: Option<&String>) -> bool {
    sent.is_some_and(|sent| !sent.is_empty() && bool::from(csrf.as_bytes().ct_eq(sent.as_bytes())))
}

impl Session {
    /// Whether a form acting for this session carries its CSRF token.
    pub fn csrf_ok(&self, sent: Option<&String>) -> bool {
        csrf_matches(&self.csrf, sent)
    }
}

impl OperatorSession {
    pub fn csrf_ok(&self, sent: Option<&String>) -> bool {
        csrf_matches(&self.csrf, sent)
    }
}

/// Finds a live session and moves its idle expiry on, capped by its lifetime.
fn touch(
    conn: &mut PgConnection,
    id: &TokenHash,
    now: DateTime<Utc>,
    idle: Duration,
    lifetime: Duration,
) -> Result<Option<(String, String)>, DbError> {
    use approver_sessions::dsl as s;
    let live = s::approver_sessions.filter(s::id_sha256.eq(id.as_bytes().to_vec())).filter(s::expires_at.gt(now));
    let row: Option<(String, String, DateTime<Utc>)> =
        live.select((s::approver, s::csrf, s::created_at)).first(conn).optional()?;
    let Some((approver, csrf, created_at)) = row else { return Ok(None) };
    let expires = (now + idle).min(created_at + lifetime);
    diesel::update(s::approver_sessions.find(id.as_bytes().to_vec())).set(s::expires_at.eq(expires)).execute(conn)?;
    Ok(Some((approver, csrf)))
}

/// Removes expired sessions (the retention sweep).
pub fn forget_expired(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<usize, DbError> {
    Ok(diesel::delete(approver_sessions::table.filter(approver_sessions::expires_at.le(now))).execute(conn)?)
}
