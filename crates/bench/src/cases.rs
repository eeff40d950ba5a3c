//! What is measured: workloads (what a pipeline computes) and engines (what runs it).
//!
//! The Sluice engines and plain DataFusion run in this binary (`sluice-bench case ...`,
//! one process per run); the peers run the Python scripts in `crates/bench/peers/`.

use std::fmt;
use std::path::Path;

use clap::ValueEnum;
use datafusion::common::config::TableParquetOptions;
use datafusion::dataframe::{DataFrame, DataFrameWriteOptions};
use datafusion::functions::expr_fn::date_part;
use datafusion::prelude::{ParquetReadOptions, SessionContext, ident};
use serde::{Deserialize, Serialize};
use sluice::prelude::*;
use sluice::{CheckpointFormat, Compression};

/// The zstd level every engine writes with (Polars' and DuckDB's default).
pub const ZSTD_LEVEL: i32 = 3;

/// What a case computes, from taxi Parquet to a Parquet file (zstd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// The seed ETL: every column plus `tip_fraction = tip_amount / total_amount`.
    Etl,
    /// Mean `tip_fraction` by `PULocationID` and pickup hour.
    Aggregate,
    /// Read and rewrite with no transform: the I/O floor.
    Rewrite,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 3] = [Workload::Etl, Workload::Aggregate, Workload::Rewrite];

    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Etl => "etl",
            Workload::Aggregate => "aggregate",
            Workload::Rewrite => "rewrite",
        }
    }

    /// One line on what the workload does.
    pub fn description(self) -> &'static str {
        match self {
            Workload::Etl => {
                "the seed ETL: read, add `tip_fraction = tip_amount / total_amount`, write every column (zstd)"
            }
            Workload::Aggregate => {
                "mean `tip_fraction` by `PULocationID` and pickup hour, written as Parquet"
            }
            Workload::Rewrite => {
                "read and rewrite every column as zstd Parquet, no transform: the I/O floor"
            }
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// What runs a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// A Sluice flow in lazy mode: the tasks compose into one streaming plan.
    Lazy,
    /// The same flow in eager mode: each task's output collected in memory.
    Eager,
    /// The same plan written directly against DataFusion, without Sluice.
    #[value(name = "datafusion")]
    #[serde(rename = "datafusion")]
    DataFusion,
    /// Polars' streaming engine: `scan_parquet → … → sink_parquet`.
    Polars,
    /// DuckDB: one `COPY (SELECT …) TO … (FORMAT parquet)`.
    #[value(name = "duckdb")]
    #[serde(rename = "duckdb")]
    DuckDb,
    /// Sluice lazy with the workload's last transform persisted (`Persist::Tee`) to a local
    /// result store, recomputed and rewritten on every run (`refresh`): the cost of
    /// checkpointing.
    Persisted,
    /// Sluice lazy rerun against a valid checkpoint of that transform: a cache hit.
    /// The case fails unless the transform was `Cached` and no source byte was read.
    #[value(name = "cache-hit")]
    #[serde(rename = "cache-hit")]
    CacheHit,
    /// Sluice lazy over the same rows split into 4 files, `extract` mapped over them
    /// and the frames concatenated: the cost of mapping against one file.
    Mapped,
    /// Sluice lazy with the Parquet sink's column copy turned off
    /// (`SLUICE_COLUMN_COPY=0`): every column decoded and encoded again.
    #[value(name = "lazy-rewrite")]
    #[serde(rename = "lazy-rewrite")]
    LazyRewrite,
    /// Sluice lazy with the column copy but without its validation of copied values
    /// (`ParquetWrite::with_validation(false)`), for trusted inputs.
    #[value(name = "lazy-trusted")]
    #[serde(rename = "lazy-trusted")]
    LazyTrusted,
}

/// How many files the mapped engine reads.
pub const MAPPED_FILES: usize = 4;

/// The 4 files of the mapped engine for `input`: `<stem>-4files/part-0000N.parquet`,
/// holding the same number of rows as `input`.
pub fn mapped_dir(input: &Path) -> std::path::PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    input.with_file_name(format!("{stem}-{MAPPED_FILES}files"))
}

impl Engine {
    /// Every engine, in report order.
    pub const ALL: [Engine; 10] = [
        Engine::Lazy,
        Engine::LazyRewrite,
        Engine::LazyTrusted,
        Engine::Eager,
        Engine::DataFusion,
        Engine::Polars,
        Engine::DuckDb,
        Engine::Persisted,
        Engine::CacheHit,
        Engine::Mapped,
    ];

