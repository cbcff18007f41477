//! The ingest service through its real gRPC server, against a real Kafka-protocol broker.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cardlink_api::status::reason;
use cardlink_api::{convert, v1};
use cardlink_bus::Topic;
use cardlink_events::{ActorType, AuditEvent, AuditOutcome, Event, RecordType, decode, decode_record, samples};
use cardlink_ingest::server::IngestConfig;
use cardlink_testkit::{TEST_ISSUERS, TestBus, authorized, ingest_client};
use tonic::Code;

const KEY_A: &str = TEST_ISSUERS[0].1;
const WITHIN: Duration = Duration::from_secs(30);

fn tx(n: u32) -> Event {
    Event::Transaction(samples::transaction("iss-a", "acct-1", n))
}

fn request(events: &[Event]) -> v1::PublishRequest {
    v1::PublishRequest {
        issuer_id: "iss-a".into(),
        batch_id: "batch-1".into(),
        records: events.iter().map(convert::ingest_record).collect(),
        historical: false,
    }
}

fn outcomes(response: &v1::PublishResponse) -> Vec<(v1::RecordOutcome, String, String)> {
    response
        .results
        .iter()
        .map(|r| (v1::RecordOutcome::try_from(r.outcome).expect("known outcome"), r.reason.clone(), r.field.clone()))
        .collect()
}

#[tokio::test]
async fn mixed_batch_gets_exact_per_record_results_and_only_good_records_reach_the_bus() {
    let bus = TestBus::start().await.unwrap();
    let ingest = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let mut client = ingest_client(&ingest).await.unwrap();

    // Publish tx 1 first so that it is a duplicate in the mixed batch.
    client.publish(authorized(request(&[tx(1)]), KEY_A)).await.unwrap();

    let mut req = request(&[tx(2), tx(1), tx(3), tx(4), tx(5)]);
    // Record 2: a synthetic test PAN in the merchant name.
    if let Some(v1::ingest_record::Event::Transaction(t)) = req.records[2].event.as_mut() {
        t.merchant.as_mut().unwrap().name_as_printed = "AMZN 4111-1111-1111-1111".into();
    }
    // Record 3: malformed currency.
    if let Some(v1::ingest_record::Event::Transaction(t)) = req.records[3].event.as_mut() {
        t.amount.as_mut().unwrap().currency = "YEN".into();
    }
    let response = client.publish(authorized(req, KEY_A)).await.unwrap().into_inner();

    use v1::RecordOutcome::*;
    assert_eq!(
        outcomes(&response),
        vec![
            (Accepted, "".into(), "".into()),
            (Duplicate, "".into(), "".into()),
            (Rejected, "PAN_DETECTED".into(), "merchant.name_as_printed".into()),
            (Rejected, "INVALID_CURRENCY".into(), "amount.currency".into()),
            (Accepted, "".into(), "".into()),
        ]
    );
    assert_eq!((response.accepted, response.duplicates, response.rejected), (2, 1, 2));
    assert!(response.results.iter().all(|r| !r.message.contains("4111")));

    // Exactly tx 1, 2 and 5 are on the bus, once each, and nothing else arrives.
    let records = bus.read(Topic::Transactions, 3, WITHIN).await.unwrap();
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| match decode(&r.payload).unwrap() {
            Event::Transaction(t) => t.issuer_transaction_id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["tx-1", "tx-2", "tx-5"]);
    let more = bus.read(Topic::Transactions, 4, Duration::from_secs(2)).await;
    assert!(more.is_err(), "a fourth record reached the bus");
    for r in &records {
        assert!(!String::from_utf8_lossy(&r.payload).contains("4111"));
    }
}

