//! Hostile files through the seed ETL's binary, as a user would meet them: every
//! malformed file of the shared test data, and truncated, bit-flipped, empty and
//! mislabelled copies of generated taxi files. Each must fail with one typed line on
//! stderr naming the file, exit status 1, no panic (not even a caught one), no hang and
//! nothing at the destination; the few corruptions the format cannot detect may read,
//! but then with every row.
//!
//! Decompression bombs (pages that inflate to gigabytes) must fail within the
//! session's limits (see `sluice::limits`) under an address-space limit (`ulimit -v`),
//! where the normal seed ETL still runs.
//!
//! The corpus runs in the debug build of the example, and in the release build too
//! when `SLUICE_RELEASE_EXAMPLE` names one (`.ci/release-checks` builds it and sets it).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use sluice::datafusion::arrow::array::{ArrayRef, Float64Array, StringArray};
use sluice::datafusion::arrow::datatypes::{DataType, Field, Schema};
use sluice::datafusion::arrow::record_batch::RecordBatch;
use sluice::datafusion::parquet::arrow::ArrowWriter;
use sluice::datafusion::parquet::basic::{Compression, ZstdLevel};
use sluice::datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use sluice::datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
use sluice::datafusion::parquet::schema::types::ColumnPath;

use crate::common::{child_test_args, dir_entries, shared_data, taxi_file};
use crate::example::example_binary;

/// A child that runs longer than this has hung (debug builds of small files take a
/// second or two, even with every core busy).
const HANG_SECONDS: u64 = 120;

/// Rows of the generated taxi file the corruptions are made from.
const TAXI_ROWS: u64 = 20_000;

/// What a hostile input may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allowed {
    /// Fail: exit 1, one line `error: task "extract" failed: ...` naming the file.
    Fail,
    /// Fail in `extract` as above, or in `transform` because the file lacks the seed
    /// ETL's columns (`tip_amount`): for shared files of other schemas, whose pages the
    /// seed ETL never decodes (`bad_input` copies all their columns in-process).
    FailInExtractOrForMissingColumns,
    /// Fail as [`Allowed::Fail`], or read every one of these rows: a change the format
    /// cannot detect (a value byte, a statistic) without page checksums.
    FailOrRead(u64),
}

/// One hostile input: its kind (for the counts), the file, and what it may do.
#[derive(Debug, Clone)]
struct Case {
    kind: &'static str,
    path: PathBuf,
    allowed: Allowed,
}

/// The outcome of one case.
#[derive(Debug)]
enum Outcome {
    Rejected,
    Read,
}

/// The shared malformed files: parquet-testing's `bad_data`, DuckDB's `broken` and
/// `footer_broken`, the malformed files at the top of DuckDB's folder, and the
/// encrypted and corrupt-checksum files of parquet-testing's `data`.
fn shared_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut folder = |kind: &'static str, relative: &str, keep: &dyn Fn(&str) -> bool| {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(shared_data(relative))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && keep(p.file_name().unwrap().to_str().unwrap()))
            .collect();
        paths.sort();
        cases.extend(paths.into_iter().map(|path| Case {
            kind,
            path,
            allowed: Allowed::FailInExtractOrForMissingColumns,
        }));
    };
    folder("shared bad_data", "parquet-testing/bad_data", &|name| {
        name.ends_with(".parquet")
    });
    folder("shared broken", "duckdb-parquet-testing/broken", &|_| true);
    folder(
        "shared footer_broken",
        "duckdb-parquet-testing/footer_broken",
        &|_| true,
    );
    const DUCKDB_MALFORMED: &[&str] = &[
        "broken-arrow.parquet",
        "corrupt_stats.parquet",
        "empty.parquet",
        "incorrect_index_page_offsets.parquet",
        "invalid.parquet",
        "invalid_utf8_dba.parquet",
        "invalid_utf8_dictionary.parquet",
        "invalid_utf8_dlba.parquet",
        "invalid_utf8_stats.parquet",
        "page_size_corruption.parquet",
    ];
    folder(
        "shared duckdb malformed",
        "duckdb-parquet-testing",
        &|name| DUCKDB_MALFORMED.contains(&name),
    );
    const DATA_MALFORMED: &[&str] = &[
        "datapage_v1-corrupt-checksum.parquet",
        "incorrect_map_schema.parquet",
        "nation.dict-malformed.parquet",
        "rle-dict-uncompressed-corrupt-checksum.parquet",
    ];
    folder("shared data malformed", "parquet-testing/data", &|name| {
        DATA_MALFORMED.contains(&name)
    });
    folder("shared encrypted", "parquet-testing/data", &|name| {
        name.ends_with(".parquet.encrypted")
    });
    folder("shared encrypted", "parquet-testing/data/aes256", &|name| {
        name.ends_with(".parquet.encrypted")
    });
    cases
}

