//! The run's summary: printed as a table, written as JSON, and drawn as SVG charts
//! (applications per status over time; the end-to-end latency distribution).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t: f64,
    pub counts: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub applications: usize,
    pub submit_errors: Vec<String>,
    /// Final (or last seen) status → count.
    pub outcomes: BTreeMap<String, usize>,
    /// "rejected at credit: credit score below 580 (auto)" → count.
    pub reasons: BTreeMap<String, usize>,
    pub by_profile: BTreeMap<String, BTreeMap<String, usize>>,
    pub submit_ms: BTreeMap<String, f64>,
    pub end_to_end_ms: BTreeMap<String, f64>,
    pub finalised_per_second: f64,
    pub elapsed_s: f64,
    pub never_final: Vec<String>,
    pub timeline: Vec<Sample>,
    #[serde(skip)]
    pub end_to_end_samples: Vec<f64>,
}

/// Latencies in milliseconds, kept in an HDR histogram (microsecond resolution, three
/// significant digits: a percentile is within 0.1 % of the exact one).
#[derive(Debug)]
pub struct Latencies(hdrhistogram::Histogram<u64>);

impl Latencies {
    pub fn of(samples_ms: &[f64]) -> Latencies {
        // Bounds: 1 µs to an hour, which covers anything a run can measure.
        let mut histogram = match hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3) {
            Ok(h) => h,
            Err(_) => {
                hdrhistogram::Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
            }
        };
        for ms in samples_ms {
            histogram.saturating_record((ms * 1000.0).round().max(1.0) as u64);
        }
        Latencies(histogram)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The latency at quantile `q` (0.99 for p99), in milliseconds; NaN for none.
    pub fn at(&self, q: f64) -> f64 {
        if self.is_empty() {
            return f64::NAN;
        }
        self.0.value_at_quantile(q) as f64 / 1000.0
    }
}

/// p50, p90, p99 and max; empty for no samples.
pub fn percentiles(samples: &[f64]) -> BTreeMap<String, f64> {
    let latencies = Latencies::of(samples);
    if latencies.is_empty() {
        return BTreeMap::new();
    }
    [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0)]
        .into_iter()
        .map(|(name, q)| (name.to_owned(), latencies.at(q)))
        .collect()
}

impl Report {
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ =
            writeln!(t, "scenario {}: {} applications in {:.1} s", self.scenario, self.applications, self.elapsed_s);
        let _ = writeln!(t, "\noutcome                                                     count");
        for (k, v) in &self.outcomes {
            let _ = writeln!(t, "  {k:<58}{v:>5}");
        }
        let _ = writeln!(t, "\nby level and reason");
        for (k, v) in &self.reasons {
            let _ = writeln!(t, "  {k:<58}{v:>5}");
        }
        let pct = |m: &BTreeMap<String, f64>| {
            ["p50", "p90", "p99", "max"]
                .iter()
                .map(|k| format!("{k} {:>8.1}", m.get(*k).copied().unwrap_or(f64::NAN)))
                .collect::<Vec<_>>()
                .join("  ")
        };
        let _ = writeln!(t, "\nlatency (ms)");
        let _ = writeln!(t, "  submit       {}", pct(&self.submit_ms));
        let _ = writeln!(t, "  end to end   {}", pct(&self.end_to_end_ms));
        let _ = writeln!(t, "\nthroughput: {:.1} applications finalised per second", self.finalised_per_second);
        if !self.submit_errors.is_empty() {
            let _ = writeln!(t, "submission errors: {}", self.submit_errors.len());
        }
        if !self.never_final.is_empty() {
            let _ = writeln!(t, "never final: {} (first: {:?})", self.never_final.len(), self.never_final.first());
        }
        t
    }

    /// Writes `summary.json`, `statuses.svg` and `latency.svg` into a new folder
    /// under `root`, and returns the folder.
    pub fn write(&self, root: &Path) -> std::io::Result<PathBuf> {
        let dir = root.join(format!("{}-{}", self.scenario, chrono::Utc::now().format("%Y%m%d-%H%M%S")));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("summary.json"), serde_json::to_vec_pretty(self).unwrap_or_default())?;
        std::fs::write(dir.join("statuses.svg"), self.statuses_svg())?;
        std::fs::write(dir.join("latency.svg"), self.latency_svg())?;
        Ok(dir)
    }

    /// Applications per status over time, one line per status.
    fn statuses_svg(&self) -> String {
        let t_max = self.timeline.last().map(|s| s.t).unwrap_or(1.0).max(0.001);
        let y_max = self.applications.max(1) as f64;
        let mut statuses: Vec<&str> = self.timeline.iter().flat_map(|s| s.counts.keys().map(String::as_str)).collect();
        statuses.sort_unstable();
        statuses.dedup();
        let title = format!("{}: applications per status over time", self.scenario);
        chart(&title, (0.0..t_max, "seconds"), (0.0..y_max, "applications"), |chart| {
            for (i, status) in statuses.iter().enumerate() {
                let colour = PALETTE[i % PALETTE.len()];
                let points = self.timeline.iter().map(|s| (s.t, s.counts.get(*status).copied().unwrap_or(0) as f64));
                chart
                    .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
                    .label(*status)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
            }
            Ok(())
        })
    }

    /// The end-to-end latency distribution (40 buckets), with its percentiles marked.
    fn latency_svg(&self) -> String {
        let samples = &self.end_to_end_samples;
        let max = samples.iter().copied().fold(1.0_f64, f64::max);
        let buckets = 40;
        let width = max / buckets as f64;
        let mut counts = vec![0usize; buckets];
        for s in samples {
            counts[((s / width) as usize).min(buckets - 1)] += 1;
        }
        let y_max = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
        let title = format!("{}: end-to-end latency distribution", self.scenario);
        chart(&title, (0.0..max, "milliseconds"), (0.0..y_max * 1.1, "applications"), |chart| {
            let bars = counts.iter().enumerate().map(|(i, c)| {
                let x = i as f64 * width;
                Rectangle::new([(x, 0.0), (x + width * 0.9, *c as f64)], PALETTE[0].filled())
            });
            chart.draw_series(bars)?;
            for (i, (name, v)) in self.end_to_end_ms.iter().enumerate() {
                let colour = PALETTE[2 + i % (PALETTE.len() - 2)];
                chart
                    .draw_series(LineSeries::new([(*v, 0.0), (*v, y_max * 1.1)], colour.stroke_width(1)))?
                    .label(format!("{name} {v:.0} ms"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(1)));
            }
            Ok(())
        })
    }
}