/// A historical load (an issuer's past months) is written like any record, marked so that the
/// hub and catch-up pass over it and the history indexer keeps it.
#[tokio::test]
async fn a_historical_load_is_written_marked_historical() {
    let bus = TestBus::start().await.unwrap();
    let ingest = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let mut client = ingest_client(&ingest).await.unwrap();
    let past = v1::PublishRequest { historical: true, ..request(&[tx(1)]) };
    let response = client.publish(authorized(past, KEY_A)).await.unwrap().into_inner();
    assert_eq!(response.accepted, 1);
    client.publish(authorized(request(&[tx(2)]), KEY_A)).await.unwrap();
    let records = bus.read(Topic::Transactions, 2, WITHIN).await.unwrap();
    let marked: Vec<(Event, bool)> =
        records.iter().map(|r| (decode(&r.payload).unwrap(), r.headers.historical)).collect();
    assert_eq!(marked, [(tx(1), true), (tx(2), false)]);
}

#[tokio::test]
async fn another_issuers_id_is_permission_denied_and_audited() {
    let bus = TestBus::start().await.unwrap();
    let ingest = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let mut client = ingest_client(&ingest).await.unwrap();

    // iss-b's key, publishing as iss-a.
    let err = client.publish(authorized(request(&[tx(1)]), TEST_ISSUERS[1].1)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(reason(&err).as_deref(), Some("ISSUER_MISMATCH"));

    let audit = bus.read(Topic::Audit, 1, WITHIN).await.unwrap().remove(0);
    let audit: AuditEvent = decode_record(&audit.payload, RecordType::AuditEvent).unwrap();
    assert_eq!((audit.actor_type, audit.actor_id.as_str()), (ActorType::Issuer, "iss-b"));
    assert_eq!((audit.action.as_str(), audit.resource.as_str()), ("ingest.publish", "issuer/iss-a"));
    assert_eq!(audit.outcome, AuditOutcome::Denied);
    assert!(bus.read(Topic::Transactions, 1, Duration::from_secs(2)).await.is_err(), "nothing is published");
}

#[tokio::test]
async fn a_record_naming_another_issuer_is_rejected_alone() {
    let bus = TestBus::start().await.unwrap();
    let ingest = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let mut client = ingest_client(&ingest).await.unwrap();
    let foreign = Event::Transaction(samples::transaction("iss-b", "acct-9", 1));
    let response = client.publish(authorized(request(&[tx(1), foreign]), KEY_A)).await.unwrap().into_inner();
    assert_eq!(outcomes(&response)[1], (v1::RecordOutcome::Rejected, "ISSUER_MISMATCH".into(), "issuer_id".into()));
    assert_eq!(response.accepted, 1);
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_unauthenticated() {
    let bus = TestBus::start().await.unwrap();
    let ingest = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let mut client = ingest_client(&ingest).await.unwrap();
    let err = client.publish(authorized(request(&[tx(1)]), "not-a-key-at-all-000000")).await.unwrap_err();
    // Was CREDENTIAL_UNKNOWN before the unified reasons (CHANGELOG.md).
    assert_eq!((err.code(), reason(&err).as_deref()), (Code::Unauthenticated, Some("CREDENTIAL_INVALID")));
    let err = client.publish(tonic::Request::new(request(&[tx(1)]))).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_deref()), (Code::Unauthenticated, Some("CREDENTIAL_MISSING")));
}

#[tokio::test]
async fn a_retried_batch_after_a_restart_adds_nothing_to_the_bus() {
    let bus = TestBus::start().await.unwrap();
    let events: Vec<Event> = (1..=20).map(tx).collect();

    let first = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let mut client = ingest_client(&first).await.unwrap();
    let response = client.publish(authorized(request(&events), KEY_A)).await.unwrap().into_inner();
    assert_eq!(response.accepted, 20);
    first.shutdown().await.unwrap();

    // A new process rebuilds its idempotency index from the bus before it reports ready.
    let second = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let mut client = ingest_client(&second).await.unwrap();
    let response = client.publish(authorized(request(&events), KEY_A)).await.unwrap().into_inner();
    assert_eq!((response.accepted, response.duplicates), (0, 20));

    assert_eq!(bus.read(Topic::Transactions, 20, WITHIN).await.unwrap().len(), 20);
    assert!(bus.read(Topic::Transactions, 21, Duration::from_secs(2)).await.is_err(), "a retry reached the bus twice");
}

