//! `kakeibo`: a household-budget app's monthly card spending by category, from the stream.
//!
//! ```sh
//! CARDLINK_AGGREGATOR_TOKEN=cl1.… cargo run -p cardlink-reference-aggregator --bin kakeibo -- [--follow]
//! ```

use cardlink_reference_aggregator::kakeibo::Kakeibo;
use cardlink_reference_aggregator::stream::{self, StreamArgs};
use cardlink_reference_aggregator::v1;
use clap::Parser;

/// Monthly card spending by category (家計簿), rebuilt from cardlink's stream.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    stream: StreamArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let book = std::cell::RefCell::new(Kakeibo::new());
    stream::run(
        &cli.stream,
        vec![v1::EventKind::Transaction],
        |d| book.borrow_mut().apply(d),
        || print!("{}", book.borrow().render()),
    )
    .await
}