    /// Whether the case reads or writes a result store.
    pub fn uses_cache(self) -> bool {
        matches!(self, Engine::Persisted | Engine::CacheHit)
    }

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Lazy => "lazy",
            Engine::Eager => "eager",
            Engine::DataFusion => "datafusion",
            Engine::Polars => "polars",
            Engine::DuckDb => "duckdb",
            Engine::Persisted => "persisted",
            Engine::CacheHit => "cache-hit",
            Engine::Mapped => "mapped",
            Engine::LazyRewrite => "lazy-rewrite",
            Engine::LazyTrusted => "lazy-trusted",
        }
    }

    /// The name in tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Engine::Lazy => "Sluice lazy",
            Engine::Eager => "Sluice eager",
            Engine::DataFusion => "DataFusion, no Sluice",
            Engine::Polars => "Polars streaming",
            Engine::DuckDb => "DuckDB COPY",
            Engine::Persisted => "Sluice lazy, persisted",
            Engine::CacheHit => "Sluice lazy, cache hit",
            Engine::Mapped => "Sluice lazy, 4 files mapped",
            Engine::LazyRewrite => "Sluice lazy, column copy off",
            Engine::LazyTrusted => "Sluice lazy, copy unvalidated",
        }
    }

    /// A Python peer, run through a script in `crates/bench/peers/`.
    pub fn is_peer(self) -> bool {
        self.peer_module().is_some()
    }

    /// The Python module a peer imports.
    pub fn peer_module(self) -> Option<&'static str> {
        match self {
            Engine::Polars => Some("polars"),
            Engine::DuckDb => Some("duckdb"),
            _ => None,
        }
    }

    /// The peer's script, by absolute path in this checkout.
    pub fn peer_script(self) -> Option<&'static str> {
        match self {
            Engine::Polars => Some(concat!(env!("CARGO_MANIFEST_DIR"), "/peers/polars_case.py")),
            Engine::DuckDb => Some(concat!(env!("CARGO_MANIFEST_DIR"), "/peers/duckdb_case.py")),
            _ => None,
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Runs one case of an in-process engine (Sluice or plain DataFusion) in this process;
/// `cache` is the result store of the persisted and cache-hit engines.
pub async fn run_case(
    workload: Workload,
    engine: Engine,
    input: &Path,
    output: &Path,
    cache: Option<&Path>,
    runner: Option<sluice::Runner>,
    record: Option<&Path>,
) -> anyhow::Result<()> {
    // Boxed: a flow's future is large, and callers hold several cases in one future
    // on a thread's stack (a test's).
    Box::pin(run_one_case(
        workload, engine, input, output, cache, runner, record,
    ))
    .await
}

async fn run_one_case(
    workload: Workload,
    engine: Engine,
    input: &Path,
    output: &Path,
    cache: Option<&Path>,
    runner: Option<sluice::Runner>,
    record: Option<&Path>,
) -> anyhow::Result<()> {
    let input = input
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("input path is not UTF-8"))?;
    let output = output
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("output path is not UTF-8"))?;
    match engine {
        Engine::Lazy | Engine::Eager | Engine::LazyRewrite | Engine::LazyTrusted => {
            let mode = if engine == Engine::Eager {
                ExecutionMode::Eager
            } else {
                ExecutionMode::Lazy
            };
            let mut call = pipeline(workload, input, output).with_mode(mode);
            if let Some(runner) = runner {
                call = call.with_runner(runner);
            }
            let run = call.run().await;
            if let Some(path) = record {
                std::fs::write(path, serde_json::to_vec(&run.record)?)?;
            }
            run.output?;
        }
        Engine::DataFusion => plain_datafusion(workload, input, output).await?,
        Engine::Mapped => {
            let dir = mapped_dir(Path::new(input));
            let mut parts: Vec<String> = std::fs::read_dir(&dir)
                .map_err(|e| anyhow::anyhow!("no split input at {}: {e}", dir.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.path().display().to_string())
                .filter(|p| p.ends_with(".parquet"))
                .collect();
            parts.sort();
            anyhow::ensure!(
                parts.len() == MAPPED_FILES,
                "{} holds {} Parquet files, not {MAPPED_FILES}",
                dir.display(),
                parts.len()
            );
            mapped_pipeline(workload, parts, output).await?;
        }
        Engine::Persisted | Engine::CacheHit => {
            let cache =
                cache.ok_or_else(|| anyhow::anyhow!("{} needs --cache DIR", engine.label()))?;
            cached_case(workload, engine, input, output, cache).await?;
        }
        Engine::Polars | Engine::DuckDb => {
            anyhow::bail!(
                "{} runs through its Python script, not in this process",
                engine.label()
            )
        }
    }
    Ok(())
}

