//! The figures of one run: JSON (everything), a Markdown table (for docs/benchmarks.md), and a
//! PNG plot of CPU per delivered event and memory per stream against connected streams, for
//! cardlink's shared path and the per-aggregator-consumer baseline.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Ingest {
    pub records: u64,
    pub seconds: f64,
    pub records_per_second: f64,
    pub cpu_seconds: f64,
    pub cpu_us_per_record: f64,
    pub clients: usize,
    pub batch: usize,
    /// The same records, encoded as ingest encodes them, through a plain producer with the same
    /// client settings and as many in flight ([`cardlink_bus::baseline::produce`]), in the same run.
    pub raw_producer_records_per_second: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Fanout {
    pub streams: usize,
    pub consents: usize,
    pub published: u64,
    pub delivered: u64,
    pub publish_rate: f64,
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub cpu_us_per_delivery: f64,
    pub idle_kib_per_stream: f64,
    pub active_kib_per_stream: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Streams dropped for falling behind that resumed from their cursor.
    pub resumes: u64,
    pub baseline_delivered: Option<u64>,
    pub baseline_seconds: Option<f64>,
    pub baseline_cpu_seconds: Option<f64>,
    pub baseline_cpu_us_per_delivery: Option<f64>,
    pub baseline_kib_per_consumer: Option<f64>,
    /// From each event's scheduled publish time to its receipt by the aggregator's client
    /// (HdrHistogram; free of coordinated omission).
    pub scheduled: Option<Latency>,
    /// The same, to its receipt by a plain consumer of the bus, in the same run: what ingest and
    /// the bus alone take.
    pub bus_scheduled: Option<Latency>,
    /// From each record's broker timestamp to its receipt by the plain consumer: the bus's own
    /// hop (millisecond timestamps: ±1 ms).
    pub bus_hop: Option<Latency>,
}

/// A latency distribution's summary, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// The summary of a histogram of microseconds.
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    fn cells(l: Option<&Self>) -> String {
        l.map_or_else(
            || "— | — | — | —".to_owned(),
            |l| format!("{:.1} | {:.1} | {:.1} | {:.1}", l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms),
        )
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub plan: String,
    pub machine: String,
    pub ingest: Option<Ingest>,
    pub fanout: Vec<Fanout>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.digits$}"))
}

impl crate::Written for Report {
    const NAME: &'static str = "results";

    fn machine(&mut self) -> &mut String {
        &mut self.machine
    }

    /// The results as Markdown tables.
    fn markdown(&self) -> String {
        let mut out = String::new();
        if let Some(i) = &self.ingest {
            let _ = writeln!(
                out,
                "| ingest | records | seconds | records/s | CPU µs/record (ingest process) | plain producer records/s | ingest ÷ plain (target ≥ 0.5) |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
            let raw = i.raw_producer_records_per_second;
            let _ = writeln!(
                out,
                "| {} clients × {}-record calls, acks=all | {} | {:.1} | {:.0} | {:.1} | {} | {} |\n",
                i.clients,
                i.batch,
                i.records,
                i.seconds,
                i.records_per_second,
                i.cpu_us_per_record,
                opt(raw, 0),
                opt(raw.map(|r| i.records_per_second / r.max(1e-9)), 2),
            );
        }
        let one = self.fanout.iter().find(|f| f.streams == 1).map(|f| f.cpu_us_per_delivery);
        let _ = writeln!(
            out,
            "| streams | delivered | resumed | rate (ev/s) | CPU µs/delivery | vs 1 stream | p50 ms | p99 ms | max ms | idle KiB/stream | active KiB/stream | baseline CPU µs/delivery | baseline KiB/consumer | baseline ÷ cardlink CPU |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for f in &self.fanout {
            let ratio = f.baseline_cpu_seconds.map(|b| b / f.cpu_seconds.max(1e-9));
            let _ = writeln!(
                out,
                "| {} | {}/{} | {} | {:.0} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
                f.streams,
                f.delivered,
                f.published,
                f.resumes,
                f.publish_rate,
                f.cpu_us_per_delivery,
                opt(one.map(|o| f.cpu_us_per_delivery / o), 2),
                f.p50_ms,
                f.p99_ms,
                f.max_ms,
                f.idle_kib_per_stream,
                f.active_kib_per_stream,
                opt(f.baseline_cpu_us_per_delivery, 1),
                opt(f.baseline_kib_per_consumer, 0),
                opt(ratio, 1),
            );
        }
        if self.fanout.iter().any(|f| f.scheduled.is_some()) {
            let _ = writeln!(
                out,
                "\nLatency from each event's scheduled publish time (HdrHistogram, ms; targets at 1,000 streams: p50 ≤ 10, p99 ≤ 25):\n"
            );
            let _ = writeln!(
                out,
                "| streams | events | cardlink p50 | p99 | p99.9 | max | plain consumer p50 | p99 | p99.9 | max | cardlink's own p50 | p99 | bus hop p50 | p99 |"
            );
            let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for f in &self.fanout {
                let added = |q: fn(&Latency) -> f64| {
                    opt(f.scheduled.as_ref().zip(f.bus_scheduled.as_ref()).map(|(c, b)| q(c) - q(b)), 1)
                };
                let hop = |q: fn(&Latency) -> f64| opt(f.bus_hop.as_ref().map(q), 1);
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    f.streams,
                    f.scheduled.map_or(0, |l| l.count),
                    Latency::cells(f.scheduled.as_ref()),
                    Latency::cells(f.bus_scheduled.as_ref()),
                    added(|l| l.p50_ms),
                    added(|l| l.p99_ms),
                    hop(|l| l.p50_ms),
                    hop(|l| l.p99_ms),
                );
            }
        }
        out
    }

    fn write_more(&self, dir: &Path) -> anyhow::Result<()> {
        if !self.fanout.is_empty() {
            crate::plot::draw(&self.fanout, &dir.join("fanout.png"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Written as _;

    #[test]
    fn the_table_compares_each_row_with_one_stream_and_the_baseline() {
        let report = Report {
            fanout: vec![
                Fanout { streams: 1, cpu_us_per_delivery: 10.0, cpu_seconds: 1.0, ..Fanout::default() },
                Fanout {
                    streams: 10,
                    cpu_us_per_delivery: 12.0,
                    cpu_seconds: 1.2,
                    baseline_cpu_seconds: Some(24.0),
                    ..Fanout::default()
                },
            ],
            ..Report::default()
        };
        let md = report.markdown();
        assert!(md.contains("| 10 |") && md.contains("| 1.20 |") && md.contains("| 20.0 |"), "{md}");
    }
}
