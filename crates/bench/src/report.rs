//! `docs/BENCHMARKS.md` from the results: a table per workload and size, the memory
//! curve, the goals, and the plots.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use crate::cases::{Engine, Workload, rows_label};
use crate::runner::{CaseResult, Results, Series};

/// The line under which `BENCHMARKS.md` is written by hand; a new report keeps what
/// stands below it.
pub const HAND_WRITTEN_MARKER: &str = "<!-- Written by hand below this line: `sluice-bench` keeps it when it rewrites the report. -->";

/// The median, minimum and maximum of some figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// The middle value (the mean of the two middle ones for an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Stats {
    /// The stats of `values`; `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Stats> {
        let mut v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

impl CaseResult {
    /// Wall time, in seconds.
    pub fn wall(&self) -> Stats {
        Stats::of(self.samples.iter().map(|s| s.wall_s)).expect("a result has samples")
    }

    /// Peak RSS, in MiB.
    pub fn rss(&self) -> Stats {
        Stats::of(self.samples.iter().map(|s| s.peak_rss_mib)).expect("a result has samples")
    }
}

impl Results {
    /// The input sizes measured for the main tables, ascending.
    pub fn main_sizes(&self) -> Vec<u64> {
        self.sizes(|c| c.series == Series::Main)
    }

    /// Every input size the seed ETL ran at, ascending.
    pub fn etl_sizes(&self) -> Vec<u64> {
        self.sizes(|c| c.workload == Workload::Etl)
    }