const PALETTE: [RGBColor; 9] = [
    RGBColor(0x0b, 0x4f, 0x8a),
    RGBColor(0x13, 0x6f, 0x3a),
    RGBColor(0xa0, 0x1c, 0x1c),
    RGBColor(0xd6, 0x9e, 0x2e),
    RGBColor(0x6b, 0x46, 0xc1),
    RGBColor(0x2c, 0x7a, 0x7b),
    RGBColor(0xb8, 0x32, 0x80),
    RGBColor(0x4a, 0x55, 0x68),
    RGBColor(0xdd, 0x6b, 0x20),
];

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type Drawn = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// A 900×420 SVG chart with a title, labelled axes and a legend, drawn by `draw`. A
/// chart that cannot be drawn (it never should) comes out as an SVG that says so.
fn chart(
    title: &str,
    (x_range, x_label): (std::ops::Range<f64>, &str),
    (y_range, y_label): (std::ops::Range<f64>, &str),
    draw: impl FnOnce(&mut Chart<'_, '_>) -> Drawn,
) -> String {
    let mut svg = String::new();
    let drawn = (|| -> Drawn {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(x_range, y_range)?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).light_line_style(WHITE.mix(0.0)).draw()?;
        draw(&mut chart)?;
        chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
        root.present()
    })();
    match drawn {
        Ok(()) => svg,
        Err(e) => {
            format!(r#"<svg xmlns="http://www.w3.org/2000/svg"><text x="10" y="20">chart not drawn: {e}</text></svg>"#)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_their_title_axes_and_legend() {
        let mut report = Report {
            scenario: "smoke".into(),
            applications: 3,
            submit_errors: Vec::new(),
            outcomes: BTreeMap::new(),
            reasons: BTreeMap::new(),
            by_profile: BTreeMap::new(),
            submit_ms: BTreeMap::new(),
            finalised_per_second: 1.5,
            end_to_end_ms: percentiles(&[12.0, 30.0, 95.0]),
            elapsed_s: 2.0,
            never_final: Vec::new(),
            timeline: Vec::new(),
            end_to_end_samples: vec![12.0, 30.0, 95.0],
        };
        for (t, approved) in [(0.0, 0), (1.0, 2), (2.0, 3)] {
            report.timeline.push(Sample { t, counts: BTreeMap::from([("approved".to_owned(), approved)]) });
        }
        for (svg, words) in [
            (report.statuses_svg(), ["smoke: applications per status over time", "seconds", "approved"]),
            (report.latency_svg(), ["smoke: end-to-end latency distribution", "milliseconds", "p99"]),
        ] {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
            for word in words {
                assert!(svg.contains(word), "{word} in the chart");
            }
        }
    }

    #[test]
    fn percentiles_are_within_a_tenth_of_a_percent() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = percentiles(&samples);
        for (name, exact) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)] {
            assert!((p[name] - exact).abs() <= exact * 0.001, "{name}: {} for {exact}", p[name]);
        }
        assert!(percentiles(&[]).is_empty());
        assert!((percentiles(&[7.25])["p99"] - 7.25).abs() < 0.01);
        assert!(Latencies::of(&[]).at(0.5).is_nan());
    }
}
