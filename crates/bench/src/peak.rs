//! The whole bus at peak (`--peak`): can one subscription replica's shared reader keep up with
//! every record on the bus while it holds the country's consents?
//!
//! - The consent topic gets `consents` active consents (one account each, spread over
//!   `streams` aggregators and 10 issuers); the registry connects every issuer with every
//!   aggregator. The replica's views follow both topics, as `serve subscription` does, and their
//!   start-up is timed.
//! - The transaction topic gets `records` transactions, of which one in `1 / consented_share`
//!   is for a consented account (the rest for accounts nobody consented for).
//! - A plain rdkafka consumer ([`cardlink_bus::baseline::drain`]) reads the topic to its end;
//!   then the hub — the same [`Hub`], with one registered stream per aggregator, each drained
//!   by a task of its own — reads it from the beginning with the reader's consumer and
//!   dispatches every record, timed to the topic's end. Both in this process, one after the
//!   other, on the same records: their rates are the maximum sustained read rates.
//!
//! What is left out: the streams' gRPC writes (measured per delivery by the fan-out benchmark)
//! and the revocation wait (the views are fresh throughout).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cardlink_bus::baseline::STALL_LIMIT;
use cardlink_bus::{PolledConsumer, RecordRef, StartAt, Topic};
use cardlink_events::consent::ConsentEvent;
use cardlink_events::registry::{
    AggregatorEntity, AggregatorStatus, ConnectionEntity, ConnectionStatus, Entity, RegistryEvent, Scope,
};
use cardlink_events::{ActorType, Event, RecordType, samples};
use cardlink_subscription::cursor::Cursor;
use cardlink_subscription::hub::Hub;
use cardlink_subscription::streams::Filters;
use cardlink_testkit::TestBus;
use cardlink_views::consent::ConsentView;
use cardlink_views::follow;
use cardlink_views::registry::RegistryView;
use chrono::{TimeZone as _, Utc};
use futures::StreamExt as _;
use serde::Serialize;

use crate::procstat;

const ISSUERS: usize = 10;
/// Records written concurrently while filling the topics.
const IN_FLIGHT: usize = 4_096;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    pub consents: usize,
    pub streams: usize,
    pub records: usize,
    /// Share of the records that belong to consented accounts.
    pub consented_share: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub machine: String,
    pub consents: usize,
    pub streams: usize,
    pub records: u64,
    pub consented_records: u64,
    pub views_ready_seconds: f64,
    pub plain_seconds: f64,
    pub plain_records_per_second: f64,
    /// The process's CPU (every thread: the embedded broker serving the fetches too) per record
    /// while the plain consumer read: with the hub's figure, what each costs the machine.
    pub plain_cpu_us_per_record: f64,
    /// The hub's consumer ([`Consumer`]) reading the same records without dispatching them.
    pub consumer_records_per_second: f64,
    pub hub_seconds: f64,
    pub hub_records_per_second: f64,
    pub hub_cpu_us_per_record: f64,
    pub delivered: u64,
    pub rss_mib: f64,
}

impl crate::Written for Report {
    const NAME: &'static str = "peak";

    fn machine(&mut self) -> &mut String {
        &mut self.machine
    }

    fn markdown(&self) -> String {
        format!(
            "| consents | streams | records (consented) | views ready | plain consumer | hub's consumer alone | hub (read + dispatch) | hub ÷ plain (target ≥ 0.8) | hub CPU µs/record | delivered | process RSS |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
             | {} | {} | {} ({}) | {:.0} s | {:.0} records/s | {:.0} records/s | {:.0} records/s | {:.2} | {:.1} | {} | {:.0} MiB |\n\n\
             | process CPU per record (broker included) | µs | cores busy |\n\
             |---|---:|---:|\n\
             | plain consumer | {:.2} | {:.2} |\n\
             | hub (read + dispatch) | {:.2} | {:.2} |\n",
            self.consents,
            self.streams,
            self.records,
            self.consented_records,
            self.views_ready_seconds,
            self.plain_records_per_second,
            self.consumer_records_per_second,
            self.hub_records_per_second,
            self.hub_records_per_second / self.plain_records_per_second.max(1e-9),
            self.hub_cpu_us_per_record,
            self.delivered,
            self.rss_mib,
            self.plain_cpu_us_per_record,
            self.plain_cpu_us_per_record * self.plain_records_per_second / 1e6,
            self.hub_cpu_us_per_record,
            self.hub_cpu_us_per_record * self.hub_records_per_second / 1e6,
        )
    }
}

