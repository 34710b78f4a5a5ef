//! The report's plot: the data-plane ratios per peer count, median with a min–max bar, as an
//! SVG that GitHub shows inline. Drawn with plotters' SVG backend and its built-in font
//! estimate, so no system font is needed.

use std::path::Path;

use plotters::prelude::*;

use crate::data_plane::{DataPlane, Ratio, PEER_COUNTS};
use crate::report::thousands;
use crate::stats::Summary;

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 460;
/// The ratios plotted: those the issue asks for (the report's table has all of them).
const PLOTTED: [&str; 4] = ["B/Z", "B/A", "C/A", "D/B"];
/// Colour-blind-safe colours (Okabe–Ito), one per plotted ratio.
const COLOURS: [RGBColor; 4] = [
    RGBColor(0, 114, 178),
    RGBColor(153, 153, 153),
    RGBColor(230, 159, 0),
    RGBColor(204, 121, 167),
];

/// One figure of a ratio: throughput or requests per CPU-second.
type Metric = fn(&Ratio) -> &Summary;

/// Height of the legend strip under the panels.
const LEGEND_HEIGHT: u32 = 40;

/// Draws throughput and requests-per-CPU ratios side by side into `path`, with one legend
/// under both panels (inside a panel it would hide points).
pub fn draw(data: &DataPlane, path: &Path) {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).expect("fill the plot");
    let (charts, legend) = root.split_vertically(HEIGHT - LEGEND_HEIGHT);
    let metrics: [(&str, Metric); 2] = [
        ("Throughput ratio (requests/s)", |r| &r.throughput),
        ("Requests per proxy CPU-second, ratio", |r| &r.requests_per_cpu),
    ];
    let plotted = |r: &&Ratio| PLOTTED.contains(&r.name.as_str());
    // One y range for both panels, so that they compare at a glance: around the medians, at
    // least 0.85 to 1.15. A min–max bar that goes further (a burst of noise in one round) is
    // cut at the frame rather than squeezing every median into a few pixels.
    let (low, high) = data
        .ratios
        .iter()
        .filter(plotted)
        .flat_map(|r| [r.throughput.median, r.requests_per_cpu.median])
        .fold((0.85_f64, 1.15_f64), |(lo, hi), v| (lo.min(v - 0.05), hi.max(v + 0.05)));
    let x_range = -0.5_f64..(PEER_COUNTS.len() as f64 - 0.5);
    for (panel, (title, metric)) in charts.split_evenly((1, 2)).iter().zip(metrics) {
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(48)
            .build_cartesian_2d(x_range.clone(), low..high)
            .expect("build a chart");
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(2 * PEER_COUNTS.len() + 1)
            .x_label_formatter(&|x| {
                let i = x.round();
                let is_group = (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < PEER_COUNTS.len();
                if is_group {
                    format!("{} peers", thousands(PEER_COUNTS[i as usize]))
                } else {
                    String::new()
                }
            })
            .y_desc("ratio")
            .y_label_formatter(&|y| format!("{y:.2}"))
            .draw()
            .expect("draw the mesh");
        chart
            .draw_series(LineSeries::new(
                [(x_range.start, 1.0), (x_range.end, 1.0)],
                BLACK.mix(0.5),
            ))
            .expect("draw the parity line");
        let spread = 0.7 / PLOTTED.len() as f64;
        for (k, (name, colour)) in PLOTTED.iter().zip(COLOURS).enumerate() {
            let ratios: Vec<&Ratio> = data.ratios.iter().filter(|r| r.name == *name).collect();
            if let Some(target) = ratios.first().and_then(|r| r.target) {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(x_range.start, target), (x_range.end, target)],
                        6,
                        4,
                        colour.stroke_width(1),
                    ))
                    .expect("draw a target line");
            }
            let offset = (k as f64 - (PLOTTED.len() as f64 - 1.0) / 2.0) * spread;
            let points: Vec<(f64, &Summary)> = ratios
                .iter()
                .map(|r| {
                    let group =
                        PEER_COUNTS.iter().position(|&n| n == r.peers).expect("a peer count");
                    (group as f64 + offset, metric(r))
                })
                .collect();
            chart
                .draw_series(points.iter().map(|&(x, s)| {
                    ErrorBar::new_vertical(x, s.min, s.median, s.max, colour.filled(), 8)
                }))
                .expect("draw min-max bars");
            chart
                .draw_series(
                    points.iter().map(|&(x, s)| Circle::new((x, s.median), 4, colour.filled())),
                )
                .expect("draw medians");
        }
    }
    draw_legend(data, &legend);
    root.present().unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// One row: a dot and a name per ratio, with its target (drawn dashed), and how to read it.
fn draw_legend(data: &DataPlane, area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) {
    let font = ("sans-serif", 14).into_font().color(&BLACK);
    let y = (LEGEND_HEIGHT / 2) as i32;
    let mut x = 60;
    let mut labels: Vec<(String, Option<RGBColor>)> = PLOTTED
        .iter()
        .zip(COLOURS)
        .map(|(name, colour)| {
            let target = data.ratios.iter().find(|r| r.name == *name).and_then(|r| r.target);
            let label = match target {
                Some(t) => format!("{name} (target {t}, dashed)"),
                None => (*name).to_owned(),
            };
            (label, Some(colour))
        })
        .collect();
    labels.push(("dot: median, bar: min–max of the rounds (cut at the frame)".into(), None));
    for (label, colour) in labels {
        if let Some(colour) = colour {
            area.draw(&Circle::new((x, y), 5, colour.filled())).expect("draw a legend dot");
            x += 10;
        }
        area.draw(&Text::new(label.as_str(), (x, y - 7), font.clone()))
            .expect("draw a legend label");
        let (width, _) = area.estimate_text_size(&label, &font).expect("estimate a label");
        x += width as i32 + 30;
    }
}
