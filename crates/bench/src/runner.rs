//! `sluice-bench run`: every case as its own process, several runs after a warm-up,
//! then the report.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context as _;
use parquet::file::reader::{FileReader as _, SerializedFileReader};
use serde::{Deserialize, Serialize};
use sluice_testkit::taxi::{TaxiGenOptions, write_taxi_parquet};

use crate::cases::{Engine, Workload};
use crate::measure::{Sample, measure_child};

/// Options of `sluice-bench run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Input sizes of the main tables, in rows.
    #[arg(long, value_delimiter = ',', default_values_t = [3_000_000u64, 12_000_000])]
    pub rows: Vec<u64>,
    /// Further input sizes for the memory curve: the seed ETL only, `--curve-runs` runs
    /// each. `--curve-rows` with no value for none.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_values_t = [24_000_000u64, 48_000_000])]
    pub curve_rows: Vec<u64>,
    /// Measured runs per case (the median and min–max are reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Unmeasured runs per case before the measured ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Measured runs per engine at each `--curve-rows` size.
    #[arg(long, default_value_t = 1)]
    pub curve_runs: usize,
    /// Workloads to run.
    #[arg(long, value_delimiter = ',', default_values_t = Workload::ALL)]
    pub workloads: Vec<Workload>,
    /// Engines to run; Python peers that cannot be imported are skipped with a note.
    #[arg(long, value_delimiter = ',', default_values_t = Engine::ALL)]
    pub engines: Vec<Engine>,
    /// Where the generated taxi data (kept between runs) and the outputs go.
    #[arg(long, default_value = "data/bench")]
    pub data_dir: PathBuf,
    /// Where the report goes: `BENCHMARKS.md`, and `bench/` with the plots and the raw
    /// results.
    #[arg(long, default_value = "docs")]
    pub out: PathBuf,
    /// The codec of the generated input: `snappy` (the TLC files') or `zstd` (level 3).
    #[arg(long, default_value = "snappy", value_parser = ["snappy", "zstd"])]
    pub input_codec: String,
    /// The codec every engine writes: `zstd` (level 3), `snappy`, or `same` as the
    /// input's.
    #[arg(long, default_value = "zstd", value_parser = ["zstd", "snappy", "same"])]
    pub output_codec: String,
    /// The Python that runs the peers (with `polars` and `duckdb` installed).
    #[arg(long, env = "SLUICE_BENCH_PYTHON", default_value = "python3")]
    pub python: String,
}

/// Whether a result belongs to the main tables or only to the memory curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Series {
    /// Warm-up and `--runs` runs, in the per-workload tables.
    Main,
    /// `--curve-runs` runs of the seed ETL, for the memory curve.
    Curve,
}

/// The measured runs of one engine on one workload at one input size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    /// What was computed.
    pub workload: Workload,
    /// What computed it.
    pub engine: Engine,
    /// Input rows.
    pub rows: u64,
    /// Main table or memory curve.
    pub series: Series,
    /// One sample per measured run.
    pub samples: Vec<Sample>,
    /// Rows in the output file (the same for every engine, or something is wrong).
    pub rows_out: u64,
    /// Size of the output file, in bytes (writers differ in encodings).
    #[serde(default)]
    pub bytes_out: u64,
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// Cores available to a process.
    pub cores: usize,
    /// Total memory, in GiB.
    pub memory_gib: f64,
    /// The CPU model.
    pub cpu: String,
    /// The kernel release.
    pub kernel: String,
}

/// Everything `run` measured: what the report is rendered from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// When the run started (UTC, RFC 3339).
    pub date: String,
    /// Where.
    pub machine: Machine,
    /// The options.
    pub runs: usize,
    /// Unmeasured runs before the measured ones.
    pub warmup: usize,
    /// Runs per engine on the memory curve.
    pub curve_runs: usize,
    /// The versions of what was measured, by name.
    pub versions: BTreeMap<String, String>,
    /// Notes on what was skipped or failed, and why.
    pub notes: Vec<String>,
    /// The figures.
    pub cases: Vec<CaseResult>,
}