fn aggregator(i: usize) -> String {
    format!("agg-{i:04}")
}

fn issuer(i: usize) -> String {
    format!("iss-{}", i % ISSUERS)
}

fn account(i: usize) -> String {
    format!("{i:016}")
}

fn consent(i: usize, streams: usize) -> ConsentEvent {
    let granted = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().unwrap_or_default();
    let account = account(i);
    let mut c = samples::active_consent(
        &format!("cns_{i:032x}"),
        &issuer(i),
        &aggregator(i % streams),
        &[account.as_str()],
        &Scope::ALL,
        granted,
        Utc::now() + chrono::TimeDelta::days(365),
    );
    c.member_ref = Some(format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    c
}

fn registry(streams: usize) -> Vec<RegistryEvent> {
    let mut events = Vec::new();
    for a in 0..streams {
        let id = aggregator(a);
        events.push(RegistryEvent::new(
            ActorType::System,
            "bench",
            Entity::Aggregator(AggregatorEntity {
                aggregator_id: id.clone(),
                name: id.clone(),
                registration_number: "1".into(),
                contact: "ops@example.invalid".into(),
                status: AggregatorStatus::Active,
                redirect_uris: Vec::new(),
            }),
        ));
        for i in 0..ISSUERS {
            events.push(RegistryEvent::new(
                ActorType::System,
                "bench",
                Entity::Connection(ConnectionEntity {
                    issuer_id: issuer(i),
                    aggregator_id: id.clone(),
                    scopes: Scope::ALL.to_vec(),
                    status: ConnectionStatus::Active,
                    reason: None,
                }),
            ));
        }
    }
    events
}

/// Reads the transaction topic from its beginning to its current end with the hub reader's
/// consumer, polled on a thread of its own as the hub's is; with a `hub`, dispatching every record
/// in batches as the hub's reader does (`Hub::dispatch_held`). Records read.
async fn read_all(bus: &TestBus, purpose: &str, hub: Option<Hub>) -> anyhow::Result<u64> {
    let reader = PolledConsumer::new(bus.config(), purpose)?;
    let read = tokio::task::spawn_blocking(move || {
        let mut ends = std::collections::HashMap::new();
        let mut positions = Vec::new();
        for (p, low, high) in reader.watermarks(Topic::Transactions)? {
            positions.push((Topic::Transactions, p, StartAt::Beginning));
            if high > low {
                ends.insert(p, high);
            }
        }
        reader.assign(&positions)?;
        let (mut read, mut last) = (0u64, Instant::now());
        // Counts a record and notes its partition done once it reaches the end seen at the start.
        let seen = |read: &mut u64, ends: &mut std::collections::HashMap<i32, i64>, record: &RecordRef<'_>| {
            *read += 1;
            if ends.get(&record.partition()).is_some_and(|end| record.offset() + 1 >= *end) {
                ends.remove(&record.partition());
            }
        };
        while !ends.is_empty() {
            let Some(record) = reader.poll(Duration::from_millis(100), "peak benchmark") else {
                anyhow::ensure!(last.elapsed() < STALL_LIMIT, "reading stalled: nothing for {STALL_LIMIT:?}");
                continue;
            };
            let record = record?;
            seen(&mut read, &mut ends, &record);
            if let Some(hub) = &hub {
                hub.dispatch_held(&reader, &record, |r| seen(&mut read, &mut ends, r))?;
            }
            last = Instant::now();
        }
        Ok(read)
    });
    read.await?
}

