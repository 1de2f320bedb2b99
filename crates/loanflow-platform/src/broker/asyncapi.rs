//! The AsyncAPI 3.0 document of the broker side: every exchange and queue of the
//! topology ([`Topology::spec`]) as a channel, who sends and receives what on them
//! (the services' grants), and the messages, whose JSON Schemas are generated from the
//! Rust message types themselves (utoipa), so the document follows the code.
//! `loanflow asyncapi` prints it; `schema/asyncapi.json` is the committed copy, which a
//! test regenerates and compares.

use serde_json::{json, Map, Value};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use loanflow_domain::messages::{Envelope, StatusMessage, WorkMessage, LEDGER_STEP, WITHDRAWAL_ROUTE};

use super::access::{self, vhost_of};
use super::topology::Topology;
use super::{DEAD_LETTER_QUEUE, STATUS_EXCHANGE, STATUS_QUEUE, WORK_EXCHANGE};
use crate::settings::Settings;

/// The messages, by the name the document gives them.
const WORK: &str = "work";
const STATUS: &str = "status";

fn message_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/messages/{name}") })
}

/// What travels on a channel: work, status, or (dead letters, retries) either.
fn messages_of(name: &str) -> Vec<&'static str> {
    if name == WORK_EXCHANGE || name.starts_with("loanflow.step.") {
        vec![WORK]
    } else if name == STATUS_EXCHANGE || name == STATUS_QUEUE {
        vec![STATUS]
    } else {
        vec![WORK, STATUS]
    }
}

fn schema_json(schema: RefOr<Schema>) -> Value {
    serde_json::to_value(schema).unwrap_or(Value::Null)
}

