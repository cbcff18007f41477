//! A whole file through the adapter: parse, publish in batches, write rejects, checkpoint.
//!
//! Nothing is dropped silently: every data line ends as published, duplicate, or a line in the
//! rejects file (line number, reason, field, message — never the line's content, which may hold
//! personal data). After each batch is final the checkpoint records the last line done and the
//! rejects file's length, so a crashed run resumes after the last full batch and the rejects file
//! gets no repeated lines. Event ids are deterministic, so even replayed lines publish nothing twice.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use cardlink_api::Reason;
use cardlink_events::Event;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::mapping::Mapping;
use super::parse::{FileError, Line, Parser};
use crate::sink::{EventSink, SinkError, SinkOutcome};

/// Default records per ingest call.
pub const DEFAULT_BATCH: usize = 500;
/// Longest line accepted; a longer one is rejected on its own (LINE_TOO_LONG).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// One run of the adapter over one file.
#[derive(Debug, Clone)]
pub struct FileRun {
    pub input: PathBuf,
    pub mapping: Mapping,
    pub issuer_id: String,
    /// Defaults to `<input>.rejects.csv`.
    pub rejects: Option<PathBuf>,
    /// Defaults to `<input>.checkpoint.json`.
    pub checkpoint: Option<PathBuf>,
    pub batch_size: usize,
    /// Show a progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
}

/// What a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Data lines read (skipped lines excluded), in this run.
    pub read: u64,
    pub published: u64,
    pub duplicate: u64,
    pub rejected: u64,
    /// Lines passed over as already done by an earlier run.
    pub resumed_after_line: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    File { path: String, source: FileError },
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A record could not be sent yet (the bus or ingest was unavailable, or another call was
    /// publishing it) after the sink's retries: the run stops there, the checkpoint just before it.
    #[error(
        "line {line} was not sent yet ({reason}); the checkpoint stops before it: run the adapter again to go on from line {line}"
    )]
    NotSent { line: u64, reason: String },
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Checkpoint {
    file_sha256: String,
    /// Every line up to and including this one is final.
    line: u64,
    rejects_bytes: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io { path: path.display().to_string(), source }
}

fn sibling(input: &Path, suffix: &str) -> PathBuf {
    let mut name = input.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    input.with_file_name(name)
}

/// Hashes the file and counts its lines in one pass.
fn fingerprint(path: &Path) -> Result<(String, u64), RunError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut lines = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
    Ok((hasher.finalize().iter().map(|b| format!("{b:02x}")).collect(), lines))
}

fn load_checkpoint(path: &Path, sha: &str) -> Checkpoint {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Checkpoint>(&bytes).ok())
        .filter(|c| c.file_sha256 == sha)
        .unwrap_or_else(|| Checkpoint { file_sha256: sha.to_owned(), ..Checkpoint::default() })
}

/// Written to a temporary file and renamed, so a crash leaves the old or the new checkpoint.
fn save_checkpoint(path: &Path, checkpoint: &Checkpoint) -> Result<(), RunError> {
    let tmp = sibling(path, ".tmp");
    let bytes = serde_json::to_vec_pretty(checkpoint).unwrap_or_default();
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

struct Rejects {
    file: File,
    path: PathBuf,
    bytes: u64,
}

impl Rejects {
    fn open(path: &Path, keep_bytes: u64) -> Result<Self, RunError> {
        let file =
            OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path).map_err(io_err(path))?;
        file.set_len(keep_bytes).map_err(io_err(path))?;
        let mut rejects = Self { file, path: path.to_owned(), bytes: keep_bytes };
        use std::io::Seek;
        rejects.file.seek(std::io::SeekFrom::End(0)).map_err(io_err(path))?;
        if keep_bytes == 0 {
            rejects.write_row(&["line", "reason", "field", "message"])?;
        }
        Ok(rejects)
    }

    fn write_row(&mut self, cells: &[&str]) -> Result<(), RunError> {
        let mut writer = csv::WriterBuilder::new().from_writer(Vec::new());
        let row = writer.write_record(cells).and_then(|_| writer.flush().map_err(csv::Error::from));
        let bytes = row.ok().and_then(|_| writer.into_inner().ok()).unwrap_or_default();
        self.file.write_all(&bytes).map_err(io_err(&self.path))?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn reject(&mut self, line: u64, reason: &str, field: &str, message: &str) -> Result<(), RunError> {
        self.write_row(&[&line.to_string(), reason, field, message])
    }

    /// Drops every row written after the first `bytes`.
    fn truncate(&mut self, bytes: u64) -> Result<(), RunError> {
        use std::io::Seek;
        self.file.set_len(bytes).map_err(io_err(&self.path))?;
        self.file.seek(std::io::SeekFrom::End(0)).map_err(io_err(&self.path))?;
        self.bytes = bytes;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), RunError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }
}

