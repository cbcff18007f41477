//! What the end-to-end tests of the `cardlink` binary share: the repository, the Python with the
//! browser driver, running a command to its end, the member's real browser, and reading the
//! aggregator CLI's authorization URL.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufRead, Lines};
use tokio::process::Command;

/// How long one command or page may take.
pub const WITHIN: Duration = Duration::from_secs(90);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python with the tools' requirements (`scripts/test.sh` sets `CARDLINK_PYTHON`).
pub fn python() -> String {
    std::env::var("CARDLINK_PYTHON").unwrap_or_else(|_| "python3".into())
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
