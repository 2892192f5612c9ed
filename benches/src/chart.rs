//! A hand-written SVG of a throughput/latency sweep: committed vs offered
//! load on the left, with the signature bound drawn across it, and p50 and
//! p99 commit latency (log scale) on the right, each open-loop point
//! labelled with its share of the closed-loop peak.

use std::fmt::Write;

/// One measured point of a sweep.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SweepPoint {
    pub label: String,
    /// Open loop (fixed offered rate) points are joined by lines; a closed
    /// loop point (the peak search) is drawn apart as a square.
    pub open_loop: bool,
    pub offered_tps: f64,
    pub committed_tps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The share of the closed-loop peak's committed tx/s this open-loop
    /// point offered (`None`: the peak itself, or the fixed 100 tx/s point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction_of_peak: Option<f64>,
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 440.0;
const PANEL_W: f64 = 360.0;
const PANEL_H: f64 = 300.0;
const TOP: f64 = 70.0;

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
    dashed: bool,
}

struct Axis {
    max: f64,
    min: f64,
    log: bool,
}

impl Axis {
    fn fraction(&self, v: f64) -> f64 {
        if self.log {
            let (lo, hi) = (self.min.log10(), self.max.log10());
            ((v.max(self.min).log10() - lo) / (hi - lo)).clamp(0.0, 1.0)
        } else {
            ((v - self.min) / (self.max - self.min)).clamp(0.0, 1.0)
        }
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut out = Vec::new();
            let mut t = 10f64.powf(self.min.log10().floor());
            while t <= self.max * 1.0001 {
                if t >= self.min * 0.9999 {
                    out.push(t);
                }
                t *= 10.0;
            }
            out
        } else {
            let step = nice_step(self.max - self.min);
            (0..=((self.max - self.min) / step).floor() as usize)
                .map(|i| self.min + i as f64 * step)
                .collect()
        }
    }
}

/// A round tick step giving about five ticks over `span`.
fn nice_step(span: f64) -> f64 {
    let raw = (span / 5.0).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    let unit = raw / magnitude;
    let nice = if unit <= 1.0 {
        1.0
    } else if unit <= 2.0 {
        2.0
    } else if unit <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// A round upper bound at or above `v`.
fn nice_max(v: f64) -> f64 {
    let step = nice_step(v.max(1.0));
    (v.max(1.0) / step).ceil() * step
}

fn label(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{}k", v / 1000.0)
    } else {
        format!("{v}")
    }
}

#[allow(clippy::too_many_arguments)]
fn panel(
    svg: &mut String,
    left: f64,
    title: &str,
    x_label: &str,
    y_label: &str,
    x: &Axis,
    y: &Axis,
    series: &[Series],
) {
    let px = |v: f64| left + x.fraction(v) * PANEL_W;
    let py = |v: f64| TOP + PANEL_H - y.fraction(v) * PANEL_H;
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="15" font-weight="bold">{title}</text>"#,
        left + PANEL_W / 2.0,
        TOP - 14.0
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#444"/>"##
    );
    for t in x.ticks() {
        let _ = writeln!(
            svg,
            r##"<line x1="{0}" y1="{TOP}" x2="{0}" y2="{1}" stroke="#ddd"/><text x="{0}" y="{2}" text-anchor="middle" font-size="11">{3}</text>"##,
            px(t),
            TOP + PANEL_H,
            TOP + PANEL_H + 16.0,
            label(t)
        );
    }
    for t in y.ticks() {
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/><text x="{2}" y="{3}" text-anchor="end" font-size="11">{4}</text>"##,
            py(t),
            left + PANEL_W,
            left - 6.0,
            py(t) + 4.0,
            label(t)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="12">{x_label}</text>"#,
        left + PANEL_W / 2.0,
        TOP + PANEL_H + 36.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="{0}" y="{1}" text-anchor="middle" font-size="12" transform="rotate(-90 {0} {1})">{y_label}</text>"#,
        left - 52.0,
        TOP + PANEL_H / 2.0
    );
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(a, b)| format!("{:.1},{:.1}", px(a), py(b)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            path.join(" "),
            s.color
        );
        if !s.dashed {
            for &(a, b) in &s.points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"/>"#,
                    px(a),
                    py(b),
                    s.color
                );
            }
        }
        let ly = TOP + 16.0 + i as f64 * 16.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="{3}" stroke-width="2"{dash}/><text x="{4}" y="{5}" font-size="11">{6}</text>"#,
            left + 10.0,
            ly,
            left + 30.0,
            s.color,
            left + 36.0,
            ly + 4.0,
            s.name
        );
    }
}