/// SplitMix64: a seeded, portable stream of positions.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `range`.
    fn within(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.next() % (range.end - range.start)
    }
}

/// Truncated, bit-flipped, empty and mislabelled copies of a generated taxi file,
/// written into `dir`.
fn generated_cases(dir: &Path) -> Vec<Case> {
    let original = dir.join("original");
    std::fs::create_dir(&original).unwrap();
    let source = taxi_file(&original, "taxi.parquet", TAXI_ROWS, 5_000);
    let bytes = std::fs::read(&source).unwrap();
    let len = bytes.len() as u64;
    let footer_len = u64::from(u32::from_le_bytes(
        bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap(),
    ));
    let footer_start = len - 8 - footer_len;
    // Where each column chunk starts (its first page header) and its compressed size.
    let reader = SerializedFileReader::new(File::open(&source).unwrap()).unwrap();
    let chunks: Vec<(u64, u64)> = reader
        .metadata()
        .row_groups()
        .iter()
        .flat_map(|rg| rg.columns().iter().map(|c| c.byte_range()))
        .collect();
    assert!(chunks.len() > 40, "{} column chunks", chunks.len());

    let mut cases = Vec::new();
    let mut write = |kind: &'static str, name: String, data: &[u8], allowed: Allowed| {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        cases.push(Case {
            kind,
            path,
            allowed,
        });
    };

    // Truncations: inside the leading magic, in the data, inside the footer, inside
    // the footer's length and inside the trailing magic. None may read.
    let cuts = [
        ("in-magic", 2),
        ("after-magic", 4),
        ("in-first-page", 100),
        ("third", len / 3),
        ("half", len / 2),
        ("before-footer", footer_start),
        ("in-footer", footer_start + footer_len / 2),
        ("end-of-footer", len - 8),
        ("in-footer-length", len - 6),
        ("in-end-magic", len - 2),
        ("last-byte", len - 1),
    ];
    for (name, cut) in cuts {
        write(
            "truncated",
            format!("truncated-{name}-{cut}.parquet"),
            &bytes[..cut as usize],
            Allowed::Fail,
        );
    }

    // Bit flips, seeded, by where they land. What each class allows:
    // - the trailing magic and the footer's length: always detected (Fail);
    // - the leading magic: nobody reads it, so the file reads in full;
    // - the footer's Thrift metadata, a page header, page data: detected when the
    //   flip breaks the structure, the decompressor or an encoding, but not when it
    //   lands in a value, a statistic or a byte nobody reads; without page checksums
    //   (our writer writes none) such a file reads, and must then read every row.
    let mut rng = SplitMix(0x5EED_F11E);
    let mut flips: Vec<(&'static str, u64, Allowed)> = Vec::new();
    for _ in 0..3 {
        // The leading magic is never read back (readers start from the footer, as
        // Arrow C++ does): the data is intact, and must read in full.
        flips.push((
            "flip leading magic",
            rng.within(0..4),
            Allowed::FailOrRead(TAXI_ROWS),
        ));
        flips.push((
            "flip trailing magic",
            rng.within(len - 4..len),
            Allowed::Fail,
        ));
    }
    for _ in 0..3 {
        // The footer's length: its low bits may still point inside the file, at a
        // place that is not a footer; its high bits beyond the file.
        flips.push((
            "flip footer length",
            rng.within(len - 8..len - 4),
            Allowed::Fail,
        ));
    }
    let may_read = Allowed::FailOrRead(TAXI_ROWS);
    for _ in 0..20 {
        flips.push(("flip footer", rng.within(footer_start..len - 8), may_read));
    }
    for _ in 0..16 {
        let (start, _) = chunks[rng.within(0..chunks.len() as u64) as usize];
        flips.push(("flip page header", rng.within(start..start + 8), may_read));
    }
    for _ in 0..24 {
        let (start, size) = chunks[rng.within(0..chunks.len() as u64) as usize];
        flips.push((
            "flip page data",
            rng.within(start + 24..start + size),
            may_read,
        ));
    }
    for (kind, position, allowed) in flips {
        let bit = rng.within(0..8);
        let mut flipped = bytes.clone();
        flipped[position as usize] ^= 1 << bit;
        let class = kind.trim_start_matches("flip ").replace(' ', "-");
        write(
            kind,
            format!("flipped-{class}-{position}-bit{bit}.parquet"),
            &flipped,
            allowed,
        );
    }

    // Empty, and files that are not Parquet but are named so.
    write("zero-length", "empty.parquet".into(), &[], Allowed::Fail);
    let csv = std::fs::read(shared_data("nyc_taxi/csv/gx_yellow_2021_sample_1k.csv")).unwrap();
    write("mislabelled", "csv.parquet".into(), &csv, Allowed::Fail);
    let json = br#"{"VendorID": 1, "tip_amount": 2.5, "total_amount": 20.0}
{"VendorID": 2, "tip_amount": 0.0, "total_amount": 7.5}
"#;
    write("mislabelled", "json.parquet".into(), json, Allowed::Fail);
    let random: Vec<u8> = (0..16_384).map(|_| rng.next() as u8).collect();
    write(
        "mislabelled",
        "random.parquet".into(),
        &random,
        Allowed::Fail,
    );
    // Random bytes between the magics, with a footer length that fits the file.
    let mut framed = b"PAR1".to_vec();
    framed.extend_from_slice(&random[..4_000]);
    framed.extend_from_slice(&1_000u32.to_le_bytes());
    framed.extend_from_slice(b"PAR1");
    write(
        "mislabelled",
        "random-framed.parquet".into(),
        &framed,
        Allowed::Fail,
    );
    cases
}

