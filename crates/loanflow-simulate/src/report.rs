//! The run's summary: printed as a table, written as JSON, and drawn as SVG charts
//! (applications per status over time; the end-to-end latency distribution).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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

    fn statuses_svg(&self) -> String {
        let (w, h, pad) = (900.0, 420.0, 50.0);
        let t_max = self.timeline.last().map(|s| s.t).unwrap_or(1.0).max(0.001);
        let y_max = self.applications.max(1) as f64;
        let mut series: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for s in &self.timeline {
            for key in s.counts.keys() {
                series.entry(key.as_str()).or_default();
            }
        }
        for s in &self.timeline {
            for (key, points) in series.iter_mut() {
                points.push((s.t, s.counts.get(*key).copied().unwrap_or(0) as f64));
            }
        }
        let colours =
            ["#0b4f8a", "#136f3a", "#a01c1c", "#d69e2e", "#6b46c1", "#2c7a7b", "#b83280", "#4a5568", "#dd6b20"];
        let mut svg = svg_open(w, h, &format!("{}: applications per status over time", self.scenario));
        axes(&mut svg, w, h, pad, t_max, "seconds", y_max, "applications");
        for (i, (key, points)) in series.iter().enumerate() {
            let colour = colours[i % colours.len()];
            let path: Vec<String> = points
                .iter()
                .map(|(t, y)| {
                    format!("{:.1},{:.1}", pad + t / t_max * (w - 2.0 * pad), h - pad - y / y_max * (h - 2.0 * pad))
                })
                .collect();
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" font-size="12" fill="{colour}">{}</text>"#,
                w - pad - 150.0,
                pad + 14.0 * i as f64,
                escape(key)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }

    fn latency_svg(&self) -> String {
        let (w, h, pad) = (900.0, 420.0, 50.0);
        let samples = &self.end_to_end_samples;
        let max = samples.iter().copied().fold(1.0_f64, f64::max);
        let buckets = 40;
        let mut counts = vec![0usize; buckets];
        for s in samples {
            let b = ((s / max) * (buckets as f64 - 1.0)).round() as usize;
            counts[b.min(buckets - 1)] += 1;
        }
        let y_max = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
        let mut svg = svg_open(w, h, &format!("{}: end-to-end latency distribution", self.scenario));
        axes(&mut svg, w, h, pad, max, "milliseconds", y_max, "applications");
        let bar = (w - 2.0 * pad) / buckets as f64;
        for (i, c) in counts.iter().enumerate() {
            let bh = *c as f64 / y_max * (h - 2.0 * pad);
            let _ = write!(
                svg,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#0b4f8a"/>"##,
                pad + i as f64 * bar + 1.0,
                h - pad - bh,
                (bar - 2.0).max(1.0),
                bh
            );
        }
        for (name, v) in &self.end_to_end_ms {
            let x = pad + v / max * (w - 2.0 * pad);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{pad}" y2="{}" stroke="#a01c1c" stroke-dasharray="4"/><text x="{:.1}" y="{}" font-size="12" fill="#a01c1c">{name} {v:.0}</text>"##,
                h - pad,
                x + 3.0,
                pad + 12.0
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn svg_open(w: f64, h: f64, title: &str) -> String {
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif"><rect width="100%" height="100%" fill="#fff"/><text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"##,
        w / 2.0,
        escape(title)
    )
}

#[allow(clippy::too_many_arguments)]
fn axes(svg: &mut String, w: f64, h: f64, pad: f64, x_max: f64, x_label: &str, y_max: f64, y_label: &str) {
    let _ = write!(
        svg,
        r##"<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="#333"/><text x="{r}" y="{lx}" font-size="12" text-anchor="end">{x_label} (max {x_max:.1})</text><text x="8" y="{}" font-size="12">{y_label}</text><text x="{}" y="{b}" font-size="11" text-anchor="end">0</text><text x="{}" y="{}" font-size="11" text-anchor="end">{y_max:.0}</text>"##,
        pad - 16.0,
        pad - 4.0,
        pad - 4.0,
        pad + 4.0,
        b = h - pad,
        r = w - pad,
        lx = h - pad + 30.0,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
