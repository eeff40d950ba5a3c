//! The report's plots, as SVG: peak RSS against input rows, wall time per case, and the
//! remote series' wall against latency.

use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::cases::rows_label;
use crate::cases::{Engine, Workload};
use crate::remote::{RemoteResults, RemoteStore};
use crate::runner::Results;

/// File name of the peak-RSS plot.
pub const RSS_PLOT: &str = "peak_rss_vs_rows.svg";
/// File name of the wall-time plot.
pub const WALL_PLOT: &str = "wall_by_case.svg";

/// The goal line on the RSS plot, in MiB.
const RSS_GOAL_MIB: f64 = 256.0;

fn color(engine: Engine) -> RGBColor {
    match engine {
        Engine::Lazy => RGBColor(31, 119, 180),
        Engine::Eager => RGBColor(255, 127, 14),
        Engine::DataFusion => RGBColor(44, 160, 44),
        Engine::Polars => RGBColor(214, 39, 40),
        Engine::DuckDb => RGBColor(148, 103, 189),
        Engine::Persisted => RGBColor(140, 86, 75),
        Engine::CacheHit => RGBColor(23, 190, 207),
        Engine::Mapped => RGBColor(188, 189, 34),
        Engine::LazyRewrite => RGBColor(127, 127, 127),
        Engine::LazyTrusted => RGBColor(0, 70, 140),
    }
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the plot: {e}")
}

/// Peak RSS (median) of the seed ETL against input rows, one line per engine.
pub fn peak_rss_vs_rows(results: &Results, path: &Path) -> anyhow::Result<()> {
    let sizes = results.etl_sizes();
    let lines: Vec<(Engine, Vec<(f64, f64)>)> = Engine::ALL
        .into_iter()
        .map(|engine| {
            let points = sizes
                .iter()
                .filter_map(|&rows| {
                    let case = results.find(Workload::Etl, engine, rows)?;
                    Some((rows as f64 / 1e6, case.rss().median))
                })
                .collect::<Vec<_>>();
            (engine, points)
        })
        .filter(|(_, points)| !points.is_empty())
        .collect();
    let x_max = sizes.last().map_or(1.0, |&r| r as f64 / 1e6) * 1.05;
    let y_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(RSS_GOAL_MIB, f64::max)
        * 1.1;

    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Seed ETL: peak RSS against input rows", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("input rows (millions)")
        .y_desc("peak RSS (MiB)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, RSS_GOAL_MIB), (x_max, RSS_GOAL_MIB)],
            BLACK.mix(0.4).stroke_width(1),
        ))
        .map_err(plot_error)?
        .label(format!("goal: {RSS_GOAL_MIB:.0} MiB"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.4)));
    // Sluice lazy last and thicker: plain DataFusion's line lies almost on top of it.
    for (engine, points) in lines.into_iter().rev() {
        let c = color(engine);
        let width = if engine == Engine::Lazy { 4 } else { 2 };
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(width)))
            .map_err(plot_error)?
            .label(engine.label())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(width)));
        chart
            .draw_series(points.into_iter().map(|p| Circle::new(p, 4, c.filled())))
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// Median wall time of every case at the largest main input size: one bar per
/// workload and engine.
pub fn wall_by_case(results: &Results, path: &Path) -> anyhow::Result<()> {
    let rows = results.main_sizes().last().copied().unwrap_or(0);
    let bars: Vec<(String, Engine, f64)> = Workload::ALL
        .into_iter()
        .flat_map(|workload| {
            Engine::ALL.into_iter().filter_map(move |engine| {
                let case = results.find(workload, engine, rows)?;
                Some((
                    format!("{workload} · {}", engine.label()),
                    engine,
                    case.wall().median,
                ))
            })
        })
        .collect();
    let n = bars.len().max(1) as u32;
    // Segment 0 is at the bottom: the first case goes in the top segment.
    let segment = |i: usize| n - 1 - i as u32;
    let x_max = bars.iter().map(|b| b.2).fold(0.1, f64::max) * 1.18;

    let height = 90 + 28 * n;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Wall time per case at {} input rows (median)",
                rows_label(rows)
            ),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(250)
        .build_cartesian_2d(0f64..x_max, (0u32..n).into_segmented())
        .map_err(plot_error)?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let label_of = move |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(s) if *s < n => labels
            .get((n - 1 - s) as usize)
            .cloned()
            .unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n as usize)
        .y_label_formatter(&label_of)
        .x_desc("wall time (s)")
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, engine, wall))| {
            let i = segment(i);
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (*wall, SegmentValue::Exact(i + 1)),
                ],
                color(*engine).filled(),
            );
            bar.set_margin(4, 4, 0, 0);
            bar
        }))
        .map_err(plot_error)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, _, wall))| {
            Text::new(
                format!(" {wall:.2} s"),
                (*wall, SegmentValue::CenterOf(segment(i))),
                ("sans-serif", 13),
            )
        }))
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// The remote series: median wall against the latency added per request, one panel per
/// workload, a line per engine and store (S3 thick, HTTP thin).
pub fn wall_vs_latency(results: &RemoteResults, path: &Path) -> anyhow::Result<()> {
    let mut workloads: Vec<Workload> = results.cases.iter().map(|c| c.workload).collect();
    workloads.sort_by_key(|w| w.name());
    workloads.dedup();
    let root =
        SVGBackend::new(path, (520 * workloads.len().max(1) as u32, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let panels = root.split_evenly((1, workloads.len().max(1)));
    for (panel, &workload) in panels.iter().zip(&workloads) {
        let cases: Vec<_> = results
            .cases
            .iter()
            .filter(|c| c.workload == workload)
            .collect();
        let x_max = cases
            .iter()
            .map(|c| c.latency_ms as f64)
            .fold(1.0, f64::max)
            * 1.05;
        let y_max = cases
            .iter()
            .flat_map(|c| c.samples.iter().map(|s| s.wall_s))
            .fold(0.5, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{workload}: wall against latency per request"),
                ("sans-serif", 18),
            )
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("latency added per request (ms)")
            .y_desc("wall (s), median")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .draw()
            .map_err(plot_error)?;
        let mut lines: Vec<(Engine, RemoteStore)> =
            cases.iter().map(|c| (c.engine, c.store)).collect();
        lines.sort_by_key(|&(e, s)| (e.name(), s));
        lines.dedup();
        for (engine, store) in lines {
            let mut points: Vec<(f64, f64)> = cases
                .iter()
                .filter(|c| c.engine == engine && c.store == store)
                .map(|c| {
                    let mut walls: Vec<f64> = c.samples.iter().map(|s| s.wall_s).collect();
                    walls.sort_by(f64::total_cmp);
                    (c.latency_ms as f64, walls[walls.len() / 2])
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let c = color(engine);
            let width = if store == RemoteStore::S3 { 3 } else { 1 };
            chart
                .draw_series(LineSeries::new(points.clone(), c.stroke_width(width)))
                .map_err(plot_error)?
                .label(format!("{}, {store}", engine.label()))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], c.stroke_width(width))
                });
            chart
                .draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}
