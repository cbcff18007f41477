//! The driver: builds the world, runs each measurement, collects the figures.
//!
//! - The broker (embedded, unless `--kafka`) and the registry run in the driver; the ingest and
//!   subscription services and the baseline run as child processes ([`crate::roles`]) so that
//!   each one's CPU time and memory are its own.
//! - **Ingest**: pre-generated simulator events, flat out, from several concurrent clients, over
//!   gRPC; acks=all (the bus producer's setting), every record acknowledged before it counts.
//!   Then the same records, already encoded, through a plain producer with the same client
//!   settings (the raw baseline ingest's validation, PAN guard, idempotency and Avro are set
//!   against).
//! - **Fan-out** at S streams: S aggregators, each with one stream of its own (its own HTTP/2
//!   connection, as separate companies have), and 10,000 active consents on S aggregators' behalf
//!   (one account each); the issuer simulator publishes at the target rate through ingest over
//!   those accounts, so each event is for exactly one stream. Measured: the subscription
//!   process's CPU per delivered event and its memory per idle and per active stream, and
//!   publish→deliver latency at the client (from `Delivery.published_at`, the record's broker
//!   timestamp).
//! - **Baseline** at S: S Kafka consumers reading the same records and filtering them for their
//!   aggregator ([`crate::roles::baseline`]); the same workload, side by side in the same run.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cardlink_adapters::simulator::{SimConfig, Simulator};
use cardlink_api::v1;
use cardlink_api::v1::issuer_ingest_client::IssuerIngestClient;
use cardlink_api::v1::subscription_client::SubscriptionClient;
use cardlink_auth::Role;
use cardlink_authn::Caller;
use cardlink_bus::{BusConfig, Consumer, Topic};
use cardlink_events::Event;
use cardlink_events::registry::{AggregatorEntity, AggregatorStatus, IssuerEntity, Scope};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tonic::transport::Channel;

use crate::procstat;
use crate::report::{Fanout, Ingest, Latency, Report};
use crate::roles::Start;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    pub kafka: Option<String>,
    pub streams: Vec<usize>,
    pub consents: usize,
    pub rate: u32,
    pub events: usize,
    pub ingest_events: usize,
    pub ingest_clients: usize,
    pub baseline: bool,
}

const BATCH: usize = 1_000;
/// Concurrent ingest clients of the fan-out measurements, each sending 100-record calls on a
/// schedule: enough that a slow call does not hold the rate below the target.
const PUBLISHERS: usize = 16;
const ALL_SCOPES: [Scope; 3] = Scope::ALL;

/// The issuer whose events the S-stream measurement publishes. No digits at the end: the
/// simulator's transaction ids append `-0000000123`, and a digit run joined by a hyphen that
/// passes Luhn is what the ingest PAN guard must refuse.
fn issuer_of(streams: usize) -> String {
    format!("bench-{streams}-streams")
}

pub(crate) fn aggregator(i: usize) -> String {
    format!("agg-{i:04}")
}

/// A child process speaking the roles' protocol.
pub(crate) struct ChildProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl ChildProcess {
    pub(crate) fn spawn(args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a benchmark child process")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?).lines();
        Ok(Self { child, stdin, stdout })
    }