#[task]
async fn extract(cx: &TaskContext, source: &str) -> Result<Frame> {
    cx.read_parquet(source).await
}

#[task]
async fn add_tip_fraction(df: Frame) -> Result<Frame> {
    df.with_column("tip_fraction", col("tip_amount") / col("total_amount"))
}

#[task]
async fn tips_by_zone_and_hour(df: Frame) -> Result<Frame> {
    df.aggregate(
        [col("PULocationID"), pickup_hour()],
        [avg(col("tip_fraction")).alias("mean_tip_fraction")],
    )
}

#[task]
async fn load(df: Frame, dest: &str) -> Result<WriteSummary> {
    df.write_parquet(dest, write_options()).await
}

/// The environment variable naming the output codec of every engine: `zstd` (level
/// [`ZSTD_LEVEL`], the default) or `snappy`. The runner sets it from `--output-codec`.
pub const CODEC_ENV: &str = "SLUICE_BENCH_CODEC";

/// The environment variable that turns the column copy's validation off (`0`): the
/// runner sets it for [`Engine::LazyTrusted`].
pub const VALIDATE_ENV: &str = "SLUICE_BENCH_VALIDATE";

/// Whether the output is Snappy rather than zstd.
fn snappy_output() -> bool {
    std::env::var(CODEC_ENV).is_ok_and(|c| c == "snappy")
}

/// How every Sluice engine writes.
fn write_options() -> ParquetWrite {
    let options = if snappy_output() {
        ParquetWrite::snappy()
    } else {
        ParquetWrite::zstd(ZSTD_LEVEL)
    };
    options.with_validation(std::env::var(VALIDATE_ENV).map_or(true, |v| v != "0"))
}

/// The benchmark pipeline as a Sluice flow: one task per step, as a user writes it.
#[flow]
async fn pipeline(workload: Workload, source: &str, dest: &str) -> Result<WriteSummary> {
    let mut df = extract(source).await?;
    if workload != Workload::Rewrite {
        df = add_tip_fraction(df).await?;
    }
    if workload == Workload::Aggregate {
        df = tips_by_zone_and_hour(df).await?;
    }
    load(df, dest).await
}

/// The benchmark pipeline with `extract` mapped over several files, concatenated.
#[flow]
async fn mapped_pipeline(
    workload: Workload,
    sources: Vec<String>,
    dest: &str,
) -> Result<WriteSummary> {
    let parts = map(&sources, |source| extract(source)).await?;
    let mut df = Frame::concat(parts)?;
    if workload != Workload::Rewrite {
        df = add_tip_fraction(df).await?;
    }
    if workload == Workload::Aggregate {
        df = tips_by_zone_and_hour(df).await?;
    }
    load(df, dest).await
}

/// The name of the task a workload persists: its last transform.
pub fn persisted_task(workload: Workload) -> &'static str {
    match workload {
        Workload::Etl => "add_tip_fraction",
        Workload::Aggregate => "tips_by_zone_and_hour",
        Workload::Rewrite => "extract",
    }
}

/// The pipeline with the workload's last transform persisted (`Persist::Tee`) in `cache`.
#[flow]
async fn persisted_pipeline(
    workload: Workload,
    source: &str,
    dest: &str,
    refresh: bool,
) -> Result<WriteSummary> {
    let verify = std::env::var("SLUICE_BENCH_VERIFY").map_or(true, |v| v != "0");
    let policy = CachePolicy::inputs()
        .refresh(refresh)
        .verify_checksums(verify);
    let persisted = Task::new(persisted_task(workload))
        .with_version("bench-1")
        .cache(policy)
        .with_checkpoint_format(checkpoint_format()?);
    let source = source.to_string();
    let df = match workload {
        Workload::Rewrite => {
            persisted
                .run(|cx| {
                    let source = source.clone();
                    async move { cx.read_parquet(&source).await }
                })
                .await?
        }
        Workload::Etl => {
            let raw = extract(&source).await?;
            persisted
                .run(|_cx| {
                    let raw = raw.clone();
                    async move {
                        raw.with_column("tip_fraction", col("tip_amount") / col("total_amount"))
                    }
                })
                .await?
        }
        Workload::Aggregate => {
            let df = add_tip_fraction(extract(&source).await?).await?;
            persisted
                .run(|_cx| {
                    let df = df.clone();
                    async move {
                        df.aggregate(
                            [col("PULocationID"), pickup_hour()],
                            [avg(col("tip_fraction")).alias("mean_tip_fraction")],
                        )
                    }
                })
                .await?
        }
    };
    load(df, dest).await
}