/// The SVG document for `points` (sorted by offered load here). `subtitle`
/// names the machine and setup.
pub fn sweep_svg(points: &[SweepPoint], bound_tps: f64, subtitle: &str) -> String {
    let mut points = points.to_vec();
    points.sort_by(|a, b| a.offered_tps.total_cmp(&b.offered_tps));
    let top_tps = points
        .iter()
        .map(|p| p.offered_tps.max(p.committed_tps))
        .fold(1.0, f64::max);
    let x = Axis {
        min: 0.0,
        max: nice_max(top_tps),
        log: false,
    };
    // The committed axis reaches the signature bound, so the bound is
    // always drawn and the distance to it is seen.
    let y_tps = Axis {
        min: 0.0,
        max: nice_max(top_tps.max(bound_tps * 1.05)),
        log: false,
    };
    let slowest = points.iter().map(|p| p.p99_ms).fold(1.0, f64::max);
    let y_ms = Axis {
        min: 1.0,
        max: 10f64.powf(slowest.log10().ceil().max(1.0)),
        log: true,
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="13">{}</text>"#,
        WIDTH / 2.0,
        escape(subtitle)
    );
    let open: Vec<&SweepPoint> = points.iter().filter(|p| p.open_loop).collect();
    let closed: Vec<&SweepPoint> = points.iter().filter(|p| !p.open_loop).collect();
    let committed = Series {
        name: "committed tx/s (open loop)",
        color: "#1f77b4",
        points: open
            .iter()
            .map(|p| (p.offered_tps, p.committed_tps))
            .collect(),
        dashed: false,
    };
    let ideal = Series {
        name: "committed = offered",
        color: "#999",
        points: vec![(0.0, 0.0), (x.max, x.max)],
        dashed: true,
    };
    let bound_label = format!("signature bound {bound_tps:.0} tx/s");
    let mut throughput = vec![committed, ideal];
    if bound_tps > 0.0 {
        throughput.push(Series {
            name: &bound_label,
            color: "#d62728",
            points: vec![(0.0, bound_tps), (x.max, bound_tps)],
            dashed: true,
        });
    }
    panel(
        &mut svg,
        80.0,
        "Throughput",
        "offered load (tx/s)",
        "committed (tx/s)",
        &x,
        &y_tps,
        &throughput,
    );
    squares(
        &mut svg,
        80.0,
        &x,
        &y_tps,
        closed.iter().map(|p| (p.offered_tps, p.committed_tps)),
        0,
    );
    let p50 = Series {
        name: "p50 latency (open loop)",
        color: "#2ca02c",
        points: open.iter().map(|p| (p.offered_tps, p.p50_ms)).collect(),
        dashed: false,
    };
    let p99 = Series {
        name: "p99 latency (open loop)",
        color: "#ff7f0e",
        points: open.iter().map(|p| (p.offered_tps, p.p99_ms)).collect(),
        dashed: false,
    };
    panel(
        &mut svg,
        80.0 + PANEL_W + 120.0,
        "Commit latency (submit to seen committed)",
        "offered load (tx/s)",
        "latency (ms, log scale)",
        &x,
        &y_ms,
        &[p50, p99],
    );
    let right = 80.0 + PANEL_W + 120.0;
    for p in &open {
        if let Some(fraction) = p.fraction_of_peak {
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="#555">{:.0} %</text>"##,
                right + x.fraction(p.offered_tps) * PANEL_W,
                TOP + PANEL_H - y_ms.fraction(p.p99_ms) * PANEL_H - 8.0,
                fraction * 100.0
            );
        }
    }
    squares(
        &mut svg,
        right,
        &x,
        &y_ms,
        closed.iter().map(|p| (p.offered_tps, p.p50_ms)),
        2,
    );
    svg.push_str("</svg>\n");
    svg
}