    pub(crate) fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("child exited")
    }

    /// The rest of the first line starting with `word`.
    pub(crate) async fn expect(&mut self, word: &str, within: Duration) -> anyhow::Result<String> {
        let read = async {
            while let Some(line) = self.stdout.next_line().await? {
                if let Some(rest) = line.strip_prefix(word) {
                    return Ok(rest.trim().to_owned());
                }
            }
            anyhow::bail!("child exited before saying {word:?}")
        };
        tokio::time::timeout(within, read).await.with_context(|| format!("child did not say {word:?} in time"))?
    }

    async fn say(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        Ok(self.stdin.flush().await?)
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.say("stop").await;
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// The `--secret` argument of a child process: base64url, in one argument (a base64url value may
/// begin with `-`, which would read as a flag).
fn secret_arg(secret: &[u8]) -> String {
    use base64::Engine as _;
    format!("--secret={}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret))
}

pub(crate) fn child_args(role: &str, bus: &BusConfig) -> Vec<String> {
    vec![role.into(), "--kafka".into(), bus.bootstrap_servers.clone(), "--prefix".into(), bus.topic_prefix.clone()]
}

/// The ingest measurement's records, encoded as ingest encodes them, written by a plain producer
/// ([`cardlink_bus::baseline::produce`]) with as many in flight as ingest's clients send, to a
/// set of topics of its own (so no cardlink reader sees them). Records per second.
async fn raw_producer(bus: &BusConfig, events: usize, in_flight: usize) -> anyhow::Result<f64> {
    let mut sim = Simulator::new(SimConfig::new("bench-ingest", 7, 10_000));
    let records = sim
        .take(events)
        .iter()
        .map(|e| Ok((e.partition_key(), cardlink_events::codec::encode(e)?.bytes)))
        .collect::<Result<Vec<_>, cardlink_events::CodecError>>()?;
    let scratch = BusConfig { topic_prefix: format!("{}baseline.", bus.topic_prefix), ..bus.clone() };
    cardlink_bus::provision(&scratch).await.context("topics for the plain producer")?;
    let started = Instant::now();
    let written = cardlink_bus::baseline::produce(&scratch, Topic::Transactions, &records, in_flight).await?;
    anyhow::ensure!(written == records.len() as u64, "the plain producer wrote {written} of {}", records.len());
    Ok(written as f64 / started.elapsed().as_secs_f64())
}

/// Ingest requests of `events` simulated events of `issuer` over `members` accounts.
fn requests(issuer: &str, members: usize, events: usize, batch: usize) -> Vec<v1::PublishRequest> {
    to_requests(issuer, &batches(issuer, members, events, batch))
}

/// `events` simulated events of `issuer` over `members` accounts, in batches of `batch`.
fn batches(issuer: &str, members: usize, events: usize, batch: usize) -> Vec<Vec<Event>> {
    let mut sim = Simulator::new(SimConfig::new(issuer, 7, members));
    let mut out = Vec::new();
    let mut left = events;
    while left > 0 {
        let n = left.min(batch);
        out.push(sim.take(n));
        left -= n;
    }
    out
}

fn to_requests(issuer: &str, batches: &[Vec<Event>]) -> Vec<v1::PublishRequest> {
    batches
        .iter()
        .map(|events| v1::PublishRequest {
            issuer_id: issuer.into(),
            batch_id: uuid::Uuid::new_v4().to_string(),
            records: events.iter().map(cardlink_api::convert::ingest_record).collect(),
            historical: false,
        })
        .collect()
}

/// When request `i` of `records` records is due, at `rate` records/s: when `i` such requests'
/// records were due.
fn due(i: usize, records: usize, rate: u32) -> Duration {
    Duration::from_secs_f64((i * records) as f64 / f64::from(rate.max(1)))
}

/// When each measured event was meant to be published — its request's slot in the schedule —
/// so latency is measured from that moment and not from when the load generator got round to
/// sending it (coordinated omission): a stalled publisher makes the events behind it late, and
/// that shows in the figures.
#[derive(Debug, Default)]
struct Schedule {
    /// Set when publishing starts.
    start: std::sync::OnceLock<Instant>,
    /// By the event id the aggregator receives (its pseudonym for the issuer's id).
    delivered: HashMap<String, Duration>,
    /// By the issuer's own event id (what a plain consumer of the bus reads).
    published: HashMap<uuid::Uuid, Duration>,
}

impl Schedule {
    /// The schedule of `batches` published at `rate`, each event received by the aggregator
    /// `aggregator_of` its account, with pseudonyms under `secret`.
    fn new(batches: &[Vec<Event>], rate: u32, aggregator_of: impl Fn(&str) -> Option<String>, secret: &[u8]) -> Self {
        let mut schedule = Self::default();
        for (i, events) in batches.iter().enumerate() {
            let due = due(i, events.len(), rate);
            for event in events {
                let id = event.event_id().0;
                schedule.published.insert(id, due);
                if let Some(aggregator) = aggregator_of(event.account_ref()) {
                    let pseudonym = cardlink_auth::Pseudonyms::new(secret, &aggregator).event(event.issuer_id(), &id);
                    schedule.delivered.insert(pseudonym, due);
                }
            }
        }
        schedule
    }

    /// How long after its scheduled time an event is received now, if it is one of the schedule's
    /// and publishing has started.
    fn late(&self, due: Option<&Duration>) -> Option<Duration> {
        Some((*self.start.get()? + *due?).elapsed())
    }
}

/// A latency histogram in microseconds, 1 µs to 10 minutes, three significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds that hdrhistogram accepts")
}

fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    histogram.saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1));
}

