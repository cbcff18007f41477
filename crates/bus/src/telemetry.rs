//! What the Kafka clients report: librdkafka's statistics as OpenTelemetry gauges, and the
//! messaging counters of the semantic conventions for what cardlink sends and reads.
//!
//! Every client cardlink creates gets a [`StatsContext`]: librdkafka hands it a statistics
//! snapshot every [`STATS_INTERVAL`], the context keeps the few figures an operator alerts on
//! (queued messages, consumer lag, broker round trip), and gauges sum them per client role
//! (`producer`, `subscription-hub`, `catch-up`, …) when the meter collects. A client's figures
//! leave with the client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Once, PoisonError};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::statistics::Statistics;

/// How often librdkafka reports statistics.
pub const STATS_INTERVAL: Duration = Duration::from_secs(10);

const ROLE: &str = "cardlink.kafka.client.role";

#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    queued: u64,
    lag: i64,
    rtt_seconds: f64,
}

type Clients = HashMap<u64, (Arc<str>, Figures)>;

static CLIENTS: LazyLock<Mutex<Clients>> = LazyLock::new(Mutex::default);
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn clients() -> std::sync::MutexGuard<'static, Clients> {
    CLIENTS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The rdkafka context of every cardlink client: receives its statistics.
#[derive(Debug)]
pub struct StatsContext {
    id: u64,
    role: Arc<str>,
}

impl StatsContext {
    pub(crate) fn new(role: &str) -> Self {
        register_gauges();
        Self { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), role: Arc::from(role) }
    }
}

impl Drop for StatsContext {
    fn drop(&mut self) {
        clients().remove(&self.id);
    }
}

impl ClientContext for StatsContext {
    fn stats(&self, stats: Statistics) {
        let lag = stats
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            // Partition -1 is librdkafka's "unassigned" bucket; -1 lag means unknown.
            .filter(|p| p.partition >= 0)
            .map(|p| p.consumer_lag.max(0))
            .sum();
        let rtt_micros = stats.brokers.values().filter_map(|b| b.rtt.as_ref()).map(|w| w.avg).max().unwrap_or(0);
        let figures = Figures { queued: stats.msg_cnt, lag, rtt_seconds: rtt_micros as f64 / 1e6 };
        clients().insert(self.id, (Arc::clone(&self.role), figures));
    }
}

impl ConsumerContext for StatsContext {}

/// Sums per role of the live clients' figures.
fn per_role(pick: impl Fn(&Figures) -> f64, combine: fn(f64, f64) -> f64) -> Vec<(Arc<str>, f64)> {
    let mut out: HashMap<Arc<str>, f64> = HashMap::new();
    for (role, figures) in clients().values() {
        let v = pick(figures);
        out.entry(Arc::clone(role)).and_modify(|acc| *acc = combine(*acc, v)).or_insert(v);
    }
    out.into_iter().collect()
}

fn register_gauges() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let meter = opentelemetry::global::meter("cardlink");
        let gauge = |name: &'static str,
                     unit: &'static str,
                     description: &'static str,
                     pick: fn(&Figures) -> f64,
                     combine: fn(f64, f64) -> f64| {
            meter
                .f64_observable_gauge(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |observer| {
                    for (role, value) in per_role(pick, combine) {
                        observer.observe(value, &[KeyValue::new(ROLE, role.to_string())]);
                    }
                })
                .build()
        };
        gauge(
            "cardlink.kafka.client.queued_messages",
            "{message}",
            "Messages in librdkafka's local queues, waiting to be sent or delivered",
            |f| f.queued as f64,
            |a, b| a + b,
        );
        gauge(
            "cardlink.kafka.consumer.lag",
            "{message}",
            "Records on the broker not yet read, summed over the assigned partitions",
            |f| f.lag as f64,
            |a, b| a + b,
        );
        gauge(
            "cardlink.kafka.broker.rtt",
            "s",
            "Average broker round-trip time (the slowest broker)",
            |f| f.rtt_seconds,
            f64::max,
        );
    });
}

/// The semantic-convention messaging instruments of one client.
#[derive(Clone, Debug)]
pub(crate) struct MessagingMetrics {
    sent: Counter<u64>,
    send_duration: Histogram<f64>,
    consumed: Counter<u64>,
    /// Attributes per topic name, made once: a record costs no allocation for them.
    per_topic: Arc<HashMap<String, [KeyValue; 2]>>,
}

impl MessagingMetrics {
    pub(crate) fn new(topic_names: impl IntoIterator<Item = String>) -> Self {
        let meter = opentelemetry::global::meter("cardlink");
        let per_topic = topic_names
            .into_iter()
            .map(|name| {
                let attrs = [
                    KeyValue::new("messaging.system", "kafka"),
                    KeyValue::new("messaging.destination.name", name.clone()),
                ];
                (name, attrs)
            })
            .collect();
        Self {
            sent: meter
                .u64_counter("messaging.client.sent.messages")
                .with_unit("{message}")
                .with_description("Records handed to Kafka (with error.type when Kafka did not take them)")
                .build(),
            send_duration: meter
                .f64_histogram("messaging.client.operation.duration")
                .with_unit("s")
                .with_description("Time from handing a record to the producer to Kafka's acknowledgement")
                .with_boundaries(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
                .build(),
            consumed: meter
                .u64_counter("messaging.client.consumed.messages")
                .with_unit("{message}")
                .with_description("Records read from Kafka")
                .build(),
            per_topic: Arc::new(per_topic),
        }
    }

    fn attrs(&self, topic: &str) -> Vec<KeyValue> {
        match self.per_topic.get(topic) {
            Some(a) => a.to_vec(),
            None => vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.destination.name", topic.to_owned()),
            ],
        }
    }

    pub(crate) fn sent(&self, topic: &str, elapsed: Duration, error: Option<&'static str>) {
        let mut attrs = self.attrs(topic);
        attrs.push(KeyValue::new("messaging.operation.name", "send"));
        if let Some(e) = error {
            attrs.push(KeyValue::new("error.type", e));
        }
        self.send_duration.record(elapsed.as_secs_f64(), &attrs);
        self.sent.add(1, &attrs);
    }

    /// Once per record read: the attributes are borrowed, not copied (the shared reader calls
    /// this for every record on the bus).
    pub(crate) fn consumed(&self, topic: &str) {
        match self.per_topic.get(topic) {
            Some(attrs) => self.consumed.add(1, attrs),
            None => self.consumed.add(1, &self.attrs(topic)),
        }
    }
}