/// Runs the example on `source` under the address-space limit (so that a corrupt size
/// that makes a decoder allocate gigabytes aborts instead of passing on overcommitted
/// memory) and a timeout (killed when it hangs), with the panic hook's debug events
/// shown so that even a caught panic is seen.
fn run_etl(binary: &Path, source: &Path, dest: &Path, runs: &Path) -> Output {
    run_limited(
        ADDRESS_SPACE_KIB,
        binary,
        &etl_args(
            source.to_str().unwrap(),
            dest.to_str().unwrap(),
            runs.to_str().unwrap(),
        ),
        &[("RUST_LOG", "warn,etl=debug")],
    )
}

/// Checks one case's outcome against what it allows; returns the outcome or why it
/// is wrong.
fn judge(case: &Case, output: &Output, out_dir: &Path) -> Result<Outcome, String> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let name = case.path.file_name().unwrap().to_str().unwrap();
    let fail = |why: &str| {
        Err(format!(
            "{} ({}): {why}\n  status: {:?}\n  stderr: {stderr}\n  stdout: {stdout}",
            case.path.display(),
            case.kind,
            output.status
        ))
    };
    if stderr.contains("panicked") {
        return fail("a panic");
    }
    match output.status.code() {
        None => return fail("killed by a signal (a hang, or an abort)"),
        Some(0) => {
            let Allowed::FailOrRead(rows) = case.allowed else {
                return fail("it read, but must fail");
            };
            if !stdout.contains(&format!(": {rows} rows")) {
                return fail(&format!("it read, but not {rows} rows"));
            }
            return Ok(Outcome::Read);
        }
        Some(1) => {}
        Some(other) => return fail(&format!("exit status {other}, not 1")),
    }
    let lines: Vec<&str> = stderr.lines().collect();
    if lines.len() != 1 {
        return fail("not exactly one line on stderr");
    }
    let line = lines[0];
    if !line.contains(name) {
        return fail("the error does not name the file");
    }
    // A page error surfaces while `load` writes: `error: writing <dest> failed, nothing
    // was published there: task "extract" failed: reading <file> failed: ...`.
    let in_extract = line.starts_with("error: task \"extract\" failed: ")
        || (line.starts_with("error: writing ")
            && line.contains("nothing was published there: task \"extract\" failed: "));
    let missing_columns = line.starts_with("error: task \"transform\" failed: column \"")
        && line.contains("is not in the data read from");
    let typed = match case.allowed {
        Allowed::FailInExtractOrForMissingColumns => in_extract || missing_columns,
        _ => in_extract,
    };
    if !typed {
        return fail("not the typed error expected");
    }
    if !dir_entries(out_dir).is_empty() {
        return fail(&format!(
            "left {:?} at the destination",
            dir_entries(out_dir)
        ));
    }
    Ok(Outcome::Rejected)
}