#[tokio::test]
async fn a_replica_learns_what_another_published() {
    let bus = TestBus::start().await.unwrap();
    let a = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let b = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let mut client_a = ingest_client(&a).await.unwrap();
    let mut client_b = ingest_client(&b).await.unwrap();
    client_a.publish(authorized(request(&[tx(1)]), KEY_A)).await.unwrap();
    // The follower of replica b tails the bus; give it a moment.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let response = client_b.publish(authorized(request(&[tx(1)]), KEY_A)).await.unwrap().into_inner();
        if response.duplicates == 1 {
            break;
        }
        // Accepted would mean a second copy on the bus: that must not happen once b has caught up,
        // but may right after a's publish. Either way, stop at the first duplicate.
        assert!(tokio::time::Instant::now() < deadline, "replica b never learned of a's publish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn limits_give_clear_errors() {
    let bus = TestBus::start().await.unwrap();
    let config = IngestConfig { max_records_per_call: 3, max_request_bytes: 64 * 1024, ..IngestConfig::default() };
    let ingest = bus.start_ingest(config).await.unwrap();
    let mut client = ingest_client(&ingest).await.unwrap();

    let events: Vec<Event> = (1..=4).map(tx).collect();
    let err = client.publish(authorized(request(&events), KEY_A)).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_deref()), (Code::InvalidArgument, Some("TOO_MANY_RECORDS")));

    let mut big = request(&[tx(1)]);
    if let Some(v1::ingest_record::Event::Transaction(t)) = big.records[0].event.as_mut() {
        t.merchant.as_mut().unwrap().normalized_name = "x".repeat(100 * 1024);
    }
    let err = client.publish(authorized(big.clone(), KEY_A)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");

    // The credential is checked before the body is read: an unknown caller's oversized request
    // is refused as unauthenticated, not read and measured.
    let err = client.publish(authorized(big, "not-a-key-at-all-000000")).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_deref()), (Code::Unauthenticated, Some("CREDENTIAL_INVALID")));
}

/// A call whose body announces a 16 MiB message and then sends no more, as a slow or hostile
/// client's would: the response, if any, arrives while the body is still incomplete.
async fn call_with_endless_body(
    ingest: &cardlink_ingest::server::RunningIngest,
    key: &str,
) -> Option<http::Response<tonic::body::Body>> {
    use futures::StreamExt as _;
    use http_body_util::StreamBody;
    let mut channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", ingest.addr())).unwrap().connect().await.unwrap();
    // A gRPC frame header (uncompressed, 16 MiB long) and the first kilobyte of it.
    let mut first = vec![0u8];
    first.extend_from_slice(&(16u32 * 1024 * 1024).to_be_bytes());
    first.extend(std::iter::repeat_n(0x0a, 1024));
    let frames =
        futures::stream::iter([Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from(first)))])
            .chain(futures::stream::pending());
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/cardlink.v1.IssuerIngest/Publish", ingest.addr()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {key}"))
        .body(tonic::body::Body::new(StreamBody::new(frames)))
        .unwrap();
    std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut channel, cx)).await.unwrap();
    let call = tower_service::Service::call(&mut channel, request);
    tokio::time::timeout(Duration::from_secs(5), call).await.ok().map(Result::unwrap)
}