impl Results {
    /// The raw results' path under a report directory.
    pub fn path(out: &Path) -> PathBuf {
        out.join("bench").join("results.json")
    }

    /// Reads the results a run saved under `out`.
    pub fn load(out: &Path) -> anyhow::Result<Results> {
        let path = Self::path(out);
        let text =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a results file", path.display()))
    }

    /// The result of `engine` on `workload` at `rows`, if measured. A size belongs to the
    /// main tables or to the memory curve, never both: `run` skips curve sizes that are
    /// main sizes.
    pub fn find(&self, workload: Workload, engine: Engine, rows: u64) -> Option<&CaseResult> {
        self.cases
            .iter()
            .find(|c| c.workload == workload && c.engine == engine && c.rows == rows)
    }
}

/// Runs the benchmark and writes the report.
pub fn run(exe: &Path, args: &RunArgs) -> anyhow::Result<Results> {
    let out_dir = args.data_dir.join("out");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut results = Results {
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: machine(),
        runs: args.runs,
        warmup: args.warmup,
        curve_runs: args.curve_runs,
        versions: BTreeMap::from([
            ("sluice".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            (
                "datafusion".to_string(),
                datafusion::DATAFUSION_VERSION.to_string(),
            ),
        ]),
        notes: Vec::new(),
        cases: Vec::new(),
    };
    let mut engines = Vec::new();
    for &engine in &args.engines {
        match engine.peer_module() {
            None => engines.push(engine),
            Some(module) => match python_module_version(&args.python, module) {
                Ok(version) => {
                    results.versions.insert(module.to_string(), version);
                    engines.push(engine);
                }
                Err(why) => {
                    let note = format!(
                        "{} skipped: {why}. Install it (`pip install polars duckdb`) or point \
                         `--python` / `SLUICE_BENCH_PYTHON` at a Python that has it.",
                        engine.label()
                    );
                    eprintln!("note: {note}");
                    results.notes.push(note);
                }
            },
        }
    }

    let output_codec = match args.output_codec.as_str() {
        "same" => args.input_codec.clone(),
        other => other.to_string(),
    };
    results.notes.push(format!(
        "Inputs generated with {} compression; every engine writes {}.",
        args.input_codec,
        if output_codec == "snappy" {
            "Snappy"
        } else {
            "zstd(3)"
        }
    ));
    let bench = Bench {
        exe,
        python: &args.python,
        out_dir: &out_dir,
        output_codec: &output_codec,
    };
    for &rows in &args.rows {
        let input = ensure_taxi_data(&args.data_dir, rows, &args.input_codec)?;
        for &workload in &args.workloads {
            let spec = Rounds {
                rows,
                workload,
                warmup: args.warmup,
                runs: args.runs,
                series: Series::Main,
            };
            let cases = bench.interleaved(&input, &spec, &engines, &mut results.notes);
            results.cases.extend(cases);
        }
    }
    if args.workloads.contains(&Workload::Etl) {
        for &rows in args.curve_rows.iter().filter(|r| !args.rows.contains(r)) {
            let input = ensure_taxi_data(&args.data_dir, rows, &args.input_codec)?;
            let spec = Rounds {
                rows,
                workload: Workload::Etl,
                warmup: 0,
                runs: args.curve_runs,
                series: Series::Curve,
            };
            // The memory curve is the streaming engines' (and the peers'): the
            // checkpoint and mapped cases are measured at the main sizes.
            let curve_engines: Vec<Engine> = engines
                .iter()
                .copied()
                .filter(|e| !e.uses_cache() && *e != Engine::Mapped)
                .collect();
            let cases = bench.interleaved(&input, &spec, &curve_engines, &mut results.notes);
            results.cases.extend(cases);
        }
    }
    Ok(results)
}

/// What to run of one workload at one size.
struct Rounds {
    rows: u64,
    workload: Workload,
    warmup: usize,
    runs: usize,
    series: Series,
}

struct Bench<'a> {
    exe: &'a Path,
    python: &'a str,
    /// `zstd` or `snappy`, for every engine.
    output_codec: &'a str,
    out_dir: &'a Path,
}

