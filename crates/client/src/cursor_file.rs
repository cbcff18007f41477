//! The last cursor a client processed, kept in a file.
//!
//! Saved by writing a temporary file beside it and renaming it over the old one, so a crash
//! leaves either the old cursor or the new one, never half of one. A client saves after it has
//! processed a message: on restart it resumes after the last processed delivery, and at worst
//! sees that one again (de-duplicate by event id, see docs/aggregators.md).

use std::path::{Path, PathBuf};

use crate::ClientError;

#[derive(Clone, Debug)]
pub struct CursorFile {
    path: PathBuf,
}

impl CursorFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved cursor; `None` when there is no file yet (a first run).
    pub fn load(&self) -> Result<Option<String>, ClientError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(Some(text.trim().to_owned()).filter(|c| !c.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(self.error(source)),
        }
    }

    /// Replaces the saved cursor atomically.
    pub fn save(&self, cursor: &str) -> Result<(), ClientError> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, cursor.as_bytes()).map_err(|e| self.error(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.error(e))
    }

    fn error(&self, source: std::io::Error) -> ClientError {
        ClientError::File { path: self.path.display().to_string(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_cursor_is_loaded_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = CursorFile::new(dir.path().join("cursor"));
        assert_eq!(file.load().unwrap(), None);
        file.save("c1").unwrap();
        file.save("c2").unwrap();
        assert_eq!(file.load().unwrap().as_deref(), Some("c2"));
        assert!(!dir.path().join("cursor.tmp").exists());
    }
}
