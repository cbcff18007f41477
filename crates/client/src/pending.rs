//! Consent requests waiting for the member, kept in a file between `consent request` and
//! `consent exchange` when the redirect goes to the aggregator's own web address instead of the
//! CLI's loopback listener.
//!
//! The file holds each request's PKCE verifier, so it is written owner-readable only. A request
//! is taken out when its code is exchanged; the authorization URL lives 30 minutes, so entries
//! older than [`PENDING_TTL_HOURS`] are dropped whenever the file is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::ClientError;

/// How long an unexchanged request is kept.
pub const PENDING_TTL_HOURS: i64 = 24;

/// One request waiting for its code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRequest {
    pub request_id: String,
    pub issuer_id: String,
    pub verifier: String,
    pub redirect_uri: String,
    pub created_at: DateTime<Utc>,
}

/// The file of pending requests, keyed by their `state`.
#[derive(Clone, Debug)]
pub struct PendingFile {
    path: PathBuf,
}

impl PendingFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, message: impl std::fmt::Display) -> ClientError {
        ClientError::File { path: self.path.display().to_string(), source: std::io::Error::other(message.to_string()) }
    }

    fn load(&self) -> Result<BTreeMap<String, PendingRequest>, ClientError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                serde_json::from_str(&text).map_err(|e| self.error(format!("not a pending-requests file: {e}")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(ClientError::File { path: self.path.display().to_string(), source }),
        }
    }

    fn store(&self, mut map: BTreeMap<String, PendingRequest>) -> Result<(), ClientError> {
        let cutoff = Utc::now() - TimeDelta::hours(PENDING_TTL_HOURS);
        map.retain(|_, p| p.created_at >= cutoff);
        let text = serde_json::to_string_pretty(&map).map_err(|e| self.error(e))?;
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        write_private(Path::new(&tmp), text.as_bytes()).map_err(|e| self.error(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.error(e))
    }

    /// Remembers `request` under `state`.
    pub fn add(&self, state: &str, request: PendingRequest) -> Result<(), ClientError> {
        let mut map = self.load()?;
        map.insert(state.to_owned(), request);
        self.store(map)
    }

    /// Takes out the request of `state`, if it is there.
    pub fn take(&self, state: &str) -> Result<Option<PendingRequest>, ClientError> {
        let mut map = self.load()?;
        let found = map.remove(state);
        if found.is_some() {
            self.store(map)?;
        }
        Ok(found)
    }
}

/// Writes `bytes` to `path`, readable and writable by its owner only (it holds secrets).
#[cfg(unix)]
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // `mode` applies only when the file is created; an older file is narrowed too.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str, created_at: DateTime<Utc>) -> PendingRequest {
        PendingRequest {
            request_id: id.into(),
            issuer_id: "iss-a".into(),
            verifier: "v".into(),
            redirect_uri: "https://app.example/cb".into(),
            created_at,
        }
    }

    #[test]
    fn a_request_is_taken_once_and_stale_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let file = PendingFile::new(dir.path().join("pending.json"));
        let stale = Utc::now() - TimeDelta::hours(PENDING_TTL_HOURS + 1);
        file.add("old", request("r-0", stale)).unwrap();
        file.add("s1", request("r-1", Utc::now())).unwrap();
        assert_eq!(file.take("old").unwrap(), None, "dropped when the file was written again");
        assert_eq!(file.take("s1").unwrap().map(|r| r.request_id).as_deref(), Some("r-1"));
        assert_eq!(file.take("s1").unwrap(), None);
        std::fs::write(file.path(), "not json").unwrap();
        assert!(file.take("s1").unwrap_err().to_string().contains("not a pending-requests file"));
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = PendingFile::new(dir.path().join("pending.json"));
        file.add("s", request("r", Utc::now())).unwrap();
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }
}