/// The checkpoint format: Sluice's default, or `SLUICE_BENCH_CHECKPOINT_CODEC`
/// (`lz4`, `snappy`, `zstd1`, `zstd3`, `none`; `+dict`/`+nodict` for dictionary
/// encoding, `+stats`/`+nostats` for page statistics, `+ROWS` for the row-group size),
/// the knob used to pick the default. A codec named is every write's: the column copy
/// writes a checkpoint of another codec than the output's beside it, each copied chunk
/// recompressed for it.
fn checkpoint_format() -> Result<CheckpointFormat> {
    let Ok(spec) = std::env::var("SLUICE_BENCH_CHECKPOINT_CODEC") else {
        return Ok(CheckpointFormat::default());
    };
    let mut parts = spec.split('+');
    let codec = parts.next().unwrap_or_default();
    let mut format = CheckpointFormat::default();
    for extra in parts {
        format = match extra {
            "dict" => format.with_dictionary(true),
            "nodict" => format.with_dictionary(false),
            "stats" => format.with_statistics(true),
            "nostats" => format.with_statistics(false),
            rows => format.with_row_group_rows(rows.parse().map_err(|_| Error::InvalidOption {
                option: "SLUICE_BENCH_CHECKPOINT_CODEC",
                reason: format!("{rows:?}: use +dict, +nodict, +stats, +nostats or +ROWS"),
            })?),
        };
    }
    let compression = match codec {
        "lz4" => Compression::Lz4,
        "snappy" => Compression::Snappy,
        "zstd1" => Compression::Zstd(1),
        "zstd3" => Compression::Zstd(3),
        "none" => Compression::Uncompressed,
        other => {
            return Err(Error::InvalidOption {
                option: "SLUICE_BENCH_CHECKPOINT_CODEC",
                reason: format!("{other:?}: use lz4, snappy, zstd1, zstd3 or none"),
            });
        }
    };
    Ok(format.with_compression(compression))
}

/// A persisted run (recomputing and replacing the checkpoint), or a cache-hit rerun
/// that must read no source byte: the input is read through a store that counts.
async fn cached_case(
    workload: Workload,
    engine: Engine,
    input: &str,
    output: &str,
    cache: &Path,
) -> anyhow::Result<()> {
    use sluice_testkit::counting_store::CountingStore;
    use std::sync::Arc;
    let absolute = std::fs::canonicalize(input)?;
    let counting = Arc::new(
        CountingStore::new(Arc::new(object_store::local::LocalFileSystem::new()))
            .counting_only_under(absolute.display().to_string().trim_start_matches('/')),
    );
    let session = Session::builder()
        .with_object_store(
            &url::Url::parse("file:///")?,
            Arc::clone(&counting) as Arc<dyn object_store::ObjectStore>,
        )
        .build()?;
    let hit = engine == Engine::CacheHit;
    let run = persisted_pipeline(workload, input, output, !hit)
        .with_session(session)
        .with_result_store(cache.display().to_string())
        .run()
        .await;
    run.output?;
    let task = run
        .record
        .task(persisted_task(workload))
        .ok_or_else(|| anyhow::anyhow!("no run of the persisted task"))?;
    if hit {
        anyhow::ensure!(
            task.state == TaskState::Cached,
            "the cache-hit case found no valid checkpoint ({:?}); run the persisted case first",
            task.state
        );
        let read = counting.bytes_read();
        anyhow::ensure!(read == 0, "a cache hit read {read} source bytes");
    } else {
        anyhow::ensure!(
            task.cache.as_ref().is_some_and(|c| c.committed),
            "the persisted case committed no checkpoint"
        );
    }
    Ok(())
}

/// The hour of the pickup, as the `pickup_hour` group key.
fn pickup_hour() -> Expr {
    date_part(lit("hour"), col("tpep_pickup_datetime")).alias("pickup_hour")
}