/// Runs every case through `binary` on a few threads; returns the counts by kind and
/// outcome, and every case that went wrong.
fn run_corpus(binary: &Path, cases: &[Case]) -> (BTreeMap<(String, String), usize>, Vec<String>) {
    let work = tempfile::tempdir().unwrap();
    let queue = Arc::new(Mutex::new(cases.iter().enumerate().collect::<Vec<_>>()));
    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 6);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (queue, counts, failures) = (&queue, &counts, &failures);
            let work = work.path();
            scope.spawn(move || {
                loop {
                    let Some((index, case)) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let out_dir = work.join(format!("out-{index}"));
                    let dest = out_dir.join("tips.parquet");
                    let runs = work.join(format!("runs-{index}"));
                    let output = run_etl(binary, &case.path, &dest, &runs);
                    match judge(case, &output, &out_dir) {
                        Ok(outcome) => {
                            *counts
                                .lock()
                                .unwrap()
                                .entry((case.kind.to_string(), format!("{outcome:?}")))
                                .or_insert(0) += 1;
                        }
                        Err(why) => failures.lock().unwrap().push(why),
                    }
                }
            });
        }
    });
    let counts = Arc::try_unwrap(counts).unwrap().into_inner().unwrap();
    let failures = Arc::try_unwrap(failures).unwrap().into_inner().unwrap();
    (counts, failures)
}

/// The release build of the example, when `SLUICE_RELEASE_EXAMPLE` names one (as
/// `.ci/release-checks` does; a binary found in the target directory could be a stale
/// one, built from another tree). With `SLUICE_REQUIRE_RELEASE_EXAMPLE` set, a missing
/// one fails the test instead of skipping its release half.
fn release_binary() -> Option<PathBuf> {
    let found = std::env::var_os("SLUICE_RELEASE_EXAMPLE")
        .map(PathBuf::from)
        .filter(|path| path.exists());
    if found.is_none() && std::env::var_os("SLUICE_REQUIRE_RELEASE_EXAMPLE").is_some() {
        panic!(
            "SLUICE_REQUIRE_RELEASE_EXAMPLE is set but SLUICE_RELEASE_EXAMPLE names no \
             release build of the example"
        );
    }
    found
}

fn run_and_report(build: &str, binary: &Path, cases: &[Case]) {
    let (counts, failures) = run_corpus(binary, cases);
    eprintln!(
        "hostile files through {} ({build}): {} cases",
        binary.display(),
        cases.len()
    );
    for ((kind, outcome), n) in &counts {
        eprintln!("  {kind:<26} {outcome:<9} {n}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile inputs were mishandled by the {build} build:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let handled: usize = counts.values().sum();
    assert_eq!(handled, cases.len());
    // The flips that may read land where they are meant to: some of each class break
    // the file, so the reader did look at those bytes.
    for kind in ["flip footer", "flip page header", "flip page data"] {
        let rejected = counts
            .get(&(kind.to_string(), "Rejected".to_string()))
            .copied()
            .unwrap_or(0);
        assert!(rejected > 0, "no {kind} was detected by the {build} build");
    }
}

#[test]
fn every_hostile_file_fails_cleanly_through_the_seed_etl_binary() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = shared_cases();
    let shared = cases.len();
    // 8 bad_data, 20 broken, 8 footer_broken, 10 DuckDB top-level, 4 corrupt files of
    // parquet-testing's data, 13 encrypted files.
    assert_eq!(shared, 63, "the shared malformed files changed");
    cases.extend(generated_cases(dir.path()));
    run_and_report("debug", &example_binary(), &cases);
    match release_binary() {
        Some(release) => run_and_report("release", &release, &cases),
        None => eprintln!(
            "NOTE: no release build of the example (SLUICE_RELEASE_EXAMPLE; \
             `.ci/release-checks` runs this half): the release run is skipped"
        ),
    }
}

/// Runs `binary args` under an address-space limit of `kib` KiB (`ulimit -v`, which
/// is `RLIMIT_AS`) and a hang timeout, with `envs` set.
fn run_limited(kib: u64, binary: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {kib} && exec timeout --signal=KILL {HANG_SECONDS} \"$0\" \"$@\""
        ))
        .arg(binary)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run under sh -c 'ulimit -v'")
}

