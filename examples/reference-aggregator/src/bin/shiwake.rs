//! `shiwake`: an SME bookkeeping app's journal (仕訳) from the stream, as CSV.
//!
//! ```sh
//! CARDLINK_AGGREGATOR_TOKEN=cl1.… cargo run -p cardlink-reference-aggregator --bin shiwake > journal.csv
//! ```

use cardlink_reference_aggregator::shiwake::{CSV_HEADER, Journal, PAYABLE};
use cardlink_reference_aggregator::stream::{self, StreamArgs};
use cardlink_reference_aggregator::v1;
use clap::Parser;

/// Journal entries (仕訳) for the card's spending and its paid bills, as CSV on stdout.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    stream: StreamArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let journal = std::cell::RefCell::new(Journal::new());
    // Entries already printed: a following journal prints only what was booked since.
    let printed = std::cell::Cell::new(0);
    print!("{CSV_HEADER}");
    stream::run(
        &cli.stream,
        vec![v1::EventKind::Transaction, v1::EventKind::Statement],
        |d| journal.borrow_mut().apply(d),
        || {
            let j = journal.borrow();
            print!("{}", j.csv_rows(printed.get()));
            printed.set(j.entries.len());
            eprintln!("{} entries; {PAYABLE} balance {} yen", j.entries.len(), j.balance(PAYABLE));
        },
    )
    .await
}
