//! The topology: exchanges, step queues, the status queue and the
//! dead-letter queue (see the module above for the routes). Described once, as data
//! ([`Topology::spec`]), which the setup step declares over AMQP and which
//! `loanflow broker-definitions` writes as RabbitMQ definitions for a deployment that
//! imports them instead.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use serde_json::{json, Value};

use super::{
    step_queue, BrokerError, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, STATUS_EXCHANGE, STATUS_QUEUE, WORK_EXCHANGE,
};
use crate::settings::{QueueType, Settings};

/// Everything the setup step declares.
#[derive(Debug, Clone)]
pub struct Topology {
    steps: Vec<String>,
    queue_type: QueueType,
    delivery_limit: u32,
}

/// A queue argument's value, with the AMQP type it has always been declared with (a
/// redeclaration with another integer type would be refused as inequivalent).
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    /// A count, declared as an unsigned 32-bit integer.
    Count(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeSpec {
    pub name: String,
    /// `topic` or `fanout`.
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    pub name: String,
    pub arguments: Vec<(&'static str, Arg)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BindingSpec {
    pub queue: String,
    pub exchange: String,
    pub routing_key: String,
}

/// The topology as data: every exchange, queue (durable, with its arguments) and binding.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
    pub bindings: Vec<BindingSpec>,
}

impl Topology {
    pub fn new(settings: &Settings) -> Topology {
        let mut steps = settings.chain.names();
        steps.push(loanflow_domain::messages::LEDGER_STEP.to_owned());
        Topology { steps, queue_type: settings.broker.queue_type, delivery_limit: settings.broker.delivery_limit }
    }

    fn queue_arguments(&self, dead_letter: bool) -> Vec<(&'static str, Arg)> {
        let mut args = Vec::new();
        if self.queue_type == QueueType::Quorum {
            // Replicated across a cluster's nodes; on one node still durable and safe.
            args.push(("x-queue-type", Arg::Text("quorum".into())));
            args.push(("x-delivery-limit", Arg::Count(self.delivery_limit)));
        }
        if dead_letter {
            // Messages the broker itself gives up on (delivery limit) are kept, not lost.
            args.push(("x-dead-letter-exchange", Arg::Text(DEAD_LETTER_EXCHANGE.into())));
        }
        args
    }

    pub fn spec(&self) -> Spec {
        let exchange = |name: &str, kind| ExchangeSpec { name: name.to_owned(), kind };
        let bind = |queue: &str, exchange: &str, key: &str| BindingSpec {
            queue: queue.to_owned(),
            exchange: exchange.to_owned(),
            routing_key: key.to_owned(),
        };
        // Topic, not direct, although bindings are exact step names: RabbitMQ applies
        // topic permissions (who may route work where) to topic exchanges only.
        let exchanges = vec![
            exchange(WORK_EXCHANGE, "topic"),
            exchange(STATUS_EXCHANGE, "fanout"),
            exchange(DEAD_LETTER_EXCHANGE, "fanout"),
        ];
        let mut queues = vec![QueueSpec { name: DEAD_LETTER_QUEUE.into(), arguments: self.queue_arguments(false) }];
        let mut bindings = vec![bind(DEAD_LETTER_QUEUE, DEAD_LETTER_EXCHANGE, "")];
        for step in &self.steps {
            let queue = step_queue(step);
            queues.push(QueueSpec { name: queue.clone(), arguments: self.queue_arguments(true) });
            bindings.push(bind(&queue, WORK_EXCHANGE, step));
            if step == loanflow_domain::messages::LEDGER_STEP {
                // The applicant's withdrawals, which the ledger alone can settle.
                bindings.push(bind(&queue, WORK_EXCHANGE, loanflow_domain::messages::WITHDRAWAL_ROUTE));
            }
        }
        queues.push(QueueSpec { name: STATUS_QUEUE.into(), arguments: self.queue_arguments(true) });
        bindings.push(bind(STATUS_QUEUE, STATUS_EXCHANGE, ""));
        Spec { exchanges, queues, bindings }
    }

    /// Declares everything, over AMQP (idempotent).
    pub async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        let spec = self.spec();
        // Durable exchanges and queues survive a broker restart.
        let durable_exchange = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        let durable_queue = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        for e in &spec.exchanges {
            let kind = if e.kind == "topic" { ExchangeKind::Topic } else { ExchangeKind::Fanout };
            channel.exchange_declare(e.name.as_str().into(), kind, durable_exchange, FieldTable::default()).await?;
        }
        for q in &spec.queues {
            let mut args = FieldTable::default();
            for (key, value) in &q.arguments {
                let value = match value {
                    Arg::Text(text) => AMQPValue::LongString(text.as_str().into()),
                    Arg::Count(n) => AMQPValue::LongUInt(*n),
                };
                args.insert((*key).into(), value);
            }
            channel.queue_declare(q.name.as_str().into(), durable_queue, args).await?;
        }
        for b in &spec.bindings {
            let (queue, exchange, key) = (b.queue.as_str(), b.exchange.as_str(), b.routing_key.as_str());
            channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// The exchanges, queues and bindings of `vhost` in RabbitMQ's definitions format.
    pub fn definitions(&self, vhost: &str) -> (Value, Value, Value) {
        let spec = self.spec();
        let exchanges = spec.exchanges.iter().map(|e| {
            json!({"name": e.name, "vhost": vhost, "type": e.kind, "durable": true, "auto_delete": false,
                   "internal": false, "arguments": {}})
        });
        let queues = spec.queues.iter().map(|q| {
            let arguments: serde_json::Map<String, Value> = q
                .arguments
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Arg::Text(text) => json!(text),
                        Arg::Count(n) => json!(n),
                    };
                    ((*k).to_owned(), v)
                })
                .collect();
            json!({"name": q.name, "vhost": vhost, "durable": true, "auto_delete": false, "arguments": arguments})
        });
        let bindings = spec.bindings.iter().map(|b| {
            json!({"source": b.exchange, "vhost": vhost, "destination": b.queue, "destination_type": "queue",
                   "routing_key": b.routing_key, "arguments": {}})
        });
        (Value::from_iter(exchanges), Value::from_iter(queues), Value::from_iter(bindings))
    }
}