impl Bench<'_> {
    /// `warmup` then `runs` rounds, each round running every engine once: drift on a
    /// noisy machine then spreads over all engines instead of favouring one.
    fn interleaved(
        &self,
        input: &Path,
        spec: &Rounds,
        engines: &[Engine],
        notes: &mut Vec<String>,
    ) -> Vec<CaseResult> {
        let &Rounds {
            rows,
            workload,
            warmup,
            runs,
            series,
        } = spec;
        let mut cases: Vec<CaseResult> = engines
            .iter()
            .map(|&engine| CaseResult {
                workload,
                engine,
                rows,
                series,
                samples: Vec::new(),
                rows_out: 0,
                bytes_out: 0,
            })
            .collect();
        let mut failed = vec![false; cases.len()];
        for round in 0..warmup + runs {
            for (case, failed) in cases.iter_mut().zip(&mut failed) {
                if *failed {
                    continue;
                }
                match self.run_once(input, workload, case.engine) {
                    Ok(Output {
                        sample,
                        rows: rows_out,
                        bytes: bytes_out,
                    }) => {
                        let kind = if round < warmup { "warm-up" } else { "run" };
                        eprintln!(
                            "{rows:>10} rows  {workload:<9} {:<22} {kind:<7} {:>7.2} s {:>8.1} MiB",
                            case.engine.label(),
                            sample.wall_s,
                            sample.peak_rss_mib
                        );
                        if round >= warmup {
                            case.samples.push(sample);
                        }
                        case.rows_out = rows_out;
                        case.bytes_out = bytes_out;
                    }
                    Err(e) => {
                        let note = format!(
                            "{} failed on {workload} at {rows} rows: {e:#}",
                            case.engine.label()
                        );
                        eprintln!("note: {note}");
                        notes.push(note);
                        *failed = true;
                    }
                }
            }
        }
        let cache = self.cache_dir(input, workload);
        if cache.exists()
            && let Err(e) = std::fs::remove_dir_all(&cache)
        {
            notes.push(format!("could not remove {}: {e}", cache.display()));
        }
        cases.retain(|c| !c.samples.is_empty());
        cases
    }

    /// One result store per input and workload, shared by the persisted case (which
    /// rewrites it) and the cache-hit case (which reads it).
    fn cache_dir(&self, input: &Path, workload: Workload) -> PathBuf {
        let stem = input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.out_dir.join(format!("cache-{workload}-{stem}"))
    }

    fn run_once(&self, input: &Path, workload: Workload, engine: Engine) -> anyhow::Result<Output> {
        let output = self.out_dir.join(format!("{workload}-{engine}.parquet"));
        remove_if_exists(&output)?;
        let cache = self.cache_dir(input, workload);
        if engine == Engine::CacheHit && !cache.join("checkpoints").exists() {
            // Prime it, unmeasured.
            let status = std::process::Command::new(self.exe)
                .args(["case", workload.name(), Engine::Persisted.name(), "--input"])
                .arg(input)
                .arg("--output")
                .arg(&output)
                .arg("--cache")
                .arg(&cache)
                .status()?;
            anyhow::ensure!(status.success(), "priming the cache failed");
            remove_if_exists(&output)?;
        }
        if engine == Engine::Mapped {
            ensure_split(input)?;
        }
        let command: Vec<String> = match engine.peer_script() {
            Some(script) => vec![
                self.python.to_string(),
                script.to_string(),
                workload.to_string(),
                input.display().to_string(),
                output.display().to_string(),
            ],
            None => vec![
                self.exe.display().to_string(),
                "case".to_string(),
                workload.to_string(),
                engine.to_string(),
                "--input".to_string(),
                input.display().to_string(),
                "--output".to_string(),
                output.display().to_string(),
            ]
            .into_iter()
            .chain(
                engine
                    .uses_cache()
                    .then(|| ["--cache".to_string(), cache.display().to_string()])
                    .into_iter()
                    .flatten(),
            )
            .collect(),
        };
        let mut env = vec![(crate::cases::CODEC_ENV, self.output_codec.to_string())];
        match engine {
            Engine::LazyRewrite => env.push((sluice::COLUMN_COPY_ENV, "0".into())),
            Engine::LazyTrusted => env.push((crate::cases::VALIDATE_ENV, "0".into())),
            _ => {}
        }
        let sample = measure_child(self.exe, &command, &env)?;
        let rows = parquet_rows(&output)?;
        let bytes = std::fs::metadata(&output)?.len();
        remove_if_exists(&output)?;
        Ok(Output {
            sample,
            rows,
            bytes,
        })
    }
}