/// The same plan against DataFusion's own API: default session, one output file,
/// Sluice's writer settings.
async fn plain_datafusion(workload: Workload, input: &str, output: &str) -> anyhow::Result<()> {
    let ctx = SessionContext::new();
    let mut df: DataFrame = ctx
        .read_parquet(input, ParquetReadOptions::default())
        .await?;
    if workload != Workload::Rewrite {
        df = df.with_column("tip_fraction", ident("tip_amount") / ident("total_amount"))?;
    }
    if workload == Workload::Aggregate {
        df = df.aggregate(
            vec![ident("PULocationID"), pickup_hour()],
            vec![avg(ident("tip_fraction")).alias("mean_tip_fraction")],
        )?;
    }
    // The writer settings of Sluice's `ParquetWrite::zstd(3)`, so that only Sluice differs.
    let mut options = TableParquetOptions::default();
    options.global.compression = Some(if snappy_output() {
        "snappy".to_string()
    } else {
        format!("zstd({ZSTD_LEVEL})")
    });
    options.global.max_row_group_size = ParquetWrite::DEFAULT_ROW_GROUP_ROWS;
    df.write_parquet(
        output,
        DataFrameWriteOptions::new().with_single_file_output(true),
        Some(options),
    )
    .await?;
    Ok(())
}

/// Rows as people say them: `3M`, `12M`, `500k`.
pub fn rows_label(rows: u64) -> String {
    if rows >= 1_000_000 && rows.is_multiple_of(100_000) {
        let m = rows as f64 / 1e6;
        if rows.is_multiple_of(1_000_000) {
            format!("{m:.0}M")
        } else {
            format!("{m:.1}M")
        }
    } else if rows >= 1_000 && rows.is_multiple_of(1_000) {
        format!("{}k", rows / 1_000)
    } else {
        rows.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::parquet_rows;
    use sluice_testkit::taxi::{TaxiGenOptions, write_taxi_parquet};

    /// Every in-process engine computes the same thing: same rows out, same columns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_process_engines_agree() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("taxi.parquet");
        write_taxi_parquet(&input, &TaxiGenOptions::new(20_000))?;
        for workload in Workload::ALL {
            let mut shapes = Vec::new();
            for engine in [Engine::Lazy, Engine::Eager, Engine::DataFusion] {
                let output = dir.path().join(format!("{workload}-{engine}.parquet"));
                run_case(workload, engine, &input, &output, None, None, None).await?;
                let rows = parquet_rows(&output)?;
                let session = Session::new();
                let columns = session
                    .read_parquet(output.to_str().unwrap())
                    .await?
                    .columns();
                shapes.push((engine, rows, columns));
            }
            let (_, rows, columns) = &shapes[0];
            match workload {
                Workload::Etl => {
                    assert_eq!(*rows, 20_000);
                    assert_eq!(columns.last().map(String::as_str), Some("tip_fraction"));
                }
                Workload::Rewrite => {
                    assert_eq!(*rows, 20_000);
                    assert!(!columns.iter().any(|c| c == "tip_fraction"));
                }
                Workload::Aggregate => {
                    assert!(*rows > 24 && *rows < 20_000, "{rows} groups");
                    assert_eq!(
                        columns,
                        &["PULocationID", "pickup_hour", "mean_tip_fraction"]
                    );
                }
            }
            for (engine, other_rows, other_columns) in &shapes[1..] {
                assert_eq!(
                    (other_rows, other_columns),
                    (rows, columns),
                    "{workload} {engine}"
                );
            }
        }
        Ok(())
    }

    /// The persisted run writes what the cache-hit run reads; both give the lazy output.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn persisted_and_cache_hit_cases_agree_with_lazy() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("taxi.parquet");
        write_taxi_parquet(&input, &TaxiGenOptions::new(20_000))?;
        let cache = dir.path().join("cache");
        for workload in Workload::ALL {
            let lazy = dir.path().join(format!("{workload}-lazy.parquet"));
            run_case(workload, Engine::Lazy, &input, &lazy, None, None, None).await?;
            // A hit before anything was persisted is an error, not a silent miss.
            let early = dir.path().join(format!("{workload}-early.parquet"));
            let err = run_case(
                workload,
                Engine::CacheHit,
                &input,
                &early,
                Some(&cache),
                None,
                None,
            )
            .await;
            assert!(err.is_err(), "{workload}");
            for engine in [Engine::Persisted, Engine::CacheHit] {
                let output = dir.path().join(format!("{workload}-{engine}.parquet"));
                run_case(workload, engine, &input, &output, Some(&cache), None, None).await?;
                assert_eq!(
                    parquet_rows(&output)?,
                    parquet_rows(&lazy)?,
                    "{workload} {engine}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn python_peers_have_their_scripts() {
        for engine in Engine::ALL.into_iter().filter(|e| e.is_peer()) {
            let script = engine.peer_script().unwrap();
            assert!(Path::new(script).is_file(), "{script}");
        }
        assert!(!Engine::Lazy.is_peer());
    }
}