/// The address space the children get: enough for the seed ETL (thread stacks,
/// allocator arenas and the binary's mappings take most of it), far below what a bomb
/// inflates to.
const ADDRESS_SPACE_KIB: u64 = 2 << 20;

/// Writes a file with the seed ETL's columns and a `note` column of `rows` values of
/// `value_bytes` repeated bytes each: zstd squeezes each page to a few hundred bytes,
/// while the footer declares the true uncompressed size. Returns the file's size and
/// the `note` chunk's uncompressed size.
fn write_bomb(path: &Path, rows: usize, value_bytes: usize) -> (u64, u64) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("tip_amount", DataType::Float64, false),
        Field::new("total_amount", DataType::Float64, false),
        Field::new("note", DataType::Utf8, false),
    ]));
    let note = ColumnPath::from("note");
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()))
        .set_column_dictionary_enabled(note.clone(), false)
        .set_column_statistics_enabled(note, EnabledStatistics::None)
        .set_max_row_group_row_count(Some(rows))
        .build();
    let mut writer = ArrowWriter::try_new(
        File::create(path).unwrap(),
        Arc::clone(&schema),
        Some(props),
    )
    .unwrap();
    let value = "x".repeat(value_bytes);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(vec![1.0])),
        Arc::new(Float64Array::from(vec![10.0])),
        Arc::new(StringArray::from(vec![value.as_str()])),
    ];
    let batch = RecordBatch::try_new(schema, columns).unwrap();
    // One row group: each value makes a page of its own (over the 1 MiB page limit).
    for _ in 0..rows {
        writer.write(&batch).unwrap();
    }
    writer.close().unwrap();
    let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
    let inflated = reader
        .metadata()
        .row_groups()
        .iter()
        .flat_map(|rg| rg.columns())
        .filter(|c| c.column_path().string() == "note")
        .map(|c| c.uncompressed_size() as u64)
        .sum();
    (std::fs::metadata(path).unwrap().len(), inflated)
}

fn etl_args<'a>(source: &'a str, dest: &'a str, runs: &'a str) -> Vec<&'a str> {
    vec![
        "--source",
        source,
        "--dest",
        dest,
        "--progress",
        "off",
        "--run-store",
        runs,
    ]
}

#[test]
fn a_decompression_bomb_fails_within_the_session_limits_where_the_seed_etl_runs() {
    let dir = tempfile::tempdir().unwrap();
    // 24 values of 64 MiB: 1.5 GiB of `note` in a file of a few kilobytes.
    let bomb = dir.path().join("bomb.parquet");
    let (size, inflated) = write_bomb(&bomb, 24, 64 << 20);
    eprintln!("bomb: {size} bytes on disk, {inflated} bytes of `note` uncompressed");
    assert!(size < 1 << 20, "{size}");
    assert!(inflated > 3 * (ADDRESS_SPACE_KIB << 10) / 4, "{inflated}");
    let taxi = taxi_file(dir.path(), "taxi.parquet", 200_000, 65_536);
    bomb_through_the_seed_etl(&example_binary(), dir.path(), &taxi, &bomb);
    match release_binary() {
        Some(release) => bomb_through_the_seed_etl(&release, dir.path(), &taxi, &bomb),
        None => eprintln!("NOTE: no release build of the example: its bomb run is skipped"),
    }
}