/// The envelope of `B`, and every schema it refers to.
fn payload<B: ToSchema>(schemas: &mut Map<String, Value>, name: &str) -> Value
where
    Envelope<B>: ToSchema,
{
    let mut found = vec![(B::name().into_owned(), B::schema())];
    B::schemas(&mut found);
    <Envelope<B> as ToSchema>::schemas(&mut found);
    for (schema_name, schema) in found {
        schemas.insert(schema_name, schema_json(schema));
    }
    schemas.insert(name.to_owned(), schema_json(<Envelope<B> as PartialSchema>::schema()));
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The document for `settings` (its vhost and chain).
pub fn document(settings: &Settings) -> Value {
    let vhost = vhost_of(&settings.broker.url);
    let spec = Topology::new(settings).spec();
    let mut channels = Map::new();
    for exchange in &spec.exchanges {
        let messages: Map<String, Value> =
            messages_of(&exchange.name).into_iter().map(|m| (m.to_owned(), message_ref(m))).collect();
        let routes: Vec<&str> =
            spec.bindings.iter().filter(|b| b.exchange == exchange.name).map(|b| b.routing_key.as_str()).collect();
        channels.insert(
            format!("exchange/{}", exchange.name),
            json!({
                "address": exchange.name,
                "title": format!("exchange {}", exchange.name),
                "description": format!("A {} exchange; bound with {:?}.", exchange.kind, routes),
                "messages": messages,
                "bindings": { "amqp": { "is": "routingKey", "bindingVersion": "0.3.0", "exchange": {
                    "name": exchange.name, "type": exchange.kind, "durable": true, "autoDelete": false, "vhost": vhost } } }
            }),
        );
    }
    for queue in &spec.queues {
        let messages: Map<String, Value> =
            messages_of(&queue.name).into_iter().map(|m| (m.to_owned(), message_ref(m))).collect();
        let arguments: Vec<String> = queue.arguments.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        channels.insert(
            format!("queue/{}", queue.name),
            json!({
                "address": queue.name,
                "title": format!("queue {}", queue.name),
                "description": format!("Durable; arguments: {}.", arguments.join(", ")),
                "messages": messages,
                "bindings": { "amqp": { "is": "queue", "bindingVersion": "0.3.0", "queue": {
                    "name": queue.name, "durable": true, "exclusive": false, "autoDelete": false, "vhost": vhost } } }
            }),
        );
    }

    // Who sends and receives what: each service's part, as its grants allow.
    let mut operations = Map::new();
    let mut operation = |id: String, action: &str, channel: &str, summary: String| {
        let messages: Vec<Value> = messages_of(channel.split_once('/').map_or(channel, |(_, n)| n))
            .into_iter()
            .map(|m| json!({ "$ref": format!("#/channels/{}/messages/{m}", channel.replace('/', "~1")) }))
            .collect();
        let mut op = json!({ "action": action, "channel": { "$ref": format!("#/channels/{}", channel.replace('/', "~1")) },
                             "summary": summary, "messages": messages });
        if action == "send" {
            // Persistent, and confirmed by the broker before the sender goes on.
            op["bindings"] = json!({ "amqp": { "deliveryMode": 2, "bindingVersion": "0.3.0" } });
        }
        operations.insert(id, op);
    };
    let work = format!("exchange/{WORK_EXCHANGE}");
    let status = format!("exchange/{STATUS_EXCHANGE}");
    let levels = settings.chain.names();
    operation(
        "intake.sendWork".into(),
        "send",
        &work,
        format!("The outbox: each application's first step, approvers' decisions to their level (routing keys {levels:?}), and withdrawals to the ledger (routing key {WITHDRAWAL_ROUTE:?})."),
    );
    operation(
        "intake.receiveStatus".into(),
        "receive",
        &format!("queue/{STATUS_QUEUE}"),
        "The status projection.".into(),
    );
    for level in &levels {
        let id = access::level(level);
        operation(
            format!("{id}.receiveWork"),
            "receive",
            &format!("queue/loanflow.step.{level}"),
            format!("Level {level}: work (and, at a human level, approvers' decisions)."),
        );
        operation(
            format!("{id}.sendWork"),
            "send",
            &work,
            format!("Level {level}: an approved application to the next step of its slip."),
        );
        operation(
            format!("{id}.sendStatus"),
            "send",
            &status,
            format!("Level {level}: its decisions and progress, in batches."),
        );
    }
    operation(
        "ledger.receiveWork".into(),
        "receive",
        &format!("queue/loanflow.step.{LEDGER_STEP}"),
        "Approved applications to book, and withdrawals.".into(),
    );
    operation("ledger.sendStatus".into(), "send", &status, "approved once booked; withdrawn once recorded.".into());
    operation(
        "operator.receiveDeadLetters".into(),
        "receive",
        &format!("queue/{DEAD_LETTER_QUEUE}"),
        "Dead letters, listed and replayed to the queue they came from.".into(),
    );

    let mut schemas = Map::new();
    let work_payload = payload::<WorkMessage>(&mut schemas, "WorkEnvelope");
    let status_payload = payload::<StatusMessage>(&mut schemas, "StatusEnvelope");
    let headers = json!({
        "type": "object",
        "properties": {
            "reference": { "type": "string", "description": "The application's reference (every message)." },
            "x-loanflow-attempts": { "type": "integer", "description": "Attempts so far (a retried message)." },
            "x-loanflow-origin-queue": { "type": "string", "description": "The queue a retried or dead message came from." },
            "x-loanflow-reason": { "type": "string", "description": "Why a message was dead-lettered." },
            "x-loanflow-sent-at-us": { "type": "integer", "description": "When it was first sent, in microseconds since the epoch." },
            "x-loanflow-dead-at": { "type": "integer", "description": "When it was dead-lettered." },
            "traceparent": { "type": "string", "description": "W3C trace context of the span that sent it (while tracing is on); each item of a status batch carries its own." },
            "tracestate": { "type": "string", "description": "W3C trace state, where the trace has one." }
        }
    });
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "loanflow broker messages",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The exchanges, queues and messages between loanflow's services. Every message is an envelope (message_id, reference, sent_at) around a body tagged with its type and version; the publisher's broker user is in the user_id property, which the broker checks and every consumer verifies."
        },
        "defaultContentType": "application/json",
        "servers": { "broker": { "host": "127.0.0.1:5672", "protocol": "amqp", "pathname": format!("/{vhost}"),
                                 "description": "RabbitMQ; each service connects as its own user." } },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {
                WORK: { "name": WORK, "title": "Work", "summary": "loan.work.v1 (an application on its routing slip), loan.approval.v1 (a person's decision, from the intake) or loan.withdrawal.v1 (to the ledger).",
                        "headers": headers, "payload": work_payload },
                STATUS: { "name": STATUS, "title": "Status", "summary": "loan.status.v1 (one event) or loan.status.batch.v1 (the events of one delivery batch).",
                          "headers": headers, "payload": status_payload }
            },
            "schemas": schemas
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_and_exchange_is_a_channel_and_every_message_has_its_schema() {
        let settings = Settings::defaults().unwrap();
        let doc = document(&settings);
        let spec = Topology::new(&settings).spec();
        for q in &spec.queues {
            assert!(doc["channels"][format!("queue/{}", q.name)].is_object(), "{}", q.name);
        }
        for e in &spec.exchanges {
            assert!(doc["channels"][format!("exchange/{}", e.name)].is_object(), "{}", e.name);
        }
        let text = doc.to_string();
        for tag in ["loan.work.v1", "loan.approval.v1", "loan.withdrawal.v1", "loan.status.v1", "loan.status.batch.v1"]
        {
            assert!(text.contains(tag), "{tag} is described");
        }
        // Every reference resolves inside the document.
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        for r in refs {
            let pointer = r.trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "{r} resolves");
        }
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => collect_refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }
}
