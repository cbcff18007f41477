//! What both reference binaries share: the connection arguments and a loop that starts with the
//! consents' history (a backfill: the last months from the history store, newest state of each
//! transaction), hands every delivery to the app, and reports when it has caught up with the live
//! tail (then stops, or keeps following and reports again every `--every` seconds).

use std::time::{Duration, Instant};

use cardlink_client::aggregator::Aggregator;
use cardlink_client::subscriber::{Notice, Resumable, Start};
use clap::Args;

use crate::v1;

#[derive(Debug, Args)]
pub struct StreamArgs {
    /// The subscription service.
    #[arg(long, default_value = "http://127.0.0.1:50054", env = "CARDLINK_SUBSCRIPTION_ENDPOINT")]
    pub subscription_endpoint: String,
    /// The aggregator's credential (`cl1.…`).
    #[arg(long, env = "CARDLINK_AGGREGATOR_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Only this issuer's data; repeat (default: all).
    #[arg(long = "issuer")]
    pub issuers: Vec<String>,
    /// Keep following the live stream after catching up, reporting every `--every` seconds.
    #[arg(long)]
    pub follow: bool,
    #[arg(long, default_value_t = 10)]
    pub every: u64,
    /// Replay what the bus still retains instead of the consents' history (for a deployment
    /// whose subscription service has no history store: then only the bus's retention, and no
    /// issuer's historical load).
    #[arg(long)]
    pub from_earliest: bool,
}

/// Backfills what the consents cover (the book is rebuilt from the stream each run), calling
/// `apply` per delivery — a history row is the newest state of its transaction, so the app's
/// merge of authorisation, posting and refund takes it as it takes live events — and `report`
/// once caught up; with `--follow`, every `--every` seconds after.
pub async fn run(
    args: &StreamArgs,
    kinds: Vec<v1::EventKind>,
    mut apply: impl FnMut(&v1::Delivery),
    mut report: impl FnMut(),
) -> anyhow::Result<()> {
    // The consent endpoint is not used: the stream alone feeds the book.
    let client = Aggregator::connect(&args.subscription_endpoint, &args.subscription_endpoint, &args.token)?;
    let start = if args.from_earliest { Start::Earliest } else { Start::Backfill(Vec::new()) };
    let mut stream = Resumable::new(client, kinds, args.issuers.clone(), start, None)?;
    let mut caught_up = false;
    let mut last = Instant::now();
    loop {
        let batch = stream
            .next(|n| {
                if let Notice::Reconnecting { reason, after } = n {
                    eprintln!("stream ended ({reason}); resuming in {after:?}");
                }
            })
            .await?;
        batch.deliveries.iter().for_each(&mut apply);
        let tail = batch.heartbeat.as_ref().is_some_and(|h| h.caught_up);
        if tail && !caught_up {
            caught_up = true;
            report();
            if !args.follow {
                return Ok(());
            }
            last = Instant::now();
        } else if caught_up && last.elapsed() >= Duration::from_secs(args.every.max(1)) {
            report();
            last = Instant::now();
        }
    }
}
