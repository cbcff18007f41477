//! `cardlink serve` as a platform team runs it: separate processes, configured the way the chart
//! configures them (flags and `CARDLINK_*` variables), keys made with `cardlink keys`, against a
//! real Kafka-protocol broker. An issuer's registry credential publishes through `serve ingest`
//! and stops working once revoked; what is misconfigured is refused before Kafka is contacted.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use cardlink_api::v1;
use cardlink_api::v1::issuer_ingest_client::IssuerIngestClient;
use cardlink_api::{Reason, convert};
use cardlink_events::{Event, samples};
use cardlink_testkit::{TestBus, authorized, register_aggregator, register_issuer};
use common::{WITHIN, cardlink, free_port, line_from, serve_ingest};
use tonic::Code;

/// `cardlink keys generate`, parsed: (signing key, trusted-key line).
async fn generate_keys() -> (String, String) {
    let out = cardlink().args(["keys", "generate", "--key-id", "ci1"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).map(str::to_owned).unwrap_or_else(|| {
            panic!("{name} missing from {text}");
        })
    };
    (field("signing-key"), field("trusted-key"))
}

fn tx(n: u32) -> v1::PublishRequest {
    let event = Event::Transaction(samples::transaction("iss-a", "acct-1", n));
    v1::PublishRequest {
        issuer_id: "iss-a".into(),
        batch_id: format!("b{n}"),
        records: vec![convert::ingest_record(&event)],
        historical: false,
    }
}

#[tokio::test]
async fn a_registry_credential_publishes_through_serve_ingest_until_revoked() {
    let bus = TestBus::start().await.unwrap();
    let kafka = bus.config().bootstrap_servers.clone();
    let prefix = bus.config().topic_prefix.clone();
    let (signing_key, trusted_key) = generate_keys().await;

    // `cardlink keys public` gives the same line for the same seed.
    let out = cardlink()
        .args(["keys", "public", "--key-id", "ci1"])
        .env("CARDLINK_SIGNING_KEY", &signing_key)
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), trusted_key);

    let registry_port = free_port();
    let mut registry = cardlink()
        .args(["serve", "registry", "--bootstrap-operator", "operator"])
        .env("CARDLINK_KAFKA_BOOTSTRAP", &kafka)
        .env("CARDLINK_TOPIC_PREFIX", &prefix)
        .env("CARDLINK_REGISTRY_LISTEN", format!("127.0.0.1:{registry_port}"))
        .env("CARDLINK_REGISTRY_HTTP_LISTEN", "127.0.0.1:0")
        .env("CARDLINK_SIGNING_KEY", &signing_key)
        .env("CARDLINK_SIGNING_KEY_ID", "ci1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let operator = line_from(&mut registry, |l| l.split("(shown once): ").nth(1).map(str::to_owned)).await;

    let mut r =
        v1::registry_client::RegistryClient::connect(format!("http://127.0.0.1:{registry_port}")).await.unwrap();
    let issuer = register_issuer(&mut r, &operator, "iss-a", 1_000).await.unwrap();
    let aggregator = register_aggregator(&mut r, &operator, "agg-x").await.unwrap();

    // As the chart runs it: the platform's public key, no bootstrap keys.
    let ingest_port = free_port();
    let _ingest = serve_ingest(&kafka, &prefix, &trusted_key, ingest_port).stdout(Stdio::null()).spawn().unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut client = loop {
        match IssuerIngestClient::connect(format!("http://127.0.0.1:{ingest_port}")).await {
            Ok(c) => break c,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("serve ingest never listened: {e}"),
        }
    };
    let accepted = loop {
        match client.publish(authorized(tx(1), &issuer.token)).await {
            Ok(r) => break r.into_inner(),
            Err(s) if Reason::of(&s) == Some(Reason::NotReady) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("publish with the registry credential: {s:?}"),
        }
    };
    assert_eq!(accepted.accepted, 1, "{accepted:?}");

    let e = client.publish(authorized(tx(2), &aggregator.token)).await.unwrap_err();
    assert_eq!((e.code(), Reason::of(&e)), (Code::PermissionDenied, Some(Reason::IssuersOnly)));

    // A PublishStream open with the credential…
    let (sends, outgoing) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .publish_stream(authorized(tokio_stream::wrappers::ReceiverStream::new(outgoing), &issuer.token))
        .await
        .unwrap()
        .into_inner();
    sends.send(tx(10)).await.unwrap();
    assert_eq!(replies.message().await.unwrap().unwrap().accepted, 1);

    r.revoke_credential(authorized(v1::RevokeCredentialRequest { credential_id: issuer.credential_id }, &operator))
        .await
        .unwrap();
    // …ends within the revocation bound, saying why.
    let revoked_at = tokio::time::Instant::now();
    let ended = tokio::time::timeout(WITHIN, replies.message()).await.unwrap().unwrap_err();
    assert_eq!((ended.code(), Reason::of(&ended)), (Code::Unauthenticated, Some(Reason::CredentialRevoked)));
    assert!(revoked_at.elapsed() < Duration::from_secs(2), "ended after {:?}", revoked_at.elapsed());
    drop(sends);
    let refused = loop {
        match client.publish(authorized(tx(3), &issuer.token)).await {
            Err(e) => break e,
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "the revocation never reached serve ingest"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((refused.code(), Reason::of(&refused)), (Code::Unauthenticated, Some(Reason::CredentialRevoked)));
}

#[tokio::test]
async fn misconfigured_services_are_refused_before_kafka_is_contacted() {
    // Nothing listens on port 1: a process that got as far as Kafka would hang, not fail at once.
    let nowhere = "127.0.0.1:1";
    let run = |args: &'static [&'static str], env: Vec<(&'static str, String)>| async move {
        let mut command = cardlink();
        command.args(args).env("CARDLINK_KAFKA_BOOTSTRAP", nowhere).env_remove("CARDLINK_TRUSTED_KEYS");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = tokio::time::timeout(Duration::from_secs(30), command.output()).await.unwrap().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["serve", "ingest"], vec![]).await;
    assert!(e.contains("issuers cannot authenticate"), "{e}");
    let e = run(&["serve", "ingest"], vec![("CARDLINK_TRUSTED_KEYS", "ci1".into())]).await;
    assert!(e.contains("no `:`"), "{e}");
    let e = run(&["serve", "registry"], vec![("CARDLINK_SIGNING_KEY", "c2hvcnQ".into())]).await;
    assert!(e.contains("5 bytes where 32 are needed"), "{e}");
}