/// Writes `n` records made by `make`, [`IN_FLIGHT`] at a time.
async fn write<F, Fut>(n: usize, make: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<cardlink_bus::Delivered, cardlink_bus::BusError>>,
{
    let failed = futures::stream::iter(0..n)
        .map(make)
        .buffer_unordered(IN_FLIGHT)
        .fold(0usize, |failed, r| async move { failed + usize::from(r.is_err()) })
        .await;
    anyhow::ensure!(failed == 0, "{failed} of {n} records not written");
    Ok(())
}

pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let bus = TestBus::start().await?;
    let producer = bus.producer()?;
    let streams = plan.streams.max(1);
    eprintln!("bench: peak: writing {} consents", plan.consents);
    write(plan.consents, |i| {
        let producer = &producer;
        async move {
            let c = consent(i, streams);
            producer.publish_record(RecordType::ConsentEvent, &c.consent_id, &c.event_id.to_string(), &c).await
        }
    })
    .await?;
    let registry_events = registry(streams);
    write(registry_events.len(), |i| {
        let (producer, e) = (&producer, &registry_events[i]);
        async move { producer.publish_record(RecordType::RegistryEvent, &e.key(), &e.event_id.to_string(), e).await }
    })
    .await?;
    let every = (1.0 / plan.consented_share.clamp(1e-6, 1.0)).round() as usize;
    eprintln!("bench: peak: writing {} transactions, one in {every} for a consented account", plan.records);
    write(plan.records, |j| {
        let producer = &producer;
        async move {
            // A consented account (spread over all consents), or one nobody consented for.
            let (iss, acct) = if j % every == 0 {
                let i = (j / every).wrapping_mul(7_919) % plan.consents.max(1);
                (issuer(i), account(i))
            } else {
                (issuer(j), format!("x{j:015}"))
            };
            let event = Event::Transaction(samples::transaction(&iss, &acct, u32::try_from(j).unwrap_or(u32::MAX)));
            producer.publish(&event, None).await
        }
    })
    .await?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let (mut consents, consents_task) = follow::spawn(
        PolledConsumer::new(bus.config(), "peak-consent-view")?,
        Topic::Consents,
        ConsentView::new(),
        stopped.clone(),
    );
    let (mut registry, registry_task) = follow::spawn(
        PolledConsumer::new(bus.config(), "peak-registry-view")?,
        Topic::Registry,
        RegistryView::new(),
        stopped,
    );
    consents.caught_up().await;
    registry.caught_up().await;
    let views_ready = started.elapsed();
    anyhow::ensure!(
        consents.read(ConsentView::len) == plan.consents,
        "the view holds {}",
        consents.read(ConsentView::len)
    );
    eprintln!("bench: peak: views ready in {:.1} s", views_ready.as_secs_f64());

    let pid = std::process::id();
    let plain_cpu0 = procstat::sample(pid)?;
    let started = Instant::now();
    let plain = cardlink_bus::baseline::drain(bus.config(), Topic::Transactions).await?;
    let plain_time = started.elapsed();
    let plain_cpu1 = procstat::sample(pid)?;
    eprintln!("bench: peak: plain consumer read {} records in {:.1} s", plain.records, plain_time.as_secs_f64());

    let hub = Hub::new(consents, registry, Arc::from(&b"peak-benchmark-secret-0123456789"[..]));
    let delivered = Arc::new(AtomicU64::new(0));
    for a in 0..streams {
        let id = aggregator(a);
        let mut registration = hub.register(&id, Filters::all(), &Cursor::new(&id));
        let delivered = Arc::clone(&delivered);
        tokio::spawn(async move {
            while registration.rx.recv().await.is_some() {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // The hub's consumer alone (records read, nothing dispatched): what the bus client costs.
    let started = Instant::now();
    let consumed = read_all(&bus, "peak-consumer", None).await?;
    let consumer_time = started.elapsed();
    eprintln!("bench: peak: the bus consumer alone read {consumed} records in {:.1} s", consumer_time.as_secs_f64());
    let cpu0 = procstat::sample(pid)?;
    let started = Instant::now();
    let read = read_all(&bus, "peak-hub", Some(hub.clone())).await?;
    let hub_time = started.elapsed();
    let cpu1 = procstat::sample(pid)?;
    // Let the stream tasks count what is queued.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The views' followers stop (and close their consumers) before the broker does.
    let _ = stop.send(true);
    for task in [consents_task, registry_task] {
        task.await??;
    }
    let consented = (plan.records / every + usize::from(!plan.records.is_multiple_of(every))) as u64;
    Ok(Report {
        machine: String::new(),
        consents: plan.consents,
        streams,
        records: read,
        consented_records: consented,
        views_ready_seconds: views_ready.as_secs_f64(),
        plain_seconds: plain_time.as_secs_f64(),
        plain_records_per_second: plain.records as f64 / plain_time.as_secs_f64(),
        plain_cpu_us_per_record: plain_cpu0.cpu_us_per(&plain_cpu1, plain.records),
        consumer_records_per_second: consumed as f64 / consumer_time.as_secs_f64(),
        hub_seconds: hub_time.as_secs_f64(),
        hub_records_per_second: read as f64 / hub_time.as_secs_f64(),
        hub_cpu_us_per_record: cpu0.cpu_us_per(&cpu1, read),
        delivered: delivered.load(Ordering::Relaxed),
        rss_mib: cpu1.rss as f64 / 1048576.0,
    })
}