#[tokio::test]
async fn an_unknown_caller_is_refused_before_its_request_body_is_read() {
    let bus = TestBus::start().await.unwrap();
    let ingest = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let response = call_with_endless_body(&ingest, "not-a-key-at-all-000000")
        .await
        .expect("refused before the 16 MiB body arrived, not after");
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("grpc-status").as_deref(), Some("16"), "UNAUTHENTICATED: {:?}", response.headers());
    assert_eq!(header("cardlink-reason").as_deref(), Some("CREDENTIAL_INVALID"));
    // A known caller's call waits for its body, as it should.
    assert!(call_with_endless_body(&ingest, KEY_A).await.is_none_or(|r| r.headers().get("grpc-status").is_none()));
}

#[tokio::test]
async fn one_client_address_holds_only_so_many_connections() {
    let bus = TestBus::start().await.unwrap();
    let admission = cardlink_serving::admission::Admission::new(100, 2);
    let config = IngestConfig { admission: admission.clone(), ..IngestConfig::default() };
    let ingest = bus.start_ingest(config).await.unwrap();
    let mut first = ingest_client(&ingest).await.unwrap();
    let mut second = ingest_client(&ingest).await.unwrap();
    first.publish(authorized(request(&[tx(1)]), KEY_A)).await.unwrap();
    second.publish(authorized(request(&[tx(2)]), KEY_A)).await.unwrap();
    // A third connection from the same address is closed at once.
    let third = ingest_client(&ingest).await;
    let refused = match third {
        Err(_) => true,
        // The connection ends before an answer (tonic reports UNAVAILABLE or UNKNOWN).
        Ok(mut c) => c.publish(authorized(request(&[tx(3)]), KEY_A)).await.is_err(),
    };
    assert!(refused, "a third connection from one address was served");
    assert!(admission.refused() >= 1 && admission.open() == 2);
    // The connections already open are unaffected; closing one makes room.
    first.publish(authorized(request(&[tx(4)]), KEY_A)).await.unwrap();
    drop(second);
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        if let Ok(mut c) = ingest_client(&ingest).await
            && c.publish(authorized(request(&[tx(5)]), KEY_A)).await.is_ok()
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "a closed connection never gave its place back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn publish_stream_answers_each_batch_in_order() {
    let bus = TestBus::start().await.unwrap();
    let ingest = bus.start_ingest(IngestConfig::default()).await.unwrap();
    let mut client = ingest_client(&ingest).await.unwrap();
    let batches: Vec<v1::PublishRequest> = (0..3)
        .map(|b| {
            let events: Vec<Event> = (0..10).map(|n| tx(b * 10 + n)).collect();
            v1::PublishRequest { batch_id: format!("b{b}"), ..request(&events) }
        })
        .collect();
    let stream = tokio_stream::iter(batches);
    let mut responses = client.publish_stream(authorized(stream, KEY_A)).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(response) = responses.message().await.unwrap() {
        assert_eq!(response.accepted, 10);
        ids.push(response.batch_id);
    }
    assert_eq!(ids, ["b0", "b1", "b2"]);
    let records = bus.read(Topic::Transactions, 30, WITHIN).await.unwrap();
    let order: Vec<String> = records
        .iter()
        .map(|r| match decode(&r.payload).unwrap() {
            Event::Transaction(t) => t.issuer_transaction_id,
            _ => unreachable!(),
        })
        .collect();
    let expected: Vec<String> = (0..30).map(|n| format!("tx-{n}")).collect();
    assert_eq!(order, expected, "one account's records keep the stream's order");
}