pub(crate) fn authorized<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

pub(crate) async fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?)
}

/// Sends `requests` from `clients` concurrent clients, each its own connection; at `rate`
/// records/s if given, else as fast as they are acknowledged. Returns (accepted, seconds).
async fn publish(
    ingest: &str,
    key: &str,
    requests: Vec<v1::PublishRequest>,
    clients: usize,
    rate: Option<u32>,
    schedule: Option<&Schedule>,
) -> anyhow::Result<(u64, f64)> {
    let accepted = Arc::new(AtomicU64::new(0));
    let queue = Arc::new(tokio::sync::Mutex::new(requests.into_iter().enumerate()));
    let mut connected = Vec::new();
    for _ in 0..clients {
        connected.push(
            IssuerIngestClient::new(channel(ingest).await?)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        );
    }
    // The schedule starts once every client is connected.
    let started = Instant::now();
    if let Some(schedule) = schedule {
        anyhow::ensure!(schedule.start.set(started).is_ok(), "a schedule is published once");
    }
    let mut tasks = Vec::new();
    for mut client in connected {
        let (queue, accepted, key) = (Arc::clone(&queue), Arc::clone(&accepted), key.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((i, request)) = queue.lock().await.next() else { return Ok::<_, anyhow::Error>(()) };
                if let Some(rate) = rate {
                    let due = due(i, request.records.len(), rate);
                    tokio::time::sleep_until(tokio::time::Instant::from_std(started + due)).await;
                }
                let response = client.publish(authorized(request, &key)?).await?.into_inner();
                accepted.fetch_add(u64::from(response.accepted), Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((accepted.load(Ordering::Relaxed), started.elapsed().as_secs_f64()))
}

/// What a stream's client measured: latency from each record's broker timestamp (µs, ±1 ms), and
/// from each scheduled event's intended publish time.
type Latencies = (Vec<u32>, Histogram<u64>);

/// One aggregator's stream as the benchmark's client: counts deliveries and their latency.
struct StreamClient {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<Latencies>>,
}

/// The shared counters and the schedule every stream client of a measurement reports against.
#[derive(Clone)]
struct Tally {
    received: Arc<AtomicU64>,
    resumes: Arc<AtomicU64>,
    since_ms: Arc<std::sync::atomic::AtomicI64>,
    schedule: Arc<Schedule>,
}

/// Deliveries of events published at or after `since_ms` (a shared, movable threshold) are
/// counted and timed; earlier ones (the warm-up's) are not; the schedule's events are also timed
/// from their intended publish time. A stream the service drops for falling behind (its queue
/// full while this machine's cores are busy) resumes from its last cursor, as an aggregator's
/// client does; `resumes` counts those.
async fn open_stream(addr: &str, token: &str, tally: Tally) -> anyhow::Result<StreamClient> {
    let Tally { received, resumes, since_ms, schedule } = tally;
    let mut client = SubscriptionClient::new(channel(addr).await?);
    let token = token.to_owned();
    let request = |cursor: Option<String>| v1::SubscribeRequest {
        kinds: vec![v1::EventKind::Transaction as i32, v1::EventKind::Statement as i32],
        start: cursor.map(v1::subscribe_request::Start::Cursor),
        ..Default::default()
    };
    let mut stream = client.subscribe(authorized(request(None), &token)?).await?.into_inner();
    // The first message says the stream is live.
    let first = stream.message().await?.context("stream ended at once")?;
    anyhow::ensure!(
        first.heartbeat.as_ref().is_some_and(|h| h.caught_up),
        "the first message is not the live heartbeat"
    );
    let mut cursor = Some(first.cursor).filter(|c| !c.is_empty());
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        // Publish→deliver, in microseconds (millisecond timestamps: ±1 ms).
        let mut latencies = Vec::new();
        let mut scheduled = histogram();
        loop {
            tokio::select! {
                _ = stopped.changed() => return Ok((latencies, scheduled)),
                message = stream.message() => {
                    let message = match message {
                        Ok(Some(message)) => message,
                        Ok(None) => return Ok((latencies, scheduled)),
                        Err(status) if status.code() == tonic::Code::ResourceExhausted && cursor.is_some() => {
                            resumes.fetch_add(1, Ordering::Relaxed);
                            stream = client.subscribe(authorized(request(cursor.clone()), &token)?).await?.into_inner();
                            continue;
                        }
                        Err(status) => return Err(status.into()),
                    };
                    if !message.cursor.is_empty() {
                        cursor = Some(message.cursor);
                    }
                    let now_ms = chrono::Utc::now().timestamp_millis();
                    let since = since_ms.load(Ordering::Relaxed);
                    for d in &message.deliveries {
                        let id = match &d.event {
                            Some(v1::delivery::Event::Transaction(t)) => Some(&t.event_id),
                            Some(v1::delivery::Event::Statement(s)) => Some(&s.event_id),
                            _ => None,
                        };
                        if let Some(late) = schedule.late(id.and_then(|id| schedule.delivered.get(id))) {
                            record(&mut scheduled, late);
                        }
                        let published_ms = d.published_at.as_ref().map_or(i64::MAX, |at| at.seconds * 1000 + i64::from(at.nanos) / 1_000_000);
                        if published_ms < since {
                            continue;
                        }
                        if published_ms != i64::MAX {
                            latencies.push(u32::try_from((now_ms - published_ms).max(0) * 1000).unwrap_or(u32::MAX));
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    Ok(StreamClient { stop, task })
}

/// What the plain consumer measured: from each scheduled event's intended publish time to its
/// receipt, and from each record's broker timestamp (the bus's own hop).
#[derive(Debug)]
struct BusLatency {
    scheduled: Histogram<u64>,
    hop: Histogram<u64>,
}

impl Default for BusLatency {
    fn default() -> Self {
        Self { scheduled: histogram(), hop: histogram() }
    }
}

impl BusLatency {
    fn seen(&mut self, schedule: &Schedule, payload: &[u8], broker_ms: Option<i64>) {
        let Ok(event) = cardlink_events::decode(payload) else { return };
        let Some(late) = schedule.late(schedule.published.get(&event.event_id().0)) else { return };
        record(&mut self.scheduled, late);
        if let Some(ms) = broker_ms {
            let hop_ms = (chrono::Utc::now().timestamp_millis() - ms).max(0);
            record(&mut self.hop, Duration::from_millis(u64::try_from(hop_ms).unwrap_or(0)));
        }
    }
}

/// End offsets of the event topics now.
async fn ends(consumer: &Consumer) -> anyhow::Result<HashMap<(Topic, i32), i64>> {
    let mut out = HashMap::new();
    for topic in [Topic::Transactions, Topic::Statements] {
        for p in 0..consumer.partition_count(topic).await? {
            out.insert((topic, p), consumer.watermarks(topic, p).await?.1);
        }
    }
    Ok(out)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

/// Registered participants and their credentials.
struct World {
    aggregator_tokens: Vec<String>,
    issuer_keys: Vec<(String, String)>,
}

/// The benchmark's operator, bootstrapped on `registry`.
pub(crate) async fn operator(registry: &cardlink_registry::service::Registry) -> anyhow::Result<Caller> {
    let operator = registry.bootstrap_operator("bench-operator").await?;
    Ok(Caller { participant_id: "bench-operator".into(), role: Role::Operator, credential_id: operator.credential_id })
}

/// Registers aggregators `agg-0000` … `agg-<n-1>`; their tokens.
pub(crate) async fn register_aggregators(
    registry: &cardlink_registry::service::Registry,
    op: &Caller,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let registrations = futures::stream::iter(0..n)
        .map(|i| {
            let op = op.clone();
            async move {
                let entity = AggregatorEntity {
                    aggregator_id: aggregator(i),
                    name: format!("ベンチ事業者 {i}"),
                    registration_number: format!("関東財務局長（電代）第{i:04}号"),
                    contact: format!("ops@agg-{i}.example"),
                    status: AggregatorStatus::Active,
                    redirect_uris: Vec::new(),
                };
                registry.register_aggregator(&op, entity).await.map(|(_, c)| c.token)
            }
        })
        .buffered(32)
        .collect::<Vec<_>>()
        .await;
    Ok(registrations.into_iter().collect::<Result<Vec<_>, _>>()?)
}

async fn build_world(registry: &cardlink_registry::service::Registry, plan: &Plan) -> anyhow::Result<World> {
    let max = plan.streams.iter().copied().max().unwrap_or(1);
    let op = operator(registry).await?;
    let aggregator_tokens = register_aggregators(registry, &op, max).await?;
    let mut issuer_keys = Vec::new();
    let issuers: Vec<(String, usize)> = std::iter::once(("bench-ingest".to_owned(), 0))
        .chain(plan.streams.iter().map(|s| (issuer_of(*s), *s)))
        .collect();
    for (issuer, streams) in issuers {
        let entity = IssuerEntity {
            issuer_id: issuer.clone(),
            name: format!("{issuer} カード"),
            annual_volume_jpy: 1_000_000_000_000,
            login: None,
        };
        let (_, credential) = registry.register_issuer(&op, entity).await?;
        let caller =
            Caller { participant_id: issuer.clone(), role: Role::Issuer, credential_id: credential.credential_id };
        futures::stream::iter(0..streams)
            .map(|i| {
                let (caller, issuer) = (caller.clone(), issuer.clone());
                async move { registry.enable_connection(&caller, &issuer, &aggregator(i), ALL_SCOPES.to_vec()).await }
            })
            .buffered(32)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        issuer_keys.push((issuer.clone(), format!("bench-key-{issuer}-{}", uuid::Uuid::new_v4().simple())));
    }
    Ok(World { aggregator_tokens, issuer_keys })
}

/// `plan.consents` active consents of the S-stream issuer's accounts, spread over S aggregators.
async fn write_consents(bus: &BusConfig, plan: &Plan, streams: usize) -> anyhow::Result<()> {
    let producer = cardlink_bus::Producer::new(bus)?;
    let issuer = issuer_of(streams);
    let granted = chrono::Utc::now() - chrono::TimeDelta::days(400);
    let expires = chrono::Utc::now() + chrono::TimeDelta::days(30);
    let sends = (0..plan.consents).map(|i| {
        let account = format!("{issuer}-acct-{i:05}");
        let consent = cardlink_events::samples::active_consent(
            &format!("cns-{issuer}-{i:05}"),
            &issuer,
            &aggregator(i % streams),
            &[&account],
            &ALL_SCOPES,
            granted,
            expires,
        );
        let producer = &producer;
        async move {
            producer
                .publish_record(
                    cardlink_events::RecordType::ConsentEvent,
                    &consent.consent_id,
                    &consent.event_id.to_string(),
                    &consent,
                )
                .await
        }
    });
    let results: Vec<_> = futures::stream::iter(sends).buffer_unordered(256).collect().await;
    results.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(())
}

/// What every driven benchmark starts from: the broker (embedded in this process unless a
/// cluster is named), the benchmark's topics, and the registry with its token signer.
pub(crate) struct Ground {
    #[cfg(feature = "embedded-broker")]
    _broker: Option<cardlink_bus::embedded::EmbeddedBroker>,
    pub bus: BusConfig,
    pub signer: Arc<cardlink_auth::TokenSigner>,
    pub registry: cardlink_registry::server::RunningRegistry,
}

impl Ground {
    pub(crate) async fn lay(kafka: Option<&str>) -> anyhow::Result<Self> {
        #[cfg(feature = "embedded-broker")]
        let (broker, kafka) = match kafka {
            Some(k) => (None, k.to_owned()),
            None => {
                let broker = cardlink_bus::embedded::EmbeddedBroker::start_ephemeral().await?;
                let bootstrap = broker.bootstrap_servers();
                (Some(broker), bootstrap)
            }
        };
        #[cfg(not(feature = "embedded-broker"))]
        let kafka = kafka.context("built without the embedded broker: pass --kafka")?.to_owned();
        let prefix = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let bus = crate::roles::bus(&kafka, &prefix);
        cardlink_bus::provision(&bus).await.context("provisioning the benchmark's topics")?;
        eprintln!("bench: broker {kafka}, topics {prefix}.*");
        let signer = Arc::new(cardlink_auth::TokenSigner::generate("bench"));
        let registry_config =
            cardlink_registry::server::RegistryConfig { listen: ([127, 0, 0, 1], 0).into(), ..Default::default() };
        let registry = cardlink_registry::server::start(&bus, registry_config, Arc::clone(&signer)).await?;
        Ok(Self {
            #[cfg(feature = "embedded-broker")]
            _broker: broker,
            bus,
            signer,
            registry,
        })
    }

    /// A subscription service in a child process, trusting this registry's tokens and pseudonymising
    /// with `secret`; and its address.
    pub(crate) async fn subscription(&self, secret: &[u8]) -> anyhow::Result<(ChildProcess, String)> {
        let mut args = child_args("serve-subscription", &self.bus);
        args.extend(["--trusted-key".into(), self.signer.public_key().to_config(), secret_arg(secret)]);
        let mut child = ChildProcess::spawn(&args)?;
        let addr = child.expect("ready", Duration::from_secs(300)).await.context("the subscription service")?;
        Ok((child, addr))
    }
}

pub async fn run(plan: Plan) -> anyhow::Result<Report> {
    let ground = Ground::lay(plan.kafka.as_deref()).await?;
    let (bus, registry) = (&ground.bus, &ground.registry);
    let world = build_world(registry.registry(), &plan).await?;
    eprintln!("bench: registered {} aggregators and their connections", world.aggregator_tokens.len());

    let keys: Vec<String> = world.issuer_keys.iter().map(|(i, k)| format!("{i}={k}")).collect();
    let mut ingest_args = child_args("serve-ingest", bus);
    for k in &keys {
        ingest_args.extend(["--issuer-key".into(), k.clone()]);
    }
    let mut ingest = ChildProcess::spawn(&ingest_args)?;
    let ingest_addr = ingest.expect("ready", Duration::from_secs(300)).await.context("the ingest service")?;
    let secret = rand::random::<[u8; 32]>().to_vec();
    let (subscription, sub_addr) = ground.subscription(&secret).await?;
    let key_of =
        |issuer: &str| world.issuer_keys.iter().find(|(i, _)| i == issuer).map(|(_, k)| k.clone()).unwrap_or_default();

    let mut report = Report { plan: format!("{plan:?}"), ..Report::default() };

    // Ingest, flat out.
    let requests_in = requests("bench-ingest", 10_000, plan.ingest_events, BATCH);
    let before = procstat::sample(ingest.pid()?)?;
    let (accepted, seconds) =
        publish(&ingest_addr, &key_of("bench-ingest"), requests_in, plan.ingest_clients, None, None).await?;
    let after = procstat::sample(ingest.pid()?)?;
    let cpu = (after.cpu - before.cpu).as_secs_f64();
    report.ingest = Some(Ingest {
        records: accepted,
        seconds,
        records_per_second: accepted as f64 / seconds,
        cpu_seconds: cpu,
        cpu_us_per_record: before.cpu_us_per(&after, accepted),
        clients: plan.ingest_clients,
        batch: BATCH,
        raw_producer_records_per_second: None,
    });
    eprintln!("bench: ingest {accepted} records in {seconds:.1} s = {:.0}/s", accepted as f64 / seconds);
    let raw = raw_producer(bus, plan.ingest_events, plan.ingest_clients * BATCH).await?;
    eprintln!("bench: plain producer, the same records: {raw:.0}/s");
    if let Some(i) = report.ingest.as_mut() {
        i.raw_producer_records_per_second = Some(raw);
    }

    let probe = Consumer::new(bus, "bench-probe")?;
    for (stage, &streams) in plan.streams.iter().enumerate() {
        write_consents(bus, &plan, streams).await?;
        let issuer = issuer_of(streams);
        let warmup = (plan.rate as usize).min(5_000);
        let mut all = batches(&issuer, plan.consents, warmup + plan.events, 100);
        let measured_batches = all.split_off(warmup / 100);
        let (reqs, measured) = (to_requests(&issuer, &all), to_requests(&issuer, &measured_batches));
        // Each account's consent is with one aggregator (`write_consents`).
        let aggregator_of = |account: &str| {
            let n: usize = account.rsplit_once("-acct-")?.1.parse().ok()?;
            Some(aggregator(n % streams))
        };
        let schedule = Arc::new(Schedule::new(&measured_batches, plan.rate, aggregator_of, &secret));
        // Streams connect; idle memory first.
        let pid = subscription.pid()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let empty = procstat::sample(pid)?;
        let tally = Tally {
            received: Arc::new(AtomicU64::new(0)),
            resumes: Arc::new(AtomicU64::new(0)),
            since_ms: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            schedule: Arc::clone(&schedule),
        };
        let Tally { received, resumes, since_ms, .. } = tally.clone();
        let clients = futures::stream::iter(0..streams)
            .map(|i| open_stream(&sub_addr, &world.aggregator_tokens[i], tally.clone()))
            .buffered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = procstat::sample(pid)?;
        // Warm up: the consent view has the new consents once these arrive.
        let (warmup, _) = publish(&ingest_addr, &key_of(&issuer), reqs, PUBLISHERS, Some(plan.rate), None).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while received.load(Ordering::Relaxed) < warmup && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = received.load(Ordering::Relaxed);
        if got < warmup {
            let ended: Vec<String> = futures::future::join_all(
                clients
                    .into_iter()
                    .filter(|c| c.task.is_finished())
                    .map(|c| async move { format!("{:?}", c.task.await) }),
            )
            .await;
            anyhow::bail!("{got} of {warmup} warm-up events delivered; streams that ended: {ended:?}");
        }
        // Stragglers of the warm-up must not count toward the measurement.
        let mut last = received.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = received.load(Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
        }
        // Reported ends are valid starting points for the baseline; any record past them that
        // belongs to the warm-up is older than `since_ms` and skipped.
        let start_offsets = ends(&probe).await?;
        // From here on only the measured events count (their broker timestamps are later).
        let since = chrono::Utc::now().timestamp_millis();
        since_ms.store(since, Ordering::Relaxed);
        received.store(0, Ordering::Relaxed);
        // The bus's own share: a plain consumer reading the same records as they are written.
        let bus_latency = Arc::new(std::sync::Mutex::new(BusLatency::default()));
        let tail = {
            let (schedule, bus_latency) = (Arc::clone(&schedule), Arc::clone(&bus_latency));
            let topics = [Topic::Transactions, Topic::Statements];
            cardlink_bus::baseline::tail(bus, &topics, move |payload, broker_ms| {
                bus_latency
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .seen(&schedule, payload, broker_ms);
            })
            .await?
        };
        let cpu0 = procstat::sample(pid)?;
        let (published, seconds) =
            publish(&ingest_addr, &key_of(&issuer), measured, PUBLISHERS, Some(plan.rate), Some(&schedule)).await?;
        let active = procstat::sample(pid)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while received.load(Ordering::Relaxed) < published && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let delivered = received.load(Ordering::Relaxed);
        let cpu1 = procstat::sample(pid)?;
        let drained = seconds.max(0.001);
        let deadline = Instant::now() + Duration::from_secs(30);
        while bus_latency.lock().unwrap_or_else(std::sync::PoisonError::into_inner).scheduled.len() < published
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let bus_read = tail.finish().await?;
        let mut latencies = Vec::new();
        let mut scheduled = histogram();
        for c in clients {
            c.stop.send_replace(true);
            let (broker, from_schedule) = c.task.await??;
            latencies.extend(broker);
            scheduled.add(&from_schedule).context("merging latency histograms")?;
        }
        latencies.sort_unstable();
        let bus_latency = std::mem::take(&mut *bus_latency.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        anyhow::ensure!(
            bus_latency.scheduled.len() == published,
            "the plain consumer read {} of the {published} scheduled events ({bus_read} records)",
            bus_latency.scheduled.len()
        );
        let cpu = (cpu1.cpu - cpu0.cpu).as_secs_f64();
        let mut row = Fanout {
            streams,
            consents: plan.consents,
            published,
            delivered,
            publish_rate: published as f64 / seconds,
            seconds: drained,
            cpu_seconds: cpu,
            cpu_us_per_delivery: cpu0.cpu_us_per(&cpu1, delivered),
            idle_kib_per_stream: (idle.rss as f64 - empty.rss as f64) / 1024.0 / streams as f64,
            active_kib_per_stream: (active.rss.max(cpu1.rss) as f64 - empty.rss as f64) / 1024.0 / streams as f64,
            p50_ms: percentile(&latencies, 0.50),
            p99_ms: percentile(&latencies, 0.99),
            max_ms: latencies.last().map_or(0.0, |l| f64::from(*l) / 1000.0),
            resumes: resumes.load(Ordering::Relaxed),
            scheduled: Some(Latency::of(&scheduled)),
            bus_scheduled: Some(Latency::of(&bus_latency.scheduled)),
            bus_hop: Some(Latency::of(&bus_latency.hop)),
            ..Fanout::default()
        };
        eprintln!(
            "bench: {streams} streams: {delivered}/{published} delivered, {:.1} µs CPU each, p99 {:.1} ms (from the schedule {:.1} ms; \
             the bus alone {:.1} ms), idle {:.1} KiB/stream, {} resumed",
            row.cpu_us_per_delivery,
            row.p99_ms,
            row.scheduled.map_or(0.0, |l| l.p99_ms),
            row.bus_scheduled.map_or(0.0, |l| l.p99_ms),
            row.idle_kib_per_stream,
            row.resumes
        );
        tokio::time::sleep(Duration::from_secs(2)).await;

        if plan.baseline {
            let mut args = child_args("baseline", bus);
            args.extend([secret_arg(&secret), "--aggregators".into(), streams.to_string()]);
            args.extend(["--since-ms".into(), since.to_string(), "--expect".into(), published.to_string()]);
            args.extend(["--consents".into(), (plan.consents * (stage + 1)).to_string()]);
            for (&(topic, partition), &from) in &start_offsets {
                args.extend(["--start".into(), Start { topic, partition, from }.to_arg()]);
            }
            let mut baseline = ChildProcess::spawn(&args)?;
            let consumers_bytes: f64 = baseline.expect("ready", Duration::from_secs(600)).await?.parse().unwrap_or(0.0);
            let b0 = procstat::sample(baseline.pid()?)?;
            baseline.say("go").await?;
            let done: serde_json::Value =
                serde_json::from_str(&baseline.expect("done", Duration::from_secs(3_600)).await?)?;
            let b1 = procstat::sample(baseline.pid()?)?;
            let b_cpu = (b1.cpu - b0.cpu).as_secs_f64();
            let kept = done["kept"].as_u64().unwrap_or(0);
            let read = done["read"].as_u64().unwrap_or(0);
            row.baseline_cpu_seconds = Some(b_cpu);
            row.baseline_cpu_us_per_delivery = Some(b0.cpu_us_per(&b1, kept));
            row.baseline_kib_per_consumer = Some(consumers_bytes / 1024.0 / streams as f64);
            row.baseline_delivered = Some(kept);
            row.baseline_seconds = done["seconds"].as_f64();
            eprintln!(
                "bench: baseline {streams} consumers: {read} read, {kept} kept, {b_cpu:.1} s CPU ({:.1}× cardlink)",
                b_cpu / cpu.max(1e-9)
            );
            baseline.stop().await;
        }
        report.fanout.push(row);
    }
    subscription.stop().await;
    ingest.stop().await;
    ground.registry.shutdown().await?;
    Ok(report)
}
