//! `GET /api/openapi.json`: the OpenAPI 3.1 document of the public API, generated from
//! the handlers' annotations and the types they read and answer with (utoipa), so it
//! cannot drift from them. Health and metrics, served by the platform, are described
//! here by hand; `make test` validates the document and runs a property-based tester
//! (schemathesis) against a running intake with it.

use actix_web::HttpResponse;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(title = "loanflow", description = "Asynchronous multi-level loan approval: the public contract (version 2)."),
    paths(
        super::loans::submit,
        super::loans::status,
        super::loans::withdraw,
        super::approvals::list,
        super::approvals::decide_api,
        super::approvals::claim_api,
        super::approvals::release_api,
    ),
    components(schemas(ErrorBody, crate::error::ErrorCode)),
    modifiers(&Operations),
    tags((name = "loans", description = "Applicants: submit, follow, withdraw"),
         (name = "approvals", description = "Approvers: the inbox, claims and decisions"),
         (name = "operations", description = "Health, metrics and this document"))
)]
pub struct ApiDoc;

/// The bearer scheme of approvers, and the paths the platform serves.
struct Operations;

impl Modify for Operations {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("An approver's token")).build();
        components.add_security_scheme("approver", SecurityScheme::Http(bearer));
        let plain = |path: &str, summary: &str, content_type: &str, also_503: bool| {
            let ok = ResponseBuilder::new().description("OK").content(content_type, ContentBuilder::new().build());
            let mut operation = OperationBuilder::new()
                .summary(Some(summary))
                .tag("operations")
                .operation_id(Some(path.trim_start_matches('/').replace(['/', '.'], "_")))
                .response("200", ok.build());
            if also_503 {
                let down = ResponseBuilder::new()
                    .description("Not ready: a part it needs is down (the body says which)")
                    .content("application/json", ContentBuilder::new().build());
                operation = operation.response("503", down.build());
            }
            (path.to_owned(), PathItem::new(HttpMethod::Get, operation.build()))
        };
        for (path, item) in [
            plain("/health/live", "The process is alive", "application/json", false),
            plain("/health/ready", "Ready to serve: the intake while its database answers", "application/json", true),
            plain("/metrics", "Prometheus metrics", "text/plain", false),
            plain("/api/openapi.json", "This document", "application/json", false),
        ] {
            doc.paths.paths.insert(path, item);
        }
    }
}

/// The document, made once.
fn document() -> &'static str {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    JSON.get_or_init(|| ApiDoc::openapi().to_pretty_json().unwrap_or_default())
}

pub(super) async fn serve() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(document())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    #[test]
    fn the_document_is_openapi_3_1_with_every_path_and_error_code_of_the_contract() {
        let doc: Value = serde_json::from_str(super::document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
        for path in [
            "/api/loans",
            "/api/loans/{reference}",
            "/api/loans/{reference}/withdrawal",
            "/api/approvals",
            "/api/approvals/{reference}",
            "/api/approvals/{reference}/claim",
            "/api/openapi.json",
            "/metrics",
            "/health/live",
            "/health/ready",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} is described");
        }
        let codes = &doc["components"]["schemas"]["ErrorCode"]["enum"];
        for code in [
            "invalid_json",
            "payload_too_large",
            "unsupported_media_type",
            "validation_failed",
            "idempotency_key_reused",
            "not_found",
            "unauthorized",
            "forbidden",
            "not_awaiting_decision",
            "claimed_by_other",
            "already_decided_by_you",
            "already_final",
            "rate_limited",
            "request_timeout",
        ] {
            assert!(codes.as_array().unwrap().iter().any(|c| c == code), "{code} is in {codes}");
        }
    }
}
