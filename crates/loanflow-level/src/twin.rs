//! A level of the synchronous twin (`loanflow twin level <name>`): the same rule as
//! the queue consumer, answered over HTTP on the twin's own listener, behind its
//! secret, with no broker and no state (a human level answers `await_approver`).
//! Never mounted by `loanflow level`.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use loanflow_domain::messages::{StepAnswer, StepOutcome, WorkItem};
use loanflow_domain::Outcome;
use loanflow_platform::shutdown::Running;
use loanflow_platform::{twin, Settings};

use crate::{Rule, StartError, Step, StepError};

struct TwinLevel {
    name: String,
    rule: Rule,
}

/// Serves `POST /api/steps/{name}` on `twin.listen`.
pub async fn start(settings: Settings, name: &str, shutdown: CancellationToken) -> Result<Running, StartError> {
    let level = web::Data::new(Arc::new(TwinLevel { name: name.to_owned(), rule: Rule::new(&settings, name)? }));
    let routes = move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(level.clone()).route("/steps/{level}", web::post().to(step));
    };
    let tasks = TaskTracker::new();
    let listen = settings.twin.listen.clone();
    let addr = twin::serve(&settings.twin, 2, routes, shutdown, &tasks)
        .ok_or(StartError::NoTwinSecret)?
        .map_err(|e| StartError::Listen(listen, e))?;
    tracing::info!(level = name, %addr, "twin level listening");
    Ok(Running::new(Some(addr), tasks))
}

async fn step(path: web::Path<String>, body: web::Json<WorkItem>, level: web::Data<Arc<TwinLevel>>) -> HttpResponse {
    let mut work = body.into_inner();
    if path.as_str() != level.name || work.slip.current() != Some(level.name.as_str()) {
        return HttpResponse::UnprocessableEntity().json(
            serde_json::json!({"error": "misrouted", "message": "this level is not the work item's current step"}),
        );
    }
    let step = level.rule.decide(&mut work).await;
    let answer = |outcome, reason| HttpResponse::Ok().json(StepAnswer { outcome, reason, work: work.clone() });
    match step {
        Ok(Step::Decided(v)) if v.outcome == Outcome::Approved => answer(StepOutcome::Approved, Some(v.reason)),
        Ok(Step::Decided(v)) => answer(StepOutcome::Rejected, Some(v.reason)),
        Ok(Step::AwaitApprover) => answer(StepOutcome::AwaitApprover, None),
        Err(e @ StepError::BureauUnavailable(_)) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"error": "dependency_unavailable", "message": e.to_string()})),
        Err(e) => HttpResponse::UnprocessableEntity()
            .json(serde_json::json!({"error": "cannot_decide", "message": e.to_string()})),
    }
}
