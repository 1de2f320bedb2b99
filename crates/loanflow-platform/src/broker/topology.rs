//! The topology every service declares: exchanges, step queues, delay tiers, the
//! status queue and the dead-letter queue (see the module above for the routes).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use super::{
    retry_exchange, step_queue, BrokerError, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, STATUS_EXCHANGE, STATUS_QUEUE,
    WORK_EXCHANGE,
};
use crate::settings::{QueueType, Settings};

/// Everything the services declare.
#[derive(Debug, Clone)]
pub struct Topology {
    steps: Vec<String>,
    queue_type: QueueType,
    delivery_limit: u32,
    retry_tiers: Vec<u64>,
}

impl Topology {
    pub fn new(settings: &Settings) -> Topology {
        let mut steps = settings.chain.names();
        steps.push(loanflow_domain::messages::LEDGER_STEP.to_owned());
        Topology {
            steps,
            queue_type: settings.broker.queue_type,
            delivery_limit: settings.broker.delivery_limit,
            retry_tiers: settings.retry.tiers(),
        }
    }

    fn queue_arguments(&self, dead_letter: bool) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            // Replicated across a cluster's nodes; on one node still durable and safe.
            args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            args.insert("x-delivery-limit".into(), AMQPValue::LongUInt(self.delivery_limit));
        }
        if dead_letter {
            // Messages the broker itself gives up on (delivery limit) are kept, not lost.
            args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()));
        }
        args
    }

    pub async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        // Durable exchanges and queues survive a broker restart.
        let durable_exchange = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        let durable_queue = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        let empty = FieldTable::default;
        // Topic, not direct, although bindings are exact step names: RabbitMQ applies
        // topic permissions (who may route work where) to topic exchanges only.
        channel.exchange_declare(WORK_EXCHANGE.into(), ExchangeKind::Topic, durable_exchange, empty()).await?;
        channel.exchange_declare(STATUS_EXCHANGE.into(), ExchangeKind::Fanout, durable_exchange, empty()).await?;
        channel.exchange_declare(DEAD_LETTER_EXCHANGE.into(), ExchangeKind::Fanout, durable_exchange, empty()).await?;

        channel.queue_declare(DEAD_LETTER_QUEUE.into(), durable_queue, self.queue_arguments(false)).await?;
        channel
            .queue_bind(
                DEAD_LETTER_QUEUE.into(),
                DEAD_LETTER_EXCHANGE.into(),
                "".into(),
                QueueBindOptions::default(),
                empty(),
            )
            .await?;
        for step in &self.steps {
            let queue = step_queue(step);
            channel.queue_declare(queue.as_str().into(), durable_queue, self.queue_arguments(true)).await?;
            channel
                .queue_bind(
                    queue.into(),
                    WORK_EXCHANGE.into(),
                    step.as_str().into(),
                    QueueBindOptions::default(),
                    empty(),
                )
                .await?;
        }
        for delay in &self.retry_tiers {
            // Classic queues: a waiting room needs TTL and dead-lettering, not replication.
            let name = retry_exchange(*delay);
            let mut args = FieldTable::default();
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(i64::try_from(*delay).unwrap_or(i64::MAX)));
            // "" is the default exchange: it routes the expired message by its routing
            // key, the name of the queue it came from.
            args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
            channel.exchange_declare(name.as_str().into(), ExchangeKind::Fanout, durable_exchange, empty()).await?;
            channel.queue_declare(name.as_str().into(), durable_queue, args).await?;
            channel
                .queue_bind(name.as_str().into(), name.as_str().into(), "".into(), QueueBindOptions::default(), empty())
                .await?;
        }
        channel.queue_declare(STATUS_QUEUE.into(), durable_queue, self.queue_arguments(true)).await?;
        channel
            .queue_bind(STATUS_QUEUE.into(), STATUS_EXCHANGE.into(), "".into(), QueueBindOptions::default(), empty())
            .await?;
        Ok(())
    }
}