    fn sizes(&self, keep: impl Fn(&CaseResult) -> bool) -> Vec<u64> {
        let mut sizes: Vec<u64> = self
            .cases
            .iter()
            .filter(|c| keep(c))
            .map(|c| c.rows)
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// The fastest peer's median wall time on `workload` at `rows`.
    fn fastest_peer(&self, workload: Workload, rows: u64) -> Option<(Engine, f64)> {
        Engine::ALL
            .into_iter()
            .filter(|e| e.is_peer())
            .filter_map(|e| Some((e, self.find(workload, e, rows)?.wall().median)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Writes `BENCHMARKS.md` and the plots under `out`, keeping the hand-written part of
/// an existing report.
pub fn write(results: &Results, out: &Path) -> anyhow::Result<()> {
    let bench_dir = out.join("bench");
    std::fs::create_dir_all(&bench_dir)
        .with_context(|| format!("cannot create {}", bench_dir.display()))?;
    let results_path = Results::path(out);
    std::fs::write(&results_path, serde_json::to_vec_pretty(results)?)
        .with_context(|| format!("cannot write {}", results_path.display()))?;
    crate::plots::peak_rss_vs_rows(results, &bench_dir.join(crate::plots::RSS_PLOT))?;
    crate::plots::wall_by_case(results, &bench_dir.join(crate::plots::WALL_PLOT))?;

    let report_path = out.join("BENCHMARKS.md");
    let kept = std::fs::read_to_string(&report_path)
        .ok()
        .and_then(|old| {
            old.split_once(HAND_WRITTEN_MARKER)
                .map(|(_, below)| below.to_string())
        })
        .unwrap_or_else(|| "\n".to_string());
    let text = format!("{}{HAND_WRITTEN_MARKER}{kept}", markdown(results));
    std::fs::write(&report_path, text)
        .with_context(|| format!("cannot write {}", report_path.display()))?;
    Ok(())
}

/// The generated part of the report.
pub fn markdown(results: &Results) -> String {
    let mut md = String::new();
    let m = &results.machine;
    let versions: Vec<String> = results
        .versions
        .iter()
        .map(|(name, version)| format!("{name} {version}"))
        .collect();
    let _ = writeln!(
        md,
        "# Benchmarks\n\n\
         Measured {} on {} cores ({}), {:.1} GiB of memory, Linux {}; {}.\n\n\
         Regenerate with `cargo run --release -p sluice-bench -- run` (see `--help`; the \
         Python peers need `pip install polars duckdb`). Each case runs as its own process: \
         wall time is spawn to exit, peak RSS is the process's `ru_maxrss`. A figure is the \
         median of {} runs after {} warm-up run(s), the engines interleaved round by round, \
         with the min–max range beside it. Input: taxi data from `sluice-testkit`'s generator \
         (19 columns, Snappy, 1M-row row groups, one file) in a warm page cache; output: one \
         Parquet file, zstd level 3, row groups of 262,144 rows (Sluice's default; Polars' sink \
         writes groups of about 105,000 rows here, DuckDB of 122,880). The Python peers' figures include starting Python and \
         importing the library (about 0.2 s each here).\n",
        results.date,
        m.cores,
        m.cpu,
        m.memory_gib,
        m.kernel,
        versions.join(", "),
        results.runs,
        results.warmup,
    );
    for note in &results.notes {
        let _ = writeln!(md, "- Note: {note}");
    }
    if !results.notes.is_empty() {
        md.push('\n');
    }

    goals(results, &mut md);

    let _ = writeln!(
        md,
        "## Plots\n\n\
         ![Peak RSS against input rows, seed ETL](bench/{})\n\n\
         ![Wall time per case](bench/{})\n",
        crate::plots::RSS_PLOT,
        crate::plots::WALL_PLOT
    );

    for workload in Workload::ALL {
        for rows in results.main_sizes() {
            case_table(results, workload, rows, &mut md);
        }
    }
    memory_curve(results, &mut md);
    let _ = writeln!(
        md,
        "Raw figures: [`bench/results.json`](bench/results.json).\n"
    );
    md
}

fn case_table(results: &Results, workload: Workload, rows: u64, md: &mut String) {
    let cases: Vec<&CaseResult> = Engine::ALL
        .into_iter()
        .filter_map(|e| results.find(workload, e, rows))
        .collect();
    if cases.is_empty() {
        return;
    }
    let peer = results.fastest_peer(workload, rows);
    let eager = results.find(workload, Engine::Eager, rows);
    let _ = writeln!(
        md,
        "## {workload} at {} rows\n\n{}.\n\n\
         | engine | wall (median) | wall min–max | peak RSS (median) | RSS min–max | wall vs fastest peer{} | vs eager: wall, RSS | rows out | output |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|",
        rows_label(rows),
        capitalize(workload.description()),
        peer.map(|(e, _)| format!(" ({})", e.label()))
            .unwrap_or_default(),
    );
    for case in cases {
        let (wall, rss) = (case.wall(), case.rss());
        let vs_peer = peer
            .map(|(_, p)| format!("{:.2}x", wall.median / p))
            .unwrap_or_else(|| "–".into());
        let vs_eager = eager
            .map(|e| {
                format!(
                    "{:.2}x, {:.2}x",
                    wall.median / e.wall().median,
                    rss.median / e.rss().median
                )
            })
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            md,
            "| {} | {:.2} s | {:.2}–{:.2} s | {:.0} MiB | {:.0}–{:.0} MiB | {vs_peer} | {vs_eager} | {} | {:.1} MiB |",
            case.engine.label(),
            wall.median,
            wall.min,
            wall.max,
            rss.median,
            rss.min,
            rss.max,
            case.rows_out,
            case.bytes_out as f64 / (1 << 20) as f64,
        );
    }
    md.push('\n');
}

fn memory_curve(results: &Results, md: &mut String) {
    let sizes = results.etl_sizes();
    let engines: Vec<Engine> = Engine::ALL
        .into_iter()
        .filter(|&e| {
            sizes
                .iter()
                .any(|&r| results.find(Workload::Etl, e, r).is_some())
        })
        .collect();
    if sizes.is_empty() || engines.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Memory curve: the seed ETL from {} to {} rows\n\n\
         Peak RSS (median) and wall time; sizes beyond the main tables ran {} time(s).\n",
        rows_label(sizes[0]),
        rows_label(*sizes.last().expect("not empty")),
        results.curve_runs,
    );
    let header: Vec<&str> = engines.iter().map(|e| e.label()).collect();
    let _ = writeln!(
        md,
        "| input rows | {} |\n|---:|{}",
        header.join(" | "),
        "---:|".repeat(engines.len())
    );
    for rows in sizes {
        let cells: Vec<String> = engines
            .iter()
            .map(|&e| match results.find(Workload::Etl, e, rows) {
                Some(c) => format!("{:.0} MiB, {:.1} s", c.rss().median, c.wall().median),
                None => "–".into(),
            })
            .collect();
        let _ = writeln!(md, "| {} | {} |", rows_label(rows), cells.join(" | "));
    }
    md.push('\n');
}

/// A goal of the benchmark issue, judged on the figures.
struct Goal {
    text: &'static str,
    measured: String,
    met: Option<bool>,
}

fn goals(results: &Results, md: &mut String) {
    let etl = |engine, rows| results.find(Workload::Etl, engine, rows);
    let main_sizes = results.main_sizes();
    let mut list = Vec::new();

    // 1. Lazy wall <= 0.8x the faster peer, at every main size.
    let mut parts = Vec::new();
    let mut met = None;
    for &rows in &main_sizes {
        if let (Some(lazy), Some((peer, wall))) = (
            etl(Engine::Lazy, rows),
            results.fastest_peer(Workload::Etl, rows),
        ) {
            let ratio = lazy.wall().median / wall;
            parts.push(format!(
                "{ratio:.2}x {} at {}",
                peer.label(),
                rows_label(rows)
            ));
            met = Some(met.unwrap_or(true) && ratio <= 0.8);
        }
    }
    list.push(Goal {
        text: "Lazy wall ≤ 0.8x the faster of Polars and DuckDB (seed ETL)",
        measured: parts.join("; "),
        met,
    });

    // 2. Lazy peak RSS <= 256 MiB and flat over every size the ETL ran at.
    let lazy_rss: Vec<(u64, f64)> = results
        .etl_sizes()
        .into_iter()
        .filter_map(|rows| Some((rows, etl(Engine::Lazy, rows)?.rss().median)))
        .collect();
    let (measured, met) = match (lazy_rss.first(), lazy_rss.last()) {
        (Some(first), Some(last)) if lazy_rss.len() > 1 => {
            let peak = lazy_rss.iter().map(|r| r.1).fold(0.0, f64::max);
            let low = lazy_rss.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
            (
                format!(
                    "{:.0} MiB at {}, {:.0} MiB at {}; highest {peak:.0} MiB, highest/lowest {:.2}",
                    first.1,
                    rows_label(first.0),
                    last.1,
                    rows_label(last.0),
                    peak / low
                ),
                Some(peak <= 256.0 && peak / low <= 1.25),
            )
        }
        _ => ("needs the seed ETL at two sizes or more".to_string(), None),
    };
    list.push(Goal {
        text: "Lazy peak RSS ≤ 256 MiB and flat (highest/lowest ≤ 1.25) from 3M to 48M rows",
        measured,
        met,
    });

    // 3. Lazy RSS <= eager / 5 at 12M (or the largest main size).
    let at = if main_sizes.contains(&12_000_000) {
        Some(12_000_000)
    } else {
        main_sizes.last().copied()
    };
    let (measured, met) =
        match at.and_then(|r| Some((r, etl(Engine::Lazy, r)?, etl(Engine::Eager, r)?))) {
            Some((rows, lazy, eager)) => {
                let ratio = lazy.rss().median / eager.rss().median;
                (
                    format!(
                        "{:.0} MiB lazy, {:.0} MiB eager at {}: 1/{:.1}",
                        lazy.rss().median,
                        eager.rss().median,
                        rows_label(rows),
                        1.0 / ratio
                    ),
                    Some(ratio <= 0.2),
                )
            }
            None => ("needs lazy and eager runs".to_string(), None),
        };
    list.push(Goal {
        text: "Lazy peak RSS ≤ 1/5 of eager at 12M rows",
        measured,
        met,
    });

    // 4. Overhead over plain DataFusion <= 5%, every workload at the largest main size.
    let mut parts = Vec::new();
    let mut met = None;
    if let Some(&rows) = main_sizes.last() {
        for workload in Workload::ALL {
            if let (Some(lazy), Some(plain)) = (
                results.find(workload, Engine::Lazy, rows),
                results.find(workload, Engine::DataFusion, rows),
            ) {
                let overhead = lazy.wall().median / plain.wall().median - 1.0;
                parts.push(format!("{workload} {:+.1}%", overhead * 100.0));
                met = Some(met.unwrap_or(true) && overhead <= 0.05);
            }
        }
        if !parts.is_empty() {
            parts.push(format!("at {}", rows_label(rows)));
        }
    }
    list.push(Goal {
        text: "Sluice lazy over the same plan in plain DataFusion ≤ +5% wall",
        measured: parts.join(", "),
        met,
    });

    // 5-7. Checkpoints: the tee's cost, and what a hit saves.
    let largest = main_sizes.last().copied();
    let ratio_of = |workload, engine, rows| {
        Some(
            results.find(workload, engine, rows)?.wall().median
                / results.find(workload, Engine::Lazy, rows)?.wall().median,
        )
    };
    let (measured, met) = match largest.and_then(|rows| {
        let persisted = results.find(Workload::Etl, Engine::Persisted, rows)?;
        Some((
            rows,
            ratio_of(Workload::Etl, Engine::Persisted, rows)?,
            persisted.rss().median,
        ))
    }) {
        Some((rows, ratio, rss)) => (
            format!(
                "{ratio:.2}x lazy wall, {rss:.0} MiB peak RSS at {}",
                rows_label(rows)
            ),
            Some(ratio <= 1.3 && rss <= 256.0),
        ),
        None => ("needs the persisted and lazy cases".to_string(), None),
    };
    list.push(Goal {
        text: "Persisted seed ETL ≤ 1.3x the unpersisted lazy wall, peak RSS still ≤ 256 MiB",
        measured,
        met,
    });
    let (measured, met) = match largest
        .and_then(|rows| Some((rows, ratio_of(Workload::Aggregate, Engine::CacheHit, rows)?)))
    {
        Some((rows, ratio)) => (
            format!(
                "{:.1}% of the cold wall at {}",
                ratio * 100.0,
                rows_label(rows)
            ),
            Some(ratio <= 0.10),
        ),
        None => (
            "needs the cache-hit and lazy aggregation cases".to_string(),
            None,
        ),
    };
    list.push(Goal {
        text: "Cache-hit rerun of the aggregation ≤ 10% of its cold wall",
        measured,
        met,
    });
    let hits: Vec<String> = Workload::ALL
        .into_iter()
        .filter_map(|w| {
            let rows = largest?;
            let ratio = ratio_of(w, Engine::CacheHit, rows)?;
            Some(format!("{w} {:.0}%", ratio * 100.0))
        })
        .collect();
    list.push(Goal {
        text: "Source bytes read on a cache hit: 0 (counted by the case, which fails otherwise); \
               hit wall against cold",
        measured: if hits.is_empty() {
            String::new()
        } else {
            format!("0 bytes in every cache-hit run; {}", hits.join(", "))
        },
        met: (!hits.is_empty()).then_some(true),
    });

    // 8. Mapping: the seed ETL over 4 files mapped against one file of the same rows.
    let (measured, met) = match largest
        .and_then(|rows| Some((rows, ratio_of(Workload::Etl, Engine::Mapped, rows)?)))
    {
        Some((rows, ratio)) => (
            format!("{ratio:.2}x the one-file wall at {}", rows_label(rows)),
            Some(ratio <= 1.1),
        ),
        None => ("needs the mapped and lazy cases".to_string(), None),
    };
    list.push(Goal {
        text: "Seed ETL over 4 files mapped within 10% of one file of the same rows",
        measured,
        met,
    });

    let _ = writeln!(md, "## Goals\n\n| goal | measured | |\n|---|---|---|");
    for goal in list {
        let verdict = match goal.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(md, "| {} | {} | {verdict} |", goal.text, goal.measured);
    }
    md.push('\n');
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::Sample;
    use crate::runner::Machine;
    use std::collections::BTreeMap;

    #[test]
    fn stats_take_the_middle() {
        let s = Stats::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stats::of([4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Stats::of([]), None);
    }

    #[test]
    fn rows_read_as_people_say_them() {
        assert_eq!(rows_label(3_000_000), "3M");
        assert_eq!(rows_label(1_500_000), "1.5M");
        assert_eq!(rows_label(20_000), "20k");
        assert_eq!(rows_label(1234), "1234");
    }

    fn case(workload: Workload, engine: Engine, rows: u64, walls: &[f64], rss: f64) -> CaseResult {
        CaseResult {
            workload,
            engine,
            rows,
            series: if rows > 12_000_000 {
                Series::Curve
            } else {
                Series::Main
            },
            samples: walls
                .iter()
                .map(|&wall_s| Sample {
                    wall_s,
                    peak_rss_mib: rss,
                })
                .collect(),
            rows_out: rows,
            bytes_out: rows * 16,
        }
    }

    fn results(cases: Vec<CaseResult>) -> Results {
        Results {
            date: "2026-11-26T06:00:00Z".into(),
            machine: Machine {
                cores: 2,
                memory_gib: 24.0,
                cpu: "test cpu".into(),
                kernel: "6.1".into(),
            },
            runs: 3,
            warmup: 1,
            curve_runs: 1,
            versions: BTreeMap::from([("datafusion".to_string(), "55.2.0".to_string())]),
            notes: vec!["DuckDB COPY skipped: no duckdb".into()],
            cases,
        }
    }

    /// The tables give medians and ratios; the goals are judged on the figures; the
    /// hand-written part of an existing report survives a rewrite.
    #[test]
    fn report_tables_goals_and_kept_text() -> anyhow::Result<()> {
        let r = results(vec![
            case(
                Workload::Etl,
                Engine::Lazy,
                3_000_000,
                &[1.0, 1.2, 1.1],
                170.0,
            ),
            case(
                Workload::Etl,
                Engine::Eager,
                3_000_000,
                &[1.5, 1.5, 1.5],
                600.0,
            ),
            case(
                Workload::Etl,
                Engine::DataFusion,
                3_000_000,
                &[1.0, 1.0, 1.0],
                160.0,
            ),
            case(
                Workload::Etl,
                Engine::Polars,
                3_000_000,
                &[2.0, 2.0, 2.0],
                540.0,
            ),
            case(Workload::Etl, Engine::Lazy, 48_000_000, &[16.0], 180.0),
            case(Workload::Etl, Engine::Eager, 48_000_000, &[30.0], 9000.0),
        ]);
        let md = markdown(&r);
        assert!(md.contains("| Sluice lazy | 1.10 s | 1.00–1.20 s | 170 MiB | 170–170 MiB | 0.55x | 0.73x, 0.28x | 3000000 | 45.8 MiB |"), "{md}");
        assert!(md.contains("wall vs fastest peer (Polars streaming)"));
        assert!(md.contains("- Note: DuckDB COPY skipped: no duckdb"));
        assert!(
            md.contains("| 0.55x Polars streaming at 3M | met |"),
            "{md}"
        );
        assert!(
            md.contains("highest 180 MiB, highest/lowest 1.06 | met |"),
            "{md}"
        );
        assert!(
            md.contains("| 170 MiB lazy, 600 MiB eager at 3M: 1/3.5 | **missed** |"),
            "{md}"
        );
        assert!(md.contains("| etl +10.0%, at 3M | **missed** |"), "{md}");
        assert!(
            md.contains("| 48M | 180 MiB, 16.0 s | 9000 MiB, 30.0 s | – | – |"),
            "{md}"
        );

        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("BENCHMARKS.md"),
            format!("old generated text\n{HAND_WRITTEN_MARKER}\n## Where time goes\nkept\n"),
        )?;
        write(&r, dir.path())?;
        let written = std::fs::read_to_string(dir.path().join("BENCHMARKS.md"))?;
        assert!(!written.contains("old generated text"));
        assert!(written.ends_with(&format!(
            "{HAND_WRITTEN_MARKER}\n## Where time goes\nkept\n"
        )));
        for plot in [crate::plots::RSS_PLOT, crate::plots::WALL_PLOT] {
            let svg = std::fs::read_to_string(dir.path().join("bench").join(plot))?;
            assert!(
                svg.starts_with("<svg") && svg.contains("Sluice lazy"),
                "{plot}"
            );
        }
        let reloaded = Results::load(dir.path())?;
        assert_eq!(reloaded.cases.len(), 6);
        Ok(())
    }
}