/// Runs `run` to the end of its file, publishing through `sink`.
pub async fn run_file<S: EventSink>(run: FileRun, sink: &mut S) -> Result<Summary, RunError> {
    let input = run.input.as_path();
    let rejects_path = run.rejects.clone().unwrap_or_else(|| sibling(input, ".rejects.csv"));
    let checkpoint_path = run.checkpoint.clone().unwrap_or_else(|| sibling(input, ".checkpoint.json"));
    let (sha, total_lines) = fingerprint(input)?;
    let mut checkpoint = load_checkpoint(&checkpoint_path, &sha);
    let mut rejects = Rejects::open(&rejects_path, checkpoint.rejects_bytes)?;
    let mut summary = Summary { resumed_after_line: checkpoint.line, ..Summary::default() };

    let bar = if run.progress { indicatif::ProgressBar::new(total_lines) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} lines  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(checkpoint.line);

    let mut parser = Parser::new(run.mapping.clone(), &run.issuer_id);
    let mut reader = BufReader::new(File::open(input).map_err(io_err(input))?);
    let mut raw = Vec::with_capacity(1024);
    let mut line_no = 0u64;
    // Each line's event, with the size of the rejects file when the line was read.
    let mut batch: Vec<(u64, Event, u64)> = Vec::with_capacity(run.batch_size);
    loop {
        raw.clear();
        let n = reader.by_ref().take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut raw).map_err(io_err(input))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if raw.len() > MAX_LINE_BYTES && !raw.ends_with(b"\n") {
            // Consume the rest of the over-long line, then reject it.
            let mut rest = Vec::new();
            reader.read_until(b'\n', &mut rest).map_err(io_err(input))?;
            if line_no > checkpoint.line {
                summary.read += 1;
                summary.rejected += 1;
                rejects.reject(
                    line_no,
                    Reason::LineTooLong.as_str(),
                    "",
                    &format!("longer than {MAX_LINE_BYTES} bytes"),
                )?;
            }
            continue;
        }
        let content = raw.strip_suffix(b"\n").unwrap_or(&raw);
        // The header must be parsed even on resume, so every line goes through the parser.
        let parsed = parser
            .parse_line(content)
            .map_err(|source| RunError::File { path: input.display().to_string(), source })?;
        if line_no <= checkpoint.line {
            continue;
        }
        bar.inc(1);
        match parsed {
            Line::Skipped => {}
            Line::Record(Err(r)) => {
                summary.read += 1;
                summary.rejected += 1;
                rejects.reject(line_no, r.reason.as_str(), &r.field, &r.message)?;
            }
            Line::Record(Ok(tx)) => {
                summary.read += 1;
                batch.push((line_no, Event::Transaction(tx), rejects.bytes));
            }
        }
        if batch.len() >= run.batch_size {
            flush_or_stop(sink, &mut batch, &mut rejects, &mut summary, &checkpoint_path, &mut checkpoint).await?;
            commit(&checkpoint_path, &mut checkpoint, line_no, &mut rejects)?;
        }
    }
    flush_or_stop(sink, &mut batch, &mut rejects, &mut summary, &checkpoint_path, &mut checkpoint).await?;
    commit(&checkpoint_path, &mut checkpoint, line_no, &mut rejects)?;
    bar.finish_and_clear();
    Ok(summary)
}

/// Publishes the batch. If a record of it could not be sent yet (a retriable rejection the sink
/// gave up on), the run stops there: the lines before it are final, the checkpoint is committed
/// just before it, and every row written since that line was read is dropped from the rejects
/// file (the next run writes them again).
async fn flush_or_stop<S: EventSink>(
    sink: &mut S,
    batch: &mut Vec<(u64, Event, u64)>,
    rejects: &mut Rejects,
    summary: &mut Summary,
    checkpoint_path: &Path,
    checkpoint: &mut Checkpoint,
) -> Result<(), RunError> {
    if batch.is_empty() {
        return Ok(());
    }
    let events: Vec<Event> = batch.iter().map(|(_, e, _)| e.clone()).collect();
    let outcomes = sink.publish(&events).await?;
    let unsent = outcomes.iter().position(|o| {
        matches!(o, SinkOutcome::Rejected { reason, .. } if Reason::from_name(reason).is_some_and(Reason::is_retriable))
    });
    if let Some(k) = unsent {
        rejects.truncate(batch[k].2)?;
    }
    let end = unsent.unwrap_or(outcomes.len());
    for ((line, _, _), outcome) in batch.iter().zip(outcomes.iter()).take(end) {
        match outcome {
            SinkOutcome::Accepted => summary.published += 1,
            SinkOutcome::Duplicate => summary.duplicate += 1,
            SinkOutcome::Rejected { reason, field, message } => {
                summary.rejected += 1;
                rejects.reject(*line, reason, field, message)?;
            }
        }
    }
    if let Some(k) = unsent {
        let line = batch[k].0;
        let reason = match &outcomes[k] {
            SinkOutcome::Rejected { reason, .. } => reason.clone(),
            _ => String::new(),
        };
        commit(checkpoint_path, checkpoint, line - 1, rejects)?;
        return Err(RunError::NotSent { line, reason });
    }
    batch.clear();
    Ok(())
}

fn commit(path: &Path, checkpoint: &mut Checkpoint, line: u64, rejects: &mut Rejects) -> Result<(), RunError> {
    rejects.sync()?;
    checkpoint.line = line;
    checkpoint.rejects_bytes = rejects.bytes;
    save_checkpoint(path, checkpoint)
}
