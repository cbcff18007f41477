//! The plot of docs/benchmarks.md: CPU per delivered event (left) and memory per stream (right)
//! against connected streams, log scales, cardlink's shared path beside the baseline of one
//! consumer per aggregator.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use crate::report::Fanout;

/// A TrueType font for the labels: plotters draws text with ab_glyph from font bytes.
fn font() -> anyhow::Result<&'static [u8]> {
    let mut candidates: Vec<String> = std::process::Command::new("fc-match")
        .args(["-f", "%{file}", "sans-serif"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .into_iter()
        .collect();
    candidates.extend(
        [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        ]
        .map(String::from),
    );
    let bytes = candidates
        .iter()
        .filter(|p| p.ends_with(".ttf"))
        .find_map(|p| std::fs::read(p).ok())
        .context("no TrueType font for the plot's labels (install fonts-dejavu-core)")?;
    Ok(Box::leak(bytes.into_boxed_slice()))
}

type Series = Vec<(f64, f64)>;

fn chart(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    series: &[(&str, Series, RGBColor)],
) -> anyhow::Result<()> {
    let points = series.iter().flat_map(|(_, s, _)| s.iter().copied());
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for (_, y) in points {
        lo = lo.min(y);
        hi = hi.max(y);
    }
    if lo > hi {
        (lo, hi) = (1.0, 10.0);
    }
    let max_x = series.iter().flat_map(|(_, s, _)| s.iter().map(|p| p.0)).fold(10.0, f64::max);
    let mut c = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((0.8f64..max_x * 1.25).log_scale(), ((lo * 0.5).max(0.01)..hi * 2.0).log_scale())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    c.configure_mesh()
        .x_desc("connected streams")
        .y_desc(y_desc)
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, points, color) in series {
        let color = *color;
        c.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        c.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled()))).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

pub fn draw(rows: &[Fanout], path: &Path) -> anyhow::Result<()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, font()?)
        .map_err(|_| anyhow::anyhow!("the plot's font could not be read"))?;
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(700);
    let xy = |f: fn(&Fanout) -> Option<f64>| -> Series {
        rows.iter().filter_map(|r| f(r).filter(|v| *v > 0.0).map(|v| (r.streams as f64, v))).collect()
    };
    let blue = RGBColor(31, 95, 168);
    let red = RGBColor(192, 57, 43);
    let green = RGBColor(46, 133, 64);
    chart(
        &left,
        "CPU per delivered event",
        "µs of CPU",
        &[
            ("cardlink (subscription process)", xy(|r| Some(r.cpu_us_per_delivery)), blue),
            ("one consumer per aggregator", xy(|r| r.baseline_cpu_us_per_delivery), red),
        ],
    )?;
    chart(
        &right,
        "Resident memory per stream",
        "KiB",
        &[
            ("cardlink, idle stream", xy(|r| Some(r.idle_kib_per_stream)), blue),
            ("cardlink, active stream", xy(|r| Some(r.active_kib_per_stream)), green),
            ("one consumer per aggregator", xy(|r| r.baseline_kib_per_consumer), red),
        ],
    )?;
    root.present().map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}
