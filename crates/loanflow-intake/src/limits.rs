//! The contract's limits: submissions per client address (`429 rate_limited` with
//! `Retry-After`), failed approver authentication per client address (the same 429,
//! for the API and the sign-in page alike), and who the client is: the peer address, or
//! `X-Forwarded-For` only when the peer is a proxy the configuration trusts.
//!
//! Rates are kept by governor's keyed GCRA limiter. A limit of 0 turns it off (as
//! development mode, load tests, benchmarks and simulations do).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use loanflow_platform::settings::IntakeSettings;

use crate::error::ApiError;

/// Keys a keyed limiter tracks before it forgets those that are idle again.
const PRUNE_AFTER: usize = 10_000;

pub struct Limits {
    submissions: Option<DefaultKeyedRateLimiter<IpAddr>>,
    failed_sign_ins: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses whose failed authentications spent their allowance, until when: every
    /// attempt from them is refused meanwhile, a correct token too, so that guessing
    /// learns nothing past the limit.
    locked_out: Mutex<HashMap<IpAddr, Instant>>,
    trusted_proxies: Vec<IpAddr>,
}

impl Limits {
    pub fn new(settings: &IntakeSettings) -> Limits {
        let limits = &settings.limits;
        let submissions = NonZeroU32::new(limits.submissions_per_second).map(|rate| {
            let burst = NonZeroU32::new(limits.submission_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let failed_sign_ins =
            NonZeroU32::new(limits.failed_sign_ins_per_minute).map(|rate| RateLimiter::keyed(Quota::per_minute(rate)));
        let trusted_proxies = settings.trusted_proxies.iter().filter_map(|p| p.parse().ok()).collect();
        Limits { submissions, failed_sign_ins, locked_out: Mutex::default(), trusted_proxies }
    }

    /// The client's address: the peer, or the last address in `X-Forwarded-For` that
    /// is not a trusted proxy, when the peer is one. `None` when there is no peer (a
    /// test request), which no limit applies to.
    pub fn client(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        if !self.trusted_proxies.contains(&peer) {
            return Some(peer);
        }
        let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let hops = forwarded.split(',').filter_map(|hop| hop.trim().parse::<IpAddr>().ok());
        Some(hops.rev().find(|hop| !self.trusted_proxies.contains(hop)).unwrap_or(peer))
    }

    /// A submission from this client, within its allowance or refused.
    pub fn submission(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let (Some(limiter), Some(client)) = (&self.submissions, self.client(req)) else { return Ok(()) };
        let checked = limiter.check_key(&client);
        if limiter.len() > PRUNE_AFTER {
            limiter.retain_recent();
        }
        checked.map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            tracing::info!(security_event = "submission_rate_limited", %client, "submission refused: rate limit");
            ApiError::RateLimited(retry_after(wait))
        })
    }

    /// Refuses every authentication attempt from a client locked out by its failures.
    pub fn before_authenticating(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let Some(client) = self.client(req) else { return Ok(()) };
        let mut locked = self.locked_out.lock().unwrap_or_else(|p| p.into_inner());
        match locked.get(&client) {
            Some(until) if *until > Instant::now() => Err(ApiError::RateLimited(retry_after(*until - Instant::now()))),
            Some(_) => {
                locked.remove(&client);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failed authentication (logged as a security event, never the token);
    /// past the allowance the client is locked out until the limiter would let it in.
    pub fn failed_authentication(&self, req: &HttpRequest) -> ApiError {
        let client = self.client(req);
        tracing::warn!(security_event = "approver_auth_failed", client = ?client, path = %req.path(), "authentication failed");
        let (Some(limiter), Some(client)) = (&self.failed_sign_ins, client) else { return ApiError::Unauthorized };
        match limiter.check_key(&client) {
            Ok(()) => ApiError::Unauthorized,
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let mut locked = self.locked_out.lock().unwrap_or_else(|p| p.into_inner());
                locked.retain(|_, until| *until > Instant::now());
                locked.insert(client, Instant::now() + wait);
                tracing::warn!(security_event = "approver_auth_locked_out", %client, "too many failed authentications");
                ApiError::RateLimited(retry_after(wait))
            }
        }
    }
}

/// Whole seconds, rounded up, at least 1.
fn retry_after(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::retry_after;
    use std::time::Duration;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(Duration::ZERO), 1, "never 0: that would invite an immediate retry");
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
        assert_eq!(retry_after(Duration::from_secs(2)), 2);
        assert_eq!(retry_after(Duration::from_millis(2001)), 3);
    }
}
