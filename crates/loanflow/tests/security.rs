//! Security: what anyone who can reach a service's address, or the broker, must not be
//! able to do. Health addresses serve health only; the synchronous twin answers only
//! in its own processes and only with its secret; the ledger books only what the chain
//! approved, whoever sent the message.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use chrono::Utc;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Value};

use loanflow_domain::messages::{Envelope, RoutingSlip, WorkItem, WorkMessage};
use loanflow_domain::reference::RANDOM_BYTES;
use loanflow_domain::rules::Offer;
use loanflow_domain::{Application, DecidedBy, Decision, Outcome, Reference};
use loanflow_platform::broker::{step_queue, DEAD_LETTER_QUEUE, REFERENCE_HEADER};
use loanflow_testkit::{application, wait_until, TestSystem, MANAGER_TOKEN, TWIN_SECRET};

/// A work item at the ledger's step, approved by every level, carrying `offer`.
fn forged_booking(body: &Value, offer: Offer) -> WorkItem {
    let now = Utc::now();
    let levels = ["kyc", "credit", "underwriting", "manager"].map(String::from);
    let mut slip = RoutingSlip::through(&levels);
    slip.position = levels.len();
    let decisions = levels
        .iter()
        .map(|level| Decision {
            level: level.clone(),
            outcome: Outcome::Approved,
            reason: "looks fine".into(),
            decided_by: DecidedBy::Auto,
            decided_at: now,
        })
        .collect();
    WorkItem {
        application: Application::parse(body, now.date_naive()).unwrap(),
        submitted_at: now,
        submitted_on: now.date_naive(),
        slip,
        decisions,
        score: Some(800),
        offer: Some(offer),
    }
}

fn offer(amount: &str, rate: &str, term: u16, payment: &str) -> Offer {
    Offer {
        amount: amount.parse().unwrap(),
        annual_rate: rate.parse().unwrap(),
        term_months: term,
        monthly_payment: payment.parse().unwrap(),
    }
}