/// What one run measured and wrote.
struct Output {
    sample: Sample,
    rows: u64,
    bytes: u64,
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The taxi file of `rows` rows under `dir` in `codec` (`snappy`, or `zstd` at level 3
/// as `taxi_N-zstd.parquet`), generated on first use (the generator writes through a
/// temporary file, so an interrupted generation is never taken as whole).
pub fn ensure_taxi_data(dir: &Path, rows: u64, codec: &str) -> anyhow::Result<PathBuf> {
    let (name, compression) = match codec {
        "zstd" => (
            format!("taxi_{rows}-zstd.parquet"),
            parquet::basic::Compression::ZSTD(parquet::basic::ZstdLevel::try_new(3)?),
        ),
        _ => (
            format!("taxi_{rows}.parquet"),
            parquet::basic::Compression::SNAPPY,
        ),
    };
    let path = dir.join(name);
    if !path.exists() {
        eprintln!(
            "generating {rows} rows of taxi data into {}",
            path.display()
        );
        write_taxi_parquet(
            &path,
            &TaxiGenOptions::new(rows).with_compression(compression),
        )?;
    }
    Ok(path)
}

/// The mapped engine's input: the rows of `input`'s size, generated once as
/// [`MAPPED_FILES`](crate::cases::MAPPED_FILES) files beside it.
fn ensure_split(input: &Path) -> anyhow::Result<()> {
    let dir = crate::cases::mapped_dir(input);
    if dir.exists() {
        return Ok(());
    }
    let rows = parquet_rows(input)?;
    eprintln!(
        "generating {rows} rows of taxi data as 4 files into {}",
        dir.display()
    );
    let staging = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    let mut options = TaxiGenOptions::new(rows);
    options.files = crate::cases::MAPPED_FILES;
    write_taxi_parquet(&staging, &options)?;
    std::fs::rename(&staging, &dir)
        .with_context(|| format!("cannot move the split input to {}", dir.display()))?;
    Ok(())
}

/// The row count in a Parquet file's footer.
pub fn parquet_rows(path: &Path) -> anyhow::Result<u64> {
    let file = File::open(path).with_context(|| format!("no output at {}", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{} is not a Parquet file", path.display()))?;
    Ok(reader.metadata().file_metadata().num_rows() as u64)
}

/// The version of a Python module, or why it cannot be imported.
pub(crate) fn python_module_version(python: &str, module: &str) -> Result<String, String> {
    let output = Command::new(python)
        .args([
            "-c",
            &format!("import {module}; print({module}.__version__)"),
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{python}`: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!("`{python}` cannot import {module}"))
    }
}

fn machine() -> Machine {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let memory_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: memory_kib / (1024.0 * 1024.0),
        cpu,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
    }
}
