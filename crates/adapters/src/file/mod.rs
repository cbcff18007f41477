//! The batch-file adapter: issuers' CSV and fixed-width (固定長) exports, in UTF-8 or
//! Shift_JIS, mapped to card transactions by a TOML mapping file and published through the
//! ingest API.
//!
//! - [`mapping`]: the mapping file.
//! - [`normalize`]: what issuers really write (half-width katakana, ¥1,234, 2026/11/23).
//! - [`parse`]: one line to one transaction or one rejection.
//! - [`run`]: a whole file: batches, results, rejects file, checkpoint, progress, summary.

pub mod mapping;
pub mod normalize;
pub mod parse;
pub mod run;

pub use mapping::Mapping;
pub use parse::{Line, LineRejection, Parser};
pub use run::{FileRun, RunError, Summary, run_file};