fn big_ticket() -> Value {
    let mut big = application(800);
    big["amount"] = json!("60000.00");
    big["applicant"]["annual_income"] = json!("400000.00");
    big
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_addresses_serve_health_and_metrics_and_nothing_that_touches_loan_data() {
    let system = TestSystem::start().await;
    let reference = system.submit_ok(&big_ticket()).await;
    system.wait_for_status(&reference, "awaiting_approver", Duration::from_secs(30)).await;
    let work = serde_json::to_value(forged_booking(&big_ticket(), offer("1000000", "0", 360, "2777.78"))).unwrap();

    let mut addresses = system.level_health_urls();
    addresses.push(system.ledger_url.clone());
    assert_eq!(addresses.len(), 5, "four levels and the ledger");
    for base in &addresses {
        let live = system.http.get(format!("{base}/health/live")).send().await.unwrap();
        assert_eq!(live.status(), 200, "{base} serves health");
        let metrics = system.http.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(metrics.status(), 200, "{base} serves metrics");
        let text = metrics.text().await.unwrap();
        assert!(text.contains("loanflow_consumer_batch_size_bucket"), "{base}: batch sizes in {text}");
        assert!(text.contains("loanflow_consumer_deliveries_total"), "{base}: deliveries");
        for path in ["/api/steps/kyc", "/api/steps/credit", "/api/steps/manager", &format!("/api/loans/{reference}")] {
            for request in [
                system.http.post(format!("{base}{path}")).json(&work),
                system.http.post(format!("{base}{path}")).bearer_auth(TWIN_SECRET).json(&work),
            ] {
                let answer = request.send().await.unwrap();
                assert_eq!(answer.status(), 404, "{base}{path} must not exist on a health address");
            }
        }
    }
    assert_eq!(system.count("ledger", "loans", None).await, 0, "nothing was booked");
    assert_eq!(system.status(&reference).await["status"], "awaiting_approver");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twin_answers_only_callers_with_its_secret_and_books_only_what_the_rules_give() {
    let mut system = TestSystem::start().await;
    let twin = system.start_twin().await;
    let reference = Reference::from_random([7; RANDOM_BYTES]);
    let booked_before = system.count_in_schema(&twin.ledger_schema, "loans").await;
    let genuine = forged_booking(&application(800), offer("25000", "0.0599", 36, "760.46"));
    let step_url = format!("{}/api/steps/kyc", twin.level_urls["kyc"]);
    let book_url = format!("{}/api/loans/{reference}", twin.ledger_url);

    for (url, body) in [(&step_url, &genuine), (&book_url, &genuine)] {
        for request in [
            system.http.post(url.as_str()).json(body),
            system.http.post(url.as_str()).bearer_auth("guess").json(body),
            system.http.post(url.as_str()).bearer_auth("").json(body),
            system.http.post(url.as_str()).basic_auth("twin", Some(TWIN_SECRET)).json(body),
        ] {
            let answer = request.send().await.unwrap();
            assert_eq!(answer.status(), 401, "{url} without the secret");
        }
    }
    // With the secret, a booking is still checked against the rules.
    for (what, forged) in [
        ("a million at 0 %", offer("1000000", "0", 360, "2777.78")),
        ("a negative rate", offer("25000", "-0.05", 36, "600.00")),
        ("another term", offer("25000", "0.0599", 360, "149.73")),
    ] {
        let answer = system
            .http
            .post(&book_url)
            .bearer_auth(TWIN_SECRET)
            .json(&forged_booking(&application(800), forged))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 422, "{what} is refused");
        assert_eq!(answer.json::<Value>().await.unwrap()["error"], "not_bookable");
    }
    assert_eq!(system.count_in_schema(&twin.ledger_schema, "loans").await, booked_before, "nothing forged was booked");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_books_only_what_the_chain_approved_whoever_publishes_the_message() {
    let mut system = TestSystem::start().await;
    system.expect_dead_letters();
    let reference = system.submit_ok(&big_ticket()).await;
    system.wait_for_status(&reference, "awaiting_approver", Duration::from_secs(30)).await;

    // Work for the ledger, as a level could publish it: the waiting
    // big ticket pre-booked as a million at 0 %, and a loan for a reference that
    // exists nowhere at a negative rate.
    let nowhere = Reference::from_random([9; RANDOM_BYTES]);
    let forged = [
        (Reference::parse(&reference).unwrap(), forged_booking(&big_ticket(), offer("1000000", "0", 360, "2777.78"))),
        (nowhere, forged_booking(&application(800), offer("25000", "-0.05", 36, "600.00"))),
    ];
    // Sent as a level would send them (the only senders the ledger accepts): even a
    // compromised level cannot book what the rules do not give.
    for (reference, work) in forged {
        let envelope = Envelope::new(reference.clone(), "forged", Utc::now(), WorkMessage::V1(work));
        let mut headers = FieldTable::default();
        headers.insert(REFERENCE_HEADER.into(), AMQPValue::LongString(reference.as_str().into()));
        let props = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
        system.inject_as("level_manager", &step_queue("ledger"), &envelope.encode(), props).await.unwrap();
    }
    let refused =
        wait_until(Duration::from_secs(20), || async { system.queue_depth(DEAD_LETTER_QUEUE).await == 2 }).await;
    assert!(refused, "both forged bookings were dead-lettered (found {})", system.queue_depth(DEAD_LETTER_QUEUE).await);
    assert_eq!(system.count("ledger", "loans", None).await, 0, "and neither was booked");

    // The real approval then books the real terms.
    assert_eq!(system.approve(MANAGER_TOKEN, &reference, "verified income").await.status(), 200);
    let approved = system.wait_for_status(&reference, "approved", Duration::from_secs(30)).await;
    assert_eq!(approved["offer"]["amount"], "60000.00");
    assert_eq!(approved["offer"]["term_months"], 36);
    assert_eq!(system.count("ledger", "loans", Some(&reference)).await, 1);
    system.shutdown().await;
}

#[tokio::test]
async fn no_twin_process_starts_without_a_secret() {
    let settings = loanflow_platform::Settings::defaults().unwrap();
    assert!(!settings.twin.secret.is_set(), "no secret by default");
    let stop = loanflow_platform::CancellationToken::new();
    let level = loanflow_level::twin::start(settings.clone(), "kyc", stop.clone()).await;
    assert!(matches!(level, Err(loanflow_level::StartError::NoTwinSecret)), "{level:?}");
    let ledger = loanflow_ledger::twin::start(settings.clone(), stop.clone()).await;
    assert!(matches!(ledger, Err(loanflow_ledger::StartError::NoTwinSecret)), "{ledger:?}");
    let intake = loanflow_intake::twin::start(settings, stop).await;
    assert!(matches!(intake, Err(loanflow_intake::StartError::NoTwinSecret)), "{intake:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_that_leaves_an_unsent_outbox_row_or_a_dead_letter_fails() {
    // The intake never reaches the broker, so its outbox row stays unsent.
    let options = loanflow_testkit::Options { intake_broker_down: true, ..Default::default() };
    let system = TestSystem::start_with(options).await;
    system.submit_ok(&application(720)).await;
    let broken = system.finish().await;
    assert_eq!(broken, ["1 unsent outbox row(s)"], "the harness names what was left behind");

    // A dead letter nobody expected fails the test too.
    let system = TestSystem::start().await;
    let conn = system.amqp().await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let poison = b"not a message";
    let queue = step_queue("kyc");
    let props = BasicProperties::default();
    channel
        .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), poison, props)
        .await
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || async { system.queue_depth(DEAD_LETTER_QUEUE).await == 1 }).await);
    conn.close(200, "bye".into()).await.unwrap();
    assert_eq!(system.finish().await, ["1 unexpected dead letter(s)"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_and_pages_that_carry_personal_data_are_never_cached() {
    let system = TestSystem::start().await;
    let reference = system.submit_ok(&application(720)).await;
    for path in [format!("/api/loans/{reference}"), format!("/loans/{reference}"), "/".to_owned()] {
        let answer = system.http.get(system.url(&path)).send().await.unwrap();
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        let cache = answer.headers().get("cache-control").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(cache, "no-store", "{path}");
    }
    system.wait_for_status(&reference, "approved", Duration::from_secs(30)).await;
    system.shutdown().await;
}

fn with_limits() -> loanflow_testkit::Options {
    loanflow_testkit::Options { limits: true, levels: false, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_past_the_per_client_limit_get_429_and_record_nothing() {
    let system = TestSystem::start_with(with_limits()).await;
    let body = application(720);
    let answers = futures_util::future::join_all((0..30).map(|_| system.submit(&body))).await;
    let (mut accepted, mut limited) = (0, 0);
    for answer in answers {
        match answer.status().as_u16() {
            202 => accepted += 1,
            429 => {
                limited += 1;
                let wait: u64 = answer.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(wait >= 1, "Retry-After in whole seconds");
                assert_eq!(answer.json::<Value>().await.unwrap()["error"], "rate_limited");
            }
            other => panic!("unexpected {other}"),
        }
    }
    // A burst of 5, then 5 a second: thirty at once cannot all pass, however slow the
    // machine (each further one waits 200 ms for its turn).
    assert!(accepted >= 5 && limited >= 10, "{accepted} accepted, {limited} refused");
    assert_eq!(system.count("intake", "applications", None).await, accepted, "nothing recorded for a refused request");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_approver_authentication_is_limited_and_then_even_the_right_token_waits() {
    let system = TestSystem::start_with(with_limits()).await;
    let inbox = |token: &str| system.http.get(system.url("/api/approvals?level=manager")).bearer_auth(token).send();
    assert_eq!(inbox(MANAGER_TOKEN).await.unwrap().status(), 200, "the right token works");
    for guess in 0..3 {
        assert_eq!(inbox(&format!("guess-{guess}")).await.unwrap().status(), 401);
    }
    let locked = inbox("guess-3").await.unwrap();
    assert_eq!(locked.status(), 429, "the fourth failure in a minute is refused");
    assert!(locked.headers().contains_key("retry-after"));
    assert_eq!(inbox(MANAGER_TOKEN).await.unwrap().status(), 429, "guessing learns nothing past the limit");
    // The sign-in page shares the limit.
    let (pre, form_token) = sign_in_form(&system).await;
    let page =
        post_form(&system, "/approvals/session", &pre, format!("sign_in={form_token}&token={MANAGER_TOKEN}")).await;
    assert_eq!(page.status(), 429);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_answered_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let system = TestSystem::start_with(with_limits()).await;
    let addr = system.base_url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/loans HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{{\"applicant\": "
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the intake answers and closes instead of waiting for the body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered after the 500 ms body timeout");
    assert_eq!(system.count("intake", "applications", None).await, 0);
    system.shutdown().await;
}

/// The cookies a response sets, as `name=value` pairs (attributes dropped), and the raw
/// `Set-Cookie` lines.
fn set_cookies(response: &reqwest::Response) -> Vec<(String, String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|line| {
            let pair = line.split(';').next()?;
            let (name, value) = pair.split_once('=')?;
            Some((name.trim().to_owned(), value.trim().to_owned(), line.to_owned()))
        })
        .collect()
}

/// The value of `<input type="hidden" name="{name}" value="…">` in a page.
fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!(r#"name="{name}" value=""#);
    let start = html.find(&marker)? + marker.len();
    Some(html[start..].split('"').next()?.to_owned())
}

/// The sign-in page's pre-session cookie (as a `Cookie` header) and form token.
async fn sign_in_form(system: &TestSystem) -> (String, String) {
    let page = system.http.get(system.url("/approvals")).send().await.unwrap();
    let cookies = set_cookies(&page);
    let (name, value, _) =
        cookies.iter().find(|(n, _, _)| n.ends_with("lf_sign_in")).expect("a sign-in cookie").clone();
    let token = hidden(&page.text().await.unwrap(), "sign_in").expect("the form's sign-in token");
    (format!("{name}={value}"), token)
}

/// Posts a form as a browser would, without following the redirect that answers it.
async fn post_form(system: &TestSystem, path: &str, cookie: &str, body: String) -> reqwest::Response {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    client
        .post(system.url(path))
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Signs in through the page; returns the session cookie (as a `Cookie` header), its raw
/// `Set-Cookie` line and the inbox's CSRF token.
async fn sign_in(system: &TestSystem) -> (String, String, String) {
    let (pre, form_token) = sign_in_form(system).await;
    let signed =
        post_form(system, "/approvals/session", &pre, format!("sign_in={form_token}&token={MANAGER_TOKEN}")).await;
    assert_eq!(signed.status(), 303);
    let (name, value, line) =
        set_cookies(&signed).into_iter().find(|(n, _, _)| n.ends_with("lf_session")).expect("a session cookie");
    let cookie = format!("{name}={value}");
    let inbox = system.http.get(system.url("/approvals")).header("cookie", &cookie).send().await.unwrap();
    let html = inbox.text().await.unwrap();
    assert!(html.contains(r#"id="approver-name">grace<"#), "signed in as grace");
    (cookie, line, hidden(&html, "csrf").expect("the inbox's CSRF token"))
}

async fn signed_in_as_grace(system: &TestSystem, cookie: &str) -> bool {
    let inbox = system.http.get(system.url("/approvals")).header("cookie", cookie).send().await.unwrap();
    inbox.text().await.unwrap().contains(r#"id="approver-name">grace<"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_sessions_live_on_the_server_are_bound_to_their_csrf_token_and_end_at_sign_out() {
    let system = TestSystem::start().await;
    // Login CSRF: a sign-in form that did not come from our page is refused, even with
    // the right token, and creates no session.
    let forged = post_form(&system, "/approvals/session", "", format!("token={MANAGER_TOKEN}")).await;
    assert_eq!(forged.status(), 403);
    let (pre, _) = sign_in_form(&system).await;
    let mismatched =
        post_form(&system, "/approvals/session", &pre, format!("sign_in=guess&token={MANAGER_TOKEN}")).await;
    assert_eq!(mismatched.status(), 403);
    assert_eq!(system.count("intake", "approver_sessions", None).await, 0);

    let (first, line, csrf) = sign_in(&system).await;
    assert!(!line.contains(MANAGER_TOKEN), "the cookie is a session id, not the token");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(line.contains(attribute), "{attribute} in {line}");
    }
    assert!(line.starts_with("__Host-") && !line.contains("Domain"), "a host-only __Host- cookie: {line}");
    assert_eq!(system.count("intake", "approver_sessions", None).await, 1);
    let id = first.split_once('=').unwrap().1;
    let digest = loanflow_platform::secret::TokenHash::of(id).to_hex();
    assert_eq!(
        system.count_matching("intake", "approver_sessions", &format!("encode(id_sha256, 'hex') = '{digest}'")).await,
        1,
        "the server keeps the id's digest"
    );

    // A second session's CSRF token does not work for the first.
    let (second, _, second_csrf) = sign_in(&system).await;
    assert_ne!(csrf, second_csrf);
    let crossed = post_form(&system, "/approvals/session/end", &first, format!("csrf={second_csrf}")).await;
    assert_eq!(crossed.status(), 403, "CSRF tokens are bound to their session");
    assert!(signed_in_as_grace(&system, &first).await, "a refused sign-out changes nothing");

    // Signing out revokes the session on the server: the old cookie is worthless.
    let out = post_form(&system, "/approvals/session/end", &first, format!("csrf={csrf}")).await;
    assert_eq!(out.status(), 303);
    assert!(!signed_in_as_grace(&system, &first).await, "the revoked session no longer signs anyone in");
    let decide = post_form(
        &system,
        "/approvals/LN-000000000000000000000000/decision",
        &first,
        format!("csrf={csrf}&decision=approve&reason=x"),
    )
    .await;
    assert_eq!(decide.status(), 401, "nor can it decide");
    assert!(signed_in_as_grace(&system, &second).await, "the other session lives on");

    // An expired session is refused (its expiry is the server's, not the cookie's).
    system
        .execute_sql(&format!(
            "UPDATE {}.approver_sessions SET expires_at = now() - interval '1 second'",
            system.schema("intake")
        ))
        .await;
    assert!(!signed_in_as_grace(&system, &second).await, "an expired session signs no one in");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_serves_as_its_own_role_with_a_password_and_no_more_privilege_than_it_needs() {
    let system = TestSystem::start().await;
    let reference = system.submit_ok(&application(720)).await;
    system.wait_for_status(&reference, "approved", Duration::from_secs(30)).await;

    // Every connection the services hold is one of their runtime roles; none is a superuser.
    let roles = system
        .text_rows(
            "SELECT DISTINCT a.usename || ':' || r.rolsuper AS v FROM pg_stat_activity a \
             JOIN pg_roles r ON r.rolname = a.usename \
             WHERE a.datname = current_database() AND a.application_name LIKE 'loanflow-%'",
        )
        .await;
    for expected in ["loanflow_intake", "loanflow_ledger", "loanflow_level_kyc", "loanflow_level_manager"] {
        assert!(roles.contains(&format!("{expected}:false")), "{expected} connected, not a superuser: {roles:?}");
    }
    assert!(roles.iter().all(|r| r.ends_with(":false")), "no service connection is a superuser: {roles:?}");

    let (intake, ledger, kyc) = (system.schema("intake"), system.schema("ledger"), system.schema("kyc"));
    let as_intake = || system.settings.intake.database.runtime_url();
    let denied = |result: Result<(), String>, what: &str| {
        let error = result.expect_err(what);
        assert!(error.contains("permission denied"), "{what}: {error}");
    };
    // Another service's tables are out of reach.
    denied(system.sql_as(as_intake(), &format!("SELECT * FROM \"{ledger}\".loans")).await, "intake reads ledger");
    denied(
        system.sql_as(as_intake(), &format!("SELECT * FROM \"{kyc}\".processed_messages")).await,
        "intake reads kyc",
    );
    let as_kyc = system.settings.levels.database_for("kyc").unwrap().runtime_url();
    denied(system.sql_as(as_kyc, &format!("SELECT * FROM \"{intake}\".applications")).await, "kyc reads intake");
    // Its own append-only tables take inserts, never changes; no runtime role does DDL.
    let as_ledger = system.settings.ledger.database.runtime_url();
    system.sql_as(as_ledger.clone(), &format!("SELECT count(*) FROM \"{ledger}\".loans")).await.unwrap();
    denied(system.sql_as(as_ledger.clone(), &format!("DELETE FROM \"{ledger}\".loans")).await, "ledger deletes a loan");
    denied(
        system.sql_as(as_ledger, &format!("UPDATE \"{ledger}\".loans SET annual_rate = 0")).await,
        "ledger rewrites a loan",
    );
    denied(
        system.sql_as(as_intake(), &format!("UPDATE \"{intake}\".applications SET submitted_at = now()")).await,
        "intake rewrites an application",
    );
    denied(system.sql_as(as_intake(), &format!("CREATE TABLE \"{intake}\".extra (a int)")).await, "runtime DDL");
    assert_eq!(system.count("ledger", "loans", Some(&reference)).await, 1, "the loan is untouched");

    // The roles need their password, even here where the local server trusts its superuser.
    let wrong = system.settings.intake.database.runtime_url().replace("loanflow_intake@", "loanflow_intake:wrong@");
    let refused = system.sql_as(wrong, "SELECT 1").await.expect_err("a wrong password is refused");
    assert!(refused.contains("password authentication failed"), "{refused}");
    system.shutdown().await;
}

/// An approver's decision for `reference`, as the intake would hand it to the manager.
fn approver_decision(reference: &str, approver: &str) -> Vec<u8> {
    use loanflow_domain::messages::ApproverDecision;
    let decision = ApproverDecision {
        level: "manager".into(),
        outcome: Outcome::Approved,
        reason: "forged".into(),
        approver: approver.into(),
        decided_at: Utc::now(),
        earlier: Vec::new(),
    };
    let reference = Reference::parse(reference).unwrap();
    Envelope::new(reference, "approval/manager", Utc::now(), WorkMessage::ApprovalV1(decision)).encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_a_sender_that_may_not_send_them_are_refused() {
    let mut system = TestSystem::start().await;
    system.expect_dead_letters();
    let reference = system.submit_ok(&big_ticket()).await;
    system.wait_for_status(&reference, "awaiting_approver", Duration::from_secs(30)).await;
    let manager = step_queue("manager");

    // The broker's administrator (as through the management API) approving the waiting
    // application: no service sent it, so the manager level refuses it.
    let conn = system.amqp().await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let props = BasicProperties::default().with_delivery_mode(2);
    let body = approver_decision(&reference, "mallory");
    channel
        .basic_publish("".into(), manager.as_str().into(), BasicPublishOptions::default(), &body, props.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    // A level may send work, but never a person's decision.
    system.inject_as("level_kyc", &manager, &approver_decision(&reference, "mallory"), props.clone()).await.unwrap();
    let refused =
        wait_until(Duration::from_secs(20), || async { system.queue_depth(DEAD_LETTER_QUEUE).await == 2 }).await;
    assert!(refused, "both were dead-lettered (found {})", system.queue_depth(DEAD_LETTER_QUEUE).await);
    let letters = loanflow_platform::dlq::list(&system.settings).await.unwrap();
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert!(reasons[0].contains("refused: nobody") && reasons[0].contains(&manager), "{reasons:?}");
    assert!(reasons[1].contains("may not send an approver's decision"), "{reasons:?}");
    assert_eq!(system.status(&reference).await["status"], "awaiting_approver", "nothing was decided");

    // The broker itself stops the rest: a service cannot sign as another (the broker
    // checks `user_id` against the connection's user), and the intake may not route work
    // to the ledger at all (a topic permission on the work exchange).
    let kyc = system.amqp_as("level_kyc").await.unwrap();
    let channel = kyc.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let impersonating = props.clone().with_user_id(system.settings.broker.user_of("intake").as_str().into());
    let work = loanflow_platform::broker::WORK_EXCHANGE;
    let sent =
        channel.basic_publish(work.into(), "manager".into(), BasicPublishOptions::default(), &body, impersonating);
    let outcome = match sent.await {
        Ok(confirm) => confirm.await.map(drop),
        Err(e) => Err(e),
    };
    let error = outcome.expect_err("a level signing as the intake is stopped by the broker").to_string();
    assert!(error.contains("PRECONDITION_FAILED") && error.contains("user_id"), "{error}");
    let _ = kyc.close(200, "bye".into()).await;
    let to_ledger = system.inject_as("intake", &step_queue("ledger"), b"{}", props.clone()).await;
    let error = to_ledger.expect_err("the intake may not route work to the ledger").to_string();
    assert!(error.contains("ACCESS_REFUSED"), "{error}");
    // The intake reaches the ledger with withdrawals only: a booking it sends that way
    // (one the ledger would otherwise book) is refused by the ledger's consumer.
    let stranger = Reference::from_random([9; RANDOM_BYTES]);
    let booking = forged_booking(&application(800), offer("25000", "0.0599", 36, "760.46"));
    let body = Envelope::new(stranger.clone(), "work/ledger", Utc::now(), WorkMessage::V1(booking)).encode();
    let route = loanflow_domain::messages::WITHDRAWAL_ROUTE;
    system.publish_as("intake", work, route, &body, props).await.unwrap();
    let refused =
        wait_until(Duration::from_secs(20), || async { system.queue_depth(DEAD_LETTER_QUEUE).await == 3 }).await;
    assert!(refused, "the ledger refused the intake's booking");
    assert_eq!(system.count("ledger", "loans", Some(stranger.as_str())).await, 0);

    // The approver's decision through the intake still goes through.
    assert_eq!(system.approve(MANAGER_TOKEN, &reference, "verified income").await.status(), 200);
    let approved = system.wait_for_status(&reference, "approved", Duration::from_secs(30)).await;
    assert_eq!(approved["decisions"][3]["decided_by"], "approver:grace");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_kept_no_longer_than_their_retention_however_often_they_are_listed() {
    let options = loanflow_testkit::Options { dead_letter_seconds: Some(4), ..Default::default() };
    let mut system = TestSystem::start_with(options).await;
    system.expect_dead_letters();
    let props = BasicProperties::default().with_delivery_mode(2);
    system.inject_as("intake", &step_queue("kyc"), b"not a message", props).await.unwrap();
    assert!(wait_until(Duration::from_secs(10), || async { system.queue_depth(DEAD_LETTER_QUEUE).await == 1 }).await);
    let died = std::time::Instant::now();

    // Listed again and again, it is still there within its retention: a listing puts
    // back a copy, which must not restart the clock.
    let mut listed = 0;
    while died.elapsed() < Duration::from_secs(2) {
        assert_eq!(loanflow_platform::dlq::list(&system.settings).await.unwrap().len(), 1, "kept within retention");
        listed += 1;
    }
    assert!(listed > 1);
    let gone = wait_until(Duration::from_secs(12), || async {
        loanflow_platform::dlq::list(&system.settings).await.unwrap().is_empty()
    })
    .await;
    assert!(gone, "the dead letter is gone once its retention passed, although it was listed {listed} times");
    assert!(died.elapsed() < Duration::from_secs(12), "gone about 4 s after it died, not 4 s after the last listing");
    // A letter that nobody lists goes too (the broker's own TTL, set by the setup step).
    let props = BasicProperties::default().with_delivery_mode(2);
    system.inject_as("intake", &step_queue("kyc"), b"not a message either", props).await.unwrap();
    assert!(wait_until(Duration::from_secs(10), || async { system.queue_depth(DEAD_LETTER_QUEUE).await == 1 }).await);
    let dropped =
        wait_until(Duration::from_secs(15), || async { system.queue_depth(DEAD_LETTER_QUEUE).await == 0 }).await;
    assert!(dropped, "the broker drops an unlisted dead letter after the retention");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_whose_consumer_never_settles_a_delivery_fails() {
    use loanflow_platform::broker::{self, access, Disposition};
    let system = TestSystem::start_with(loanflow_testkit::Options { levels: false, ..Default::default() }).await;
    // A kyc consumer whose handler does not finish until told to.
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let stop = loanflow_platform::CancellationToken::new();
    let mut settings = system.settings.clone();
    settings.broker = settings.broker.acting_as(&access::level("kyc"));
    let senders = access::Senders::of(&settings.broker, access::Queue::Level("kyc"));
    let health = loanflow_platform::health::Health::default().part("broker");
    let held = release.clone();
    let consumer =
        tokio::spawn(broker::consume(settings, step_queue("kyc"), senders, health, stop.clone(), move |batch, _| {
            let held = held.clone();
            async move {
                held.notified().await;
                vec![Disposition::Requeue; batch.len()]
            }
        }));
    system.submit_ok(&application(720)).await;
    let holding = wait_until(Duration::from_secs(10), || async { broker::unacknowledged(&system.vhost) == 1 }).await;
    assert!(holding, "the consumer holds the delivery");
    assert_eq!(system.finish().await, ["1 unacknowledged deliveries"], "the harness names what was left");
    release.notify_one();
    stop.cancel();
    consumer.await.unwrap();
}
