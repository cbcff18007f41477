//! What the end-to-end tests of the `cardlink` binary share: the repository, the Python with the
//! browser driver, running a command to its end, the member's real browser, and reading the
//! aggregator CLI's authorization URL.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, Command};

/// How long one command or page may take.
pub const WITHIN: Duration = Duration::from_secs(90);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python with the tools' requirements (`scripts/test.sh` sets `CARDLINK_PYTHON`).
pub fn python() -> String {
    std::env::var("CARDLINK_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The `cardlink` binary under test, without the environment of the machine running the tests.
pub fn cardlink() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cardlink"));
    command
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("CARDLINK_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// `cardlink serve ingest` as the chart runs it: the broker at `kafka`, topics under `prefix`,
/// issuers authenticated by the registry credentials the platform key `trusted` signs (no
/// bootstrap keys), listening on `port`. The caller adds what else it wants and spawns it.
pub fn serve_ingest(kafka: &str, prefix: &str, trusted: &str, port: u16) -> Command {
    let mut command = cardlink();
    command
        .args(["serve", "ingest"])
        .env("CARDLINK_KAFKA_BOOTSTRAP", kafka)
        .env("CARDLINK_TOPIC_PREFIX", prefix)
        .env("CARDLINK_INGEST_LISTEN", format!("127.0.0.1:{port}"))
        .env("CARDLINK_TRUSTED_KEYS", trusted)
        .env("CARDLINK_ISSUER_KEYS", "");
    command
}

/// A free port on loopback (released for the process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits for a line of `child`'s stdout that `pick` accepts.
pub async fn line_from(child: &mut Child, pick: impl Fn(&str) -> Option<String>) -> String {
    let stdout = child.stdout.as_mut().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    tokio::time::timeout(WITHIN, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(found) = pick(&line) {
                return found;
            }
        }
        panic!("the process ended without the expected line")
    })
    .await
    .unwrap()
}

/// Waits until the gRPC server at `port` reports itself ready (`grpc.health.v1`, service "").
pub async fn ready(port: u16) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        if let Ok(channel) = endpoint.connect().await {
            let mut client = HealthClient::new(channel);
            let serving = client.check(HealthCheckRequest { service: String::new() }).await;
            if serving.is_ok_and(|r| r.into_inner().status == 1) {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the service on {port} never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `command` to its end; its standard output. Fails the test if it fails or hangs.
pub async fn output(command: &mut Command) -> Vec<u8> {
    let out = tokio::time::timeout(WITHIN, command.output()).await.expect("the command finishes").unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out.stdout
}

/// The member's real browser (`tools/browser_e2e.py`): what the pages showed.
pub async fn browser(args: &[&str]) -> Value {
    let mut command = Command::new(python());
    command.arg(repo().join("tools/browser_e2e.py")).args(args);
    serde_json::from_slice(&output(&mut command).await).unwrap()
}

/// The URL `cardlink aggregator consent request` prints for the member, from its output.
pub async fn authorization_url<R: AsyncBufRead + Unpin>(lines: &mut Lines<R>) -> String {
    tokio::time::timeout(WITHIN, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the CLI prints the authorization URL");
            if line.trim().starts_with("http") {
                break line.trim().to_owned();
            }
        }
    })
    .await
    .expect("the CLI prints the authorization URL in time")
}