/// Closed-loop points as black squares, with a legend line below the
/// panel's `legend_row` other entries.
fn squares(
    svg: &mut String,
    left: f64,
    x: &Axis,
    y: &Axis,
    points: impl Iterator<Item = (f64, f64)>,
    legend_row: usize,
) {
    let mut any = false;
    for (a, b) in points {
        any = true;
        let cx = left + x.fraction(a) * PANEL_W;
        let cy = TOP + PANEL_H - y.fraction(b) * PANEL_H;
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="black"/>"#,
            cx - 4.0,
            cy - 4.0
        );
    }
    if any {
        let ly = TOP + 16.0 + (legend_row + 3) as f64 * 16.0;
        let what = if legend_row == 0 { "committed" } else { "p50" };
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="black"/><text x="{:.1}" y="{:.1}" font-size="11">closed-loop peak ({what})</text>"#,
            left + 16.0,
            ly - 4.0,
            left + 36.0,
            ly + 4.0
        );
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(offered: f64, committed: f64, p50: f64, p99: f64) -> SweepPoint {
        SweepPoint {
            label: format!("{offered}"),
            open_loop: offered < 1000.0,
            offered_tps: offered,
            committed_tps: committed,
            p50_ms: p50,
            p99_ms: p99,
            fraction_of_peak: None,
        }
    }

    #[test]
    fn draws_every_point() {
        let points = vec![
            point(100.0, 99.0, 40.0, 90.0),
            point(2000.0, 1800.0, 120.0, 900.0),
        ];
        let svg = sweep_svg(&points, 1_500.0, "test <machine>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // One open-loop point: a circle per series; the closed one: squares.
        assert_eq!(svg.matches("<circle").count(), 3);
        assert_eq!(svg.matches("fill=\"black\"").count(), 4);
        assert!(svg.contains("test &lt;machine&gt;"));
        assert!(svg.contains("signature bound 1500 tx/s"));
        assert_eq!(nice_step(2000.0), 500.0);
        assert_eq!(nice_max(1800.0), 2000.0);
    }

    /// A bound far above the measured load still gets its line (the
    /// committed axis reaches it), and each fraction of the peak is named.
    #[test]
    fn the_bound_is_drawn_above_the_load_and_fractions_are_labelled() {
        let mut points = vec![
            point(500.0, 500.0, 30.0, 60.0),
            point(900.0, 880.0, 50.0, 200.0),
        ];
        points[0].fraction_of_peak = Some(0.5);
        points[1].fraction_of_peak = Some(0.9);
        let svg = sweep_svg(&points, 30_000.0, "t");
        assert!(svg.contains("signature bound 30000 tx/s"));
        assert!(svg.contains("stroke=\"#d62728\""));
        assert!(svg.contains(">50 %</text>") && svg.contains(">90 %</text>"));
        // No bound known (--chart-from without --chart-bound): no line.
        let svg = sweep_svg(&points, 0.0, "t");
        assert!(!svg.contains("#d62728"));
        // An old sweep.json without fractions still reads.
        let old = r#"[{"label":"x","open_loop":true,"offered_tps":1,"committed_tps":1,"p50_ms":1,"p99_ms":2}]"#;
        let read: Vec<SweepPoint> = serde_json::from_str(old).unwrap();
        assert_eq!(read[0].fraction_of_peak, None);
    }
}