#[tokio::test]
async fn registry_credentials_work_until_revoked_and_only_for_issuers() {
    let bus = TestBus::start().await.unwrap();
    let (registry, operator) = bus.start_registry().await.unwrap();
    let mut r = cardlink_testkit::registry_client(&registry).await.unwrap();
    let issuer = cardlink_testkit::register_issuer(&mut r, &operator, "iss-a", 1).await.unwrap();
    let aggregator = cardlink_testkit::register_aggregator(&mut r, &operator, "agg-x").await.unwrap();

    let config = IngestConfig { trusted_keys: vec![registry.public_key().clone()], ..IngestConfig::default() };
    let ingest = bus.start_ingest(config).await.unwrap();
    let mut client = ingest_client(&ingest).await.unwrap();

    let response = client.publish(authorized(request(&[tx(1)]), &issuer.token)).await.unwrap().into_inner();
    assert_eq!(response.accepted, 1);

    let e = client.publish(authorized(request(&[tx(2)]), &aggregator.token)).await.unwrap_err();
    // Was UNAUTHENTICATED / NOT_AN_ISSUER before the unified reasons (CHANGELOG.md).
    assert_eq!((e.code(), reason(&e).as_deref()), (Code::PermissionDenied, Some("ISSUERS_ONLY")));

    r.revoke_credential(authorized(v1::RevokeCredentialRequest { credential_id: issuer.credential_id }, &operator))
        .await
        .unwrap();
    // Ingest follows the registry topic: the revocation takes effect once its view has read it
    // (milliseconds), and from then on every call is refused.
    let deadline = tokio::time::Instant::now() + WITHIN;
    let e = loop {
        match client.publish(authorized(request(&[tx(3)]), &issuer.token)).await {
            Err(e) => break e,
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "the revocation never took effect"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Was CREDENTIAL_UNKNOWN before the unified reasons (CHANGELOG.md).
    assert_eq!((e.code(), reason(&e).as_deref()), (Code::Unauthenticated, Some("CREDENTIAL_REVOKED")));
    let e = client.publish(authorized(request(&[tx(4)]), &issuer.token)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "refused for good");
}

#[tokio::test]
async fn a_call_cancelled_while_kafka_is_down_leaves_no_claim_in_flight() {
    let bus = TestBus::start().await.unwrap();
    // A short delivery timeout, so sends to a broker that is gone fail within the test.
    let bootstrap =
        cardlink_authn::BootstrapIssuerKeys::new(TEST_ISSUERS.iter().map(|(id, key)| format!("{id}={key}"))).unwrap();
    // librdkafka fails a request already on a dead connection only after request.timeout.ms.
    let mut librdkafka = bus.config().librdkafka.clone();
    librdkafka.insert("request.timeout.ms".into(), "1000".into());
    librdkafka.insert("socket.timeout.ms".into(), "1000".into());
    let bus_config =
        cardlink_bus::BusConfig { delivery_timeout: Duration::from_secs(2), librdkafka, ..bus.config().clone() };
    let config = IngestConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        bootstrap_issuer_keys: Some(std::sync::Arc::new(bootstrap)),
        ..IngestConfig::default()
    };
    let mut ingest = cardlink_ingest::server::start(&bus_config, config).await.unwrap();
    tokio::time::timeout(WITHIN, ingest.ready()).await.unwrap();
    let mut client = ingest_client(&ingest).await.unwrap();
    client.publish(authorized(request(&[tx(1)]), KEY_A)).await.unwrap();

    // Kafka goes away; the issuer's call is cancelled before Kafka could answer.
    bus.stop_broker().await;
    let cancelled =
        tokio::time::timeout(Duration::from_millis(300), client.publish(authorized(request(&[tx(2)]), KEY_A)));
    assert!(cancelled.await.is_err(), "the call should still have been waiting for Kafka");

    // Once the send has failed (Kafka's delivery timeout), a retry of the same event is answered
    // by Kafka's state (BUS_UNAVAILABLE), not refused as IN_FLIGHT by a claim nobody will ever
    // settle. Retried as an issuer would, until the answer is not IN_FLIGHT.
    let deadline = tokio::time::Instant::now() + WITHIN;
    let reason = loop {
        let retry = client.publish(authorized(request(&[tx(2)]), KEY_A)).await.unwrap().into_inner();
        let reason = outcomes(&retry)[0].1.clone();
        if reason != "IN_FLIGHT" || tokio::time::Instant::now() > deadline {
            break reason;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(reason, "BUS_UNAVAILABLE");
}