/// The seed ETL through `binary` under the address-space limit: `taxi` runs, `bomb`
/// fails on the column-chunk cap, and fails to run at all with the cap raised.
fn bomb_through_the_seed_etl(binary: &Path, dir: &Path, taxi: &Path, bomb: &Path) {
    let runs = dir.join("runs");
    let runs = runs.to_str().unwrap();
    let out = dir.join("out");
    let dest = out.join("tips.parquet");
    let dest = dest.to_str().unwrap();

    // The normal seed ETL runs within the address-space limit.
    let normal = run_limited(
        ADDRESS_SPACE_KIB,
        binary,
        &etl_args(taxi.to_str().unwrap(), dest, runs),
        &[],
    );
    assert!(
        normal.status.success(),
        "the seed ETL failed under ulimit -v {ADDRESS_SPACE_KIB}: {}",
        String::from_utf8_lossy(&normal.stderr)
    );
    assert!(String::from_utf8_lossy(&normal.stdout).contains(": 200000 rows"));
    std::fs::remove_dir_all(&out).unwrap();

    let args = etl_args(bomb.to_str().unwrap(), dest, runs);
    let output = run_limited(
        ADDRESS_SPACE_KIB,
        binary,
        &args,
        &[("RUST_LOG", "warn,etl=debug")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    // Refused as `load` streams the chunk in: attributed to `extract`, which reads it.
    assert!(
        lines[0].contains("task \"extract\" failed: ")
            && lines[0].contains("nothing was published")
            && lines[0].contains(&format!("file://{}", bomb.display()))
            && lines[0].contains("column \"note\" of row group 0")
            && lines[0].contains("SLUICE_MAX_COLUMN_CHUNK_BYTES"),
        "{stderr}"
    );
    assert_eq!(dir_entries(&out), Vec::<String>::new());

    // The cap is what stops it: raised past the bomb, the same run does not get through
    // the address-space limit when every column is decoded and encoded again. (The
    // column copy, which streams the chunk page by page, is not what is tested here.)
    let raised = run_limited(
        ADDRESS_SPACE_KIB,
        binary,
        &args,
        &[
            ("SLUICE_MAX_COLUMN_CHUNK_BYTES", "8GiB"),
            ("SLUICE_COLUMN_COPY", "0"),
        ],
    );
    eprintln!(
        "{}: bomb with the cap raised: {:?}",
        binary.display(),
        raised.status
    );
    assert!(!raised.status.success());
    assert!(!dest_exists(&out));
}

fn dest_exists(out: &Path) -> bool {
    !dir_entries(out).is_empty()
}

#[test]
fn the_memory_pool_limit_fails_the_writer_with_a_typed_error() {
    // DataFusion's sink needs more than 1 MiB here; the column copy, which holds a few
    // compressed chunks, less: both reserve from the pool and fail over it.
    for (column_copy, limit) in [("0", "1MiB"), ("1", "64KiB")] {
        pool_limit_fails(column_copy, limit);
    }
}

fn pool_limit_fails(column_copy: &str, limit: &str) {
    let dir = tempfile::tempdir().unwrap();
    let taxi = taxi_file(dir.path(), "taxi.parquet", 100_000, 50_000);
    let out = dir.path().join("out");
    let dest = out.join("tips.parquet");
    let runs = dir.path().join("runs");
    let output = Command::new(example_binary())
        .args(etl_args(
            taxi.to_str().unwrap(),
            dest.to_str().unwrap(),
            runs.to_str().unwrap(),
        ))
        .env("SLUICE_MEMORY_LIMIT", limit)
        .env("SLUICE_COLUMN_COPY", column_copy)
        .env("RUST_LOG", "warn,etl=debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("more memory than the session's memory pool allows")
            && lines[0].contains("SLUICE_MEMORY_LIMIT"),
        "{stderr}"
    );
    assert_eq!(dir_entries(&out), Vec::<String>::new());
}

/// The child process of the bomb tests that need every column read (the seed ETL
/// reads only the files with its columns): copies the file named by
/// `SLUICE_HOSTILE_COPY` to `SLUICE_HOSTILE_DEST` in a default session and prints the
/// outcome. It does nothing in a normal test run.
#[test]
#[ignore = "a child process of the bomb tests, run by them"]
fn hostile_copy_child() {
    let (Some(source), Some(dest)) = (
        std::env::var_os("SLUICE_HOSTILE_COPY"),
        std::env::var_os("SLUICE_HOSTILE_DEST"),
    ) else {
        return;
    };
    let (source, dest) = (
        source.to_str().unwrap().to_string(),
        dest.to_str().unwrap().to_string(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(copy_all(source, dest));
    match outcome {
        Ok(rows) => println!("outcome: read {rows} rows"),
        Err(e) => println!("outcome: error: {}", sluice::one_line(&e)),
    }
}

async fn copy_all(source: String, dest: String) -> sluice::Result<u64> {
    use sluice::prelude::*;
    let session = Session::new();
    let frame = session.read_parquet(&source).await?;
    let written = frame.write_parquet(&dest, ParquetWrite::default()).await?;
    Ok(written.rows)
}

/// Runs [`hostile_copy_child`] on `source` under the address-space limit.
fn copy_in_child(source: &Path, dest: &Path, envs: &[(&str, &str)]) -> Output {
    let mut all = vec![
        ("SLUICE_HOSTILE_COPY", source.to_str().unwrap()),
        ("SLUICE_HOSTILE_DEST", dest.to_str().unwrap()),
    ];
    all.extend_from_slice(envs);
    run_limited(
        ADDRESS_SPACE_KIB,
        &std::env::current_exe().unwrap(),
        &child_test_args("hostile::hostile_copy_child"),
        &all,
    )
}

#[test]
fn large_string_map_brotli_fails_within_the_session_limits() {
    // 4 KB of brotli whose map keys inflate to 2 GiB, as its footer declares.
    let path = shared_data("parquet-testing/data/large_string_map.brotli.parquet");
    let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
    let largest = reader
        .metadata()
        .row_groups()
        .iter()
        .flat_map(|rg| rg.columns())
        .map(|c| c.uncompressed_size())
        .max()
        .unwrap();
    assert!(largest > 2_000_000_000, "{largest}");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let dest = out.join("copy.parquet");
    let output = copy_in_child(&path, &dest, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("panicked") && !stderr.contains("panicked"),
        "{stdout}\n{stderr}"
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("outcome: ").map(|(_, outcome)| outcome))
        .unwrap_or_else(|| panic!("no outcome in {stdout}"));
    assert!(
        line.starts_with("error: ")
            && line.contains("large_string_map.brotli.parquet")
            && line.contains("column \"arr.key_value.key\" of row group 0 inflates to 2.0 GiB")
            && line.contains("SLUICE_MAX_COLUMN_CHUNK_BYTES"),
        "{line}"
    );
    assert_eq!(dir_entries(&out), Vec::<String>::new());

    // With the cap raised past it, the same copy does not get through the
    // address-space limit (it aborts, or fails on the 2 GiB string).
    let raised = copy_in_child(&path, &dest, &[("SLUICE_MAX_COLUMN_CHUNK_BYTES", "8GiB")]);
    let raised_stdout = String::from_utf8_lossy(&raised.stdout);
    eprintln!(
        "large_string_map with the cap raised: {:?}, {}",
        raised.status,
        raised_stdout
            .lines()
            .find(|l| l.contains("outcome: "))
            .unwrap_or("no outcome")
    );
    assert!(!raised_stdout.contains("outcome: read"), "{raised_stdout}");
    assert_eq!(dir_entries(&out), Vec::<String>::new());
}

/// Writes a file with the seed ETL's columns whose one `note` value is `value_bytes`
/// repeated bytes (one zstd page, under the column-chunk cap), then rewrites the
/// `uncompressed_page_size` in that page's header, in place, to `claimed`: an honest
/// footer with a lying page header.
fn write_lying_page_header(path: &Path, value_bytes: usize, claimed: i32) {
    write_bomb(path, 1, value_bytes);
    let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
    let note = reader.metadata().row_group(0).column(2);
    let (start, _) = note.byte_range();
    let mut bytes = std::fs::read(path).unwrap();
    // Thrift compact: field 1 (i32 type) is `0x15 <varint>`, field 2 (i32
    // uncompressed_page_size) is `0x15 <zigzag varint>`.
    let at = start as usize;
    assert_eq!(bytes[at], 0x15, "a page header at {at}");
    let mut i = at + 2;
    assert_eq!(bytes[i], 0x15, "field 2 at {i}");
    i += 1;
    let varint_len = bytes[i..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
    assert_eq!(
        varint_len, 5,
        "a page of at least 128 MiB has a 5-byte size"
    );
    let mut zigzag = (u64::from(claimed as u32) << 1) ^ ((claimed >> 31) as u64);
    for byte in &mut bytes[i..i + 5] {
        *byte = (zigzag as u8 & 0x7F) | 0x80;
        zigzag >>= 7;
    }
    bytes[i + 4] &= 0x7F;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_page_header_that_lies_about_its_size_fails_cleanly_within_the_limits() {
    // 130 MiB of `note` in one zstd page (under the column-chunk cap, as the footer says),
    // whose header then claims 2 GiB: the decoder would allocate that before
    // decompressing, and abort when the allocation fails.
    let dir = tempfile::tempdir().unwrap();
    let lying = dir.path().join("lying.parquet");
    write_lying_page_header(&lying, 130 << 20, i32::MAX);
    let mut binaries = vec![example_binary()];
    binaries.extend(release_binary());
    for binary in binaries {
        let out = dir.path().join("out");
        let dest = out.join("tips.parquet");
        let output = run_etl(&binary, &lying, &dest, &dir.path().join("runs"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{}: {stderr}",
            binary.display()
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].contains("task \"extract\" failed: ")
                && lines[0].contains(&format!("file://{}", lying.display()))
                && lines[0].contains("a page of column \"note\" in row group 0 claims 2.0 GiB")
                && lines[0].contains("corrupt or forged"),
            "{stderr}"
        );
        assert_eq!(dir_entries(&out), Vec::<String>::new());
    }
}

/// Every honest Parquet file of the shared data (all but the malformed, encrypted and
/// bomb files), read in full in a default session: the limits' checks (footer tail,
/// column-chunk cap, page headers) refuse none of them, and each file that reads gives
/// its footer's row count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_refuse_no_honest_shared_file() {
    let malformed: Vec<PathBuf> = shared_cases().into_iter().map(|c| c.path).collect();
    let mut files = Vec::new();
    for folder in [
        "parquet-testing/data",
        "duckdb-parquet-testing",
        "duckdb-parquet-testing/compression",
        "nyc_taxi/parquet",
    ] {
        for entry in std::fs::read_dir(shared_data(folder)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if path.is_file()
                && name.ends_with(".parquet")
                && name != "large_string_map.brotli.parquet"
                && !malformed.contains(&path)
            {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() > 80, "{} files", files.len());
    let session = sluice::Session::new();
    let (mut read, mut unsupported) = (0, Vec::new());
    for path in &files {
        // (Some footers use types the parquet crate does not read.)
        let footer_rows = SerializedFileReader::new(File::open(path).unwrap())
            .ok()
            .map(|reader| reader.metadata().file_metadata().num_rows());
        let result = async {
            let frame = session.read_parquet(path.to_str().unwrap()).await?;
            frame.collect().await
        }
        .await;
        match result {
            Ok(batches) => {
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                if let Some(footer_rows) = footer_rows {
                    assert_eq!(rows as i64, footer_rows, "{}", path.display());
                }
                read += 1;
            }
            Err(e) => {
                let text = e.to_string();
                assert!(
                    !text.contains("corrupt or forged")
                        && !matches!(e, sluice::Error::ColumnChunkTooLarge { .. })
                        && !text.contains("footer claims")
                        && !text.contains("magic bytes PAR1"),
                    "the limits refused {}: {text}",
                    path.display()
                );
                unsupported.push(format!("{}: {text}", path.display()));
            }
        }
    }
    eprintln!(
        "{read} of {} honest shared files read in full; the rest fail for other reasons:\n{}",
        files.len(),
        unsupported.join("\n")
    );
    assert!(read > 60, "{read}");
}
