//! Property tests over hostile bytes (proptest; cargo-fuzz needs a nightly toolchain):
//! checkpoint manifests (`Manifest::parse`, and the checkpoint store reading them),
//! run records (through `RunStore::list` / `get`, as `sluice runs` reads them), and
//! the parsing of source and destination locations (`resolve_url`, `object_path`,
//! `redact`, `Session::read_parquet` on local and in-memory stores).
//!
//! Inputs are arbitrary bytes and mutations of valid inputs taken from a real run
//! (bit flips, truncations, splices of bytes and of JSON tokens). Properties: nothing
//! panics, errors are typed, valid inputs round-trip, and a damaged input is never
//! taken for a valid one that breaks the format's rules.
//!
//! Each target runs `PROPTEST_CASES` cases (proptest's default, 256, unless set), from
//! a fixed seed unless `PROPTEST_RNG_SEED` is set, so CI is deterministic and a longer
//! run is `PROPTEST_CASES=20000 cargo test --workspace --test integration fuzz::`.

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::json;
use sluice::prelude::*;
use sluice::store::{object_path, redact, resolve_url, store_key};
use sluice::{CheckpointStore, FlowRunRecord, Manifest, RunFilter, RunStore, Task};

use crate::common::files_under;

/// Proptest's configuration from the environment, with a fixed seed unless one is
/// given, and no regression files written into the source tree (each bug found is
/// kept as a named test below instead).
fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x5117_ce00);
    }
    config.failure_persistence = None;
    config
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Valid inputs written by a real flow run: a checkpoint's manifest and the run's
/// record, as bytes, and the store they are in.
struct Seeds {
    dir: tempfile::TempDir,
    manifest: Vec<u8>,
    record: Vec<u8>,
    record_value: FlowRunRecord,
    /// The seed flow's output.
    expected: String,
}

/// The seed flow: a task persisted as a barrier over two rows, its output printed.
async fn seed_flow(store: &str, history: bool) -> sluice::FlowRun<String> {
    Flow::new("seed")
        .with_result_store(store)
        .with_run_store(store)
        .with_run_history(history)
        .run(json!({"month": "2023-09"}), async {
            let batches = Task::new("numbers")
                .persist(Persist::Barrier)
                .run(|cx| async move {
                    cx.sql("SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS t(n, s)", [])
                        .await
                })
                .await?
                .collect()
                .await?;
            Ok(
                sluice::datafusion::arrow::util::pretty::pretty_format_batches(&batches)?
                    .to_string(),
            )
        })
        .await
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().display().to_string();
        let run = runtime().block_on(seed_flow(&store, true));
        let expected = run.output.unwrap();
        assert!(expected.contains("| 2 | b |"), "{expected}");
        let find = |suffix: &str| -> PathBuf {
            files_under(dir.path())
                .into_iter()
                .find(|p| p.to_string_lossy().ends_with(suffix))
                .unwrap_or_else(|| panic!("no {suffix} written"))
        };
        let manifest = std::fs::read(find("_manifest.json")).unwrap();
        let record = std::fs::read(find(&format!("{}.json", run.record.run_id))).unwrap();
        // The record as read back (floats as parsed), to compare with what lists.
        let record_value = serde_json::from_slice(&record).unwrap();
        Seeds {
            dir,
            manifest,
            record,
            record_value,
            expected,
        }
    })
}

/// Whether an error is, or wraps, a checkpoint found corrupt while it streamed. (By
/// variant: the `source()` of a boxed cause is the `Box`, which does not downcast to
/// `Error`.)
fn is_corrupt_checkpoint(error: &Error) -> bool {
    match error {
        Error::CorruptCheckpoint { .. } => true,
        Error::Task { source, .. }
        | Error::Write { source, .. }
        | Error::Checkpoint { source, .. } => is_corrupt_checkpoint(source),
        _ => false,
    }
}

/// The seed's checkpoint with its manifest replaced by `manifest`, looked up by the
/// seed flow: the flow's output is the seed's, or it fails with `CorruptCheckpoint`
/// (the checksums disagree) and the next run's output is the seed's. A damaged
/// manifest is never a hit that serves other data.
fn look_up_damaged(manifest: &[u8]) {
    let seeds = seeds();
    let dir = tempfile::tempdir().unwrap();
    for file in files_under(&seeds.dir.path().join("checkpoints")) {
        let target = dir
            .path()
            .join(file.strip_prefix(seeds.dir.path()).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        if file.ends_with("_manifest.json") {
            std::fs::write(&target, manifest).unwrap();
        } else {
            std::fs::copy(&file, &target).unwrap();
        }
    }
    let store = dir.path().display().to_string();
    runtime().block_on(async {
        let run = seed_flow(&store, false).await;
        match run.output {
            Ok(output) => assert_eq!(output, seeds.expected),
            Err(e) => {
                assert!(is_corrupt_checkpoint(&e), "{e}");
                let again = seed_flow(&store, false).await;
                assert_eq!(again.output.unwrap(), seeds.expected);
            }
        }
    });
}

/// One change to a valid input.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flips one bit.
    Flip { at: usize, bit: u8 },
    /// Cuts the input short.
    Truncate { at: usize },
    /// Replaces a range with arbitrary bytes.
    Splice {
        at: usize,
        remove: usize,
        insert: Vec<u8>,
    },
    /// Replaces a range with a JSON token that parsers and checks trip on.
    Token {
        at: usize,
        remove: usize,
        token: &'static str,
    },
    /// Copies a range of the input elsewhere in it.
    Duplicate { from: usize, len: usize, at: usize },
}

const TOKENS: &[&str] = &[
    "\"..\"",
    "\"../x\"",
    "\"/etc/passwd\"",
    "\"a\\\\b\"",
    "\"\\u0000\"",
    "\"\\n\"",
    "\"\"",
    "\"\\ud800\"",
    "-1",
    "0",
    "1e999",
    "18446744073709551615",
    "18446744073709551616",
    "4294967296",
    "null",
    "true",
    "[]",
    "{}",
    "[{}]",
    "\"9999-12-31T23:59:59Z\"",
    "\"+262143-12-31T23:59:59Z\"",
    "\"zz\"",
    ",",
    ":",
    "\"",
    "}",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (
            any::<usize>(),
            0usize..16,
            prop::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(at, remove, insert)| Mutation::Splice { at, remove, insert }),
        (any::<usize>(), 0usize..24, prop::sample::select(TOKENS))
            .prop_map(|(at, remove, token)| Mutation::Token { at, remove, token }),
        (any::<usize>(), 1usize..64, any::<usize>())
            .prop_map(|(from, len, at)| Mutation::Duplicate { from, len, at }),
    ]
}

fn mutate(input: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = input.to_vec();
    for mutation in mutations {
        let len = bytes.len();
        let pos = |at: usize| if len == 0 { 0 } else { at % (len + 1) };
        match mutation {
            Mutation::Flip { at, bit } => {
                if len > 0 {
                    bytes[at % len] ^= 1 << bit;
                }
            }
            Mutation::Truncate { at } => bytes.truncate(pos(*at)),
            Mutation::Splice { at, remove, insert } => {
                let at = pos(*at);
                let end = (at + remove).min(len);
                bytes.splice(at..end, insert.iter().copied());
            }
            Mutation::Token { at, remove, token } => {
                let at = pos(*at);
                let end = (at + remove).min(len);
                bytes.splice(at..end, token.bytes());
            }
            Mutation::Duplicate { from, len: n, at } => {
                let from = pos(*from).min(len);
                let copied: Vec<u8> = bytes[from..(from + n).min(len)].to_vec();
                let at = pos(*at);
                bytes.splice(at..at, copied);
            }
        }
    }
    bytes
}

/// What every manifest `parse` accepts must satisfy, and its round trip.
fn check_accepted_manifest(manifest: &Manifest) {
    sluice::validate_name("task name", &manifest.task).unwrap();
    sluice::validate_name("cache key", &manifest.key).unwrap();
    let mut rows = 0u64;
    for file in &manifest.files {
        for part in file.path.split('/') {
            sluice::validate_name("part", part).unwrap();
        }
        rows += file.rows;
    }
    assert_eq!(rows, manifest.rows);
    let _ = manifest.bytes();
    manifest.schema().unwrap();
    let again = Manifest::parse(&serde_json::to_vec_pretty(manifest).unwrap())
        .expect("an accepted manifest re-parses");
    assert_eq!(&again, manifest);
}

/// A checkpoint store holding `bytes` as a manifest, read the ways `sluice cache`
/// reads it: nothing panics, and the entry is valid only if `parse` accepts it.
fn read_through_store(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let key_dir = dir.path().join("checkpoints/fuzzed/0123abcd");
    std::fs::create_dir_all(&key_dir).unwrap();
    std::fs::write(key_dir.join("_manifest.json"), bytes).unwrap();
    let parsed = Manifest::parse(bytes);
    runtime().block_on(async {
        let store =
            CheckpointStore::open(&Session::new(), &dir.path().display().to_string()).unwrap();
        let entries = store.list().await.unwrap();
        assert_eq!(entries.len(), 1);
        let valid = matches!(entries[0].state.as_str(), "valid" | "expired");
        assert_eq!(valid, parsed.is_ok(), "{entries:?}");
        match store.show("fuzzed", "0123").await {
            Ok(shown) => assert_eq!(Ok(shown), parsed),
            Err(e) => assert!(
                matches!(e, Error::InvalidOption { option: "key", .. }),
                "{e}"
            ),
        }
    });
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn manifest_parse_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        if let Ok(manifest) = Manifest::parse(&bytes) {
            check_accepted_manifest(&manifest);
        }
    }

    #[test]
    fn manifest_parse_survives_mutations_of_a_real_manifest(
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let bytes = mutate(&seeds().manifest, &mutations);
        match Manifest::parse(&bytes) {
            Ok(manifest) => check_accepted_manifest(&manifest),
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
    }

    #[test]
    fn manifests_round_trip_whatever_their_free_text(
        plan in any::<String>(),
        code_version in proptest::option::of(any::<String>()),
        flow_run in any::<String>(),
        column in any::<String>(),
        rows in prop::collection::vec(0u64..u64::MAX / 64, 1..8),
        task in "[A-Za-z0-9][A-Za-z0-9_.-]{0,40}",
    ) {
        let mut value: serde_json::Value = serde_json::from_slice(&seeds().manifest).unwrap();
        value["plan"] = json!(plan);
        value["code_version"] = json!(code_version);
        value["flow_run"] = json!(flow_run);
        value["compression"] = json!(column);
        value["task"] = json!(task);
        value["rows"] = json!(rows.iter().sum::<u64>());
        let template = value["files"][0].clone();
        value["files"] = rows
            .iter()
            .enumerate()
            .map(|(i, rows)| {
                let mut file = template.clone();
                file["path"] = json!(format!("data-{i:x}/part-{i}.parquet"));
                // The size stays the template's: its block checksums must add up.
                file["rows"] = json!(rows);
                file
            })
            .collect();
        let manifest = Manifest::parse(&serde_json::to_vec(&value).unwrap())
            .expect("a valid manifest parses");
        prop_assert_eq!(&manifest.plan, &plan);
        prop_assert_eq!(&manifest.task, &task);
        prop_assert_eq!(manifest.files.len(), rows.len());
        check_accepted_manifest(&manifest);
    }
}

proptest! {
    // Each case writes a checkpoint store on disk: fewer cases by default.
    #![proptest_config(Config { cases: config().cases / 4, ..config() })]

    #[test]
    fn the_checkpoint_store_reads_damaged_manifests_as_invalid(
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        read_through_store(&mutate(&seeds().manifest, &mutations));
    }
}

proptest! {
    // Each case runs a flow or two: fewer cases still.
    #![proptest_config(Config { cases: config().cases / 8, ..config() })]

    #[test]
    fn a_flow_looking_up_a_damaged_manifest_gets_the_right_rows_or_a_typed_error(
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        look_up_damaged(&mutate(&seeds().manifest, &mutations));
    }
}

/// A run store on disk holding the seed's record and `bytes` as another record file;
/// listing and getting never panic, the seed's record is always there, and a fuzzed
/// record is listed only if it deserializes.
fn read_run_store(bytes: &[u8], file: &str) {
    let seeds = seeds();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let seed_path = runs.join(&seeds.record_value.flow);
    std::fs::create_dir_all(&seed_path).unwrap();
    std::fs::write(
        seed_path.join(format!("{}.json", seeds.record_value.run_id)),
        &seeds.record,
    )
    .unwrap();
    let fuzzed_dir = runs.join("fuzzed");
    std::fs::create_dir_all(&fuzzed_dir).unwrap();
    std::fs::write(fuzzed_dir.join(file), bytes).unwrap();
    let parsed: Option<FlowRunRecord> = file
        .ends_with(".json")
        .then(|| serde_json::from_slice(bytes).ok())
        .flatten();
    runtime().block_on(async {
        let store = RunStore::open(&Session::new(), &dir.path().display().to_string()).unwrap();
        let listed = store.list(&RunFilter::default()).await.unwrap();
        assert!(listed.contains(&seeds.record_value), "{listed:?}");
        assert_eq!(listed.len(), 1 + usize::from(parsed.is_some()));
        if let Some(parsed) = &parsed {
            assert!(listed.contains(parsed));
        }
        let only_seed = store
            .list(&RunFilter::default().with_flow(seeds.record_value.flow.as_str()))
            .await
            .unwrap();
        assert_eq!(only_seed, vec![seeds.record_value.clone()]);
        match store.get(&seeds.record_value.run_id).await {
            Ok(found) => assert_eq!(found.run_id, seeds.record_value.run_id),
            // A fuzzed record that kept a run id starting like the seed's.
            Err(Error::RunNotFound { detail, .. }) => {
                assert!(detail.contains("matches 2 runs"), "{detail}")
            }
            Err(e) => panic!("{e}"),
        }
        if let Some(parsed) = &parsed
            && !parsed.run_id.is_empty()
        {
            match store.get(&parsed.run_id).await {
                Ok(found) => assert!(found.run_id.starts_with(&parsed.run_id)),
                Err(e) => assert!(matches!(e, Error::RunNotFound { .. }), "{e}"),
            }
        }
    });
}

proptest! {
    #![proptest_config(Config { cases: config().cases / 4, ..config() })]

    #[test]
    fn run_records_of_arbitrary_bytes_are_skipped(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        name in prop::sample::select(&["x.json", "fuzz.json", "not-a-record.txt", ".json"][..]),
    ) {
        read_run_store(&bytes, name);
    }

    #[test]
    fn damaged_run_records_are_skipped_or_read_whole(
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        read_run_store(&mutate(&seeds().record, &mutations), "fuzz.json");
    }

    #[test]
    fn run_records_round_trip_through_the_run_store(
        error in proptest::option::of(any::<String>()),
        parameter in any::<String>(),
        version in proptest::option::of(any::<String>()),
        flow in "[A-Za-z0-9][A-Za-z0-9_.-]{0,40}",
    ) {
        let mut record = seeds().record_value.clone();
        record.error = error;
        record.parameters = json!({ "p": parameter });
        record.version = version;
        record.flow = flow;
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let store = RunStore::open(&Session::new(), &dir.path().display().to_string()).unwrap();
            store.write(&record).await.unwrap();
            // What serde gives back for it (floats as parsed).
            let expected: FlowRunRecord =
                serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
            let listed = store.list(&RunFilter::default().with_flow(record.flow.as_str())).await.unwrap();
            assert_eq!(listed, vec![expected.clone()]);
            assert_eq!(store.get(&record.run_id[..8]).await.unwrap(), expected);
        });
    }
}

/// A run store opened at `memory://open/<suffix>/` writes a record under its prefix,
/// or is refused when opened; never anywhere else in the store.
fn write_under(suffix: &str) {
    let session = Session::new();
    let location = format!("memory://open/{suffix}/");
    let opened = RunStore::open(&session, &location);
    assert_eq!(
        opened.is_ok(),
        CheckpointStore::open(&session, &location).is_ok(),
        "{location:?}"
    );
    let Ok(store) = opened else { return };
    let prefix = object_path(store.url()).unwrap();
    let record = seeds().record_value.clone();
    runtime().block_on(async {
        use futures::TryStreamExt;
        store.write(&record).await.unwrap();
        let memory = session.stores().store_for(store.url()).unwrap();
        let objects: Vec<object_store::path::Path> = memory
            .list(None)
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .unwrap();
        // The record and its index key, both under the store's prefix.
        assert_eq!(objects.len(), 2, "{location:?}: {objects:?}");
        for object in &objects {
            assert!(
                object.prefix_matches(&prefix.clone().join("runs"))
                    || object.prefix_matches(&prefix.clone().join("runs-index")),
                "{location:?}: {object} is not under {prefix}"
            );
        }
        assert_eq!(store.list(&RunFilter::default()).await.unwrap().len(), 1);
    });
}

proptest! {
    #![proptest_config(Config { cases: config().cases / 2, ..config() })]

    /// Found the prefix of `memory://x/pre%00fix/` dropped (records at the top).
    #[test]
    fn stores_opened_at_arbitrary_locations_write_under_their_prefix(
        suffix in prop_oneof![
            any::<String>(),
            "(%[0-9a-fA-F]{2}|[a-z./ ]){0,12}",
        ],
    ) {
        write_under(&suffix);
    }
}

/// What any location's URL must satisfy once resolved.
fn check_resolved(url: &url::Url) {
    // Resolving is idempotent: the URL names itself.
    let again = resolve_url(url.as_str()).expect("a resolved URL resolves");
    assert_eq!(&again, url);
    let _ = object_path(url);
    let _ = store_key(url);
    let redacted = redact(url);
    if let Ok(parsed) = url::Url::parse(&redacted) {
        assert_eq!(parsed.password(), None, "{redacted}");
        assert_eq!(parsed.username(), "", "{redacted}");
    }
}

/// Location text: URLs of every scheme we know and some we do not, with credentials,
/// ports, globs, `..`, encodings and junk.
fn location() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(
        &[
            "",
            "file://",
            "file:",
            "s3://",
            "s3a://",
            "memory://",
            "http://",
            "https://",
            "gs://",
            "az://",
            "ftp://",
            "x://",
            "://",
            "S3://",
        ][..],
    );
    let part = prop_oneof![
        "[a-zA-Z0-9_.-]{1,8}",
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        "[*?\\[\\]{}!^]{1,3}[a-z]{0,3}",
        "%[0-9a-fA-F]{0,2}",
        "[ #@:;=&+,\\\\]{1,2}",
        any::<String>(),
    ];
    (
        scheme,
        proptest::option::of("[a-z]{1,5}(:[a-z]{0,5})?@"),
        prop::collection::vec(part, 0..6),
        proptest::option::of(":[0-9]{1,6}"),
    )
        .prop_map(|(scheme, userinfo, parts, port)| {
            let mut text = scheme.to_string();
            if !scheme.is_empty() {
                text.push_str(userinfo.as_deref().unwrap_or(""));
            }
            let mut parts = parts.into_iter();
            if let Some(host) = parts.next() {
                text.push_str(&host);
            }
            text.push_str(port.as_deref().unwrap_or(""));
            for part in parts {
                text.push('/');
                text.push_str(&part);
            }
            text
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn resolving_arbitrary_text_never_panics(text in any::<String>()) {
        if let Ok(url) = resolve_url(&text) {
            check_resolved(&url);
        }
    }

    #[test]
    fn resolving_location_like_text_never_panics_and_is_idempotent(text in location()) {
        match resolve_url(&text) {
            Ok(url) => check_resolved(&url),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn local_paths_resolve_to_their_normalized_file_url(
        parts in prop::collection::vec("[a-zA-Z0-9 _%#?-]{1,6}|\\.|\\.\\.", 1..6),
        directory in any::<bool>(),
    ) {
        let mut text = format!("/base/{}", parts.join("/"));
        if directory {
            text.push('/');
        }
        let url = resolve_url(&text).unwrap();
        prop_assert_eq!(url.scheme(), "file");
        prop_assert!(url.path() == "/" || url.as_str().ends_with('/') == directory);
        let path = url.to_file_path().unwrap();
        prop_assert!(path.components().all(|c| !matches!(
            c,
            std::path::Component::ParentDir | std::path::Component::CurDir
        )));
        // The object path is the file path, decoded.
        let object = object_path(&url).unwrap();
        let shown = path.display().to_string();
        prop_assert_eq!(object.as_ref(), shown.trim_matches('/'));
        check_resolved(&url);
    }
}

/// An in-memory store with three objects, read through arbitrary locations: the
/// source parser (globs included) never panics and errors are Sluice's own.
fn read_memory(session: &Session, suffix: &str) -> Result<Frame> {
    runtime().block_on(session.read_parquet(&format!("memory://fuzz/{suffix}")))
}

fn memory_session() -> &'static Session {
    static SESSION: OnceLock<Session> = OnceLock::new();
    SESSION.get_or_init(|| {
        let session = Session::new();
        let dir = tempfile::tempdir().unwrap();
        let file = crate::common::taxi_file(dir.path(), "t.parquet", 10, 10);
        let bytes = std::fs::read(file).unwrap();
        let store = session
            .stores()
            .store_for(&url::Url::parse("memory://fuzz/").unwrap())
            .unwrap();
        runtime().block_on(async {
            for key in ["a/one.parquet", "a/b/two.parquet", "c d/three.parquet"] {
                object_store::ObjectStoreExt::put(
                    store.as_ref(),
                    &object_store::path::Path::from(key),
                    bytes.clone().into(),
                )
                .await
                .unwrap();
            }
        });
        session
    })
}

proptest! {
    #![proptest_config(Config { cases: config().cases / 2, ..config() })]

    #[test]
    fn reading_arbitrary_locations_in_a_store_never_panics(
        suffix in prop_oneof![
            any::<String>(),
            prop::collection::vec(
                prop_oneof![
                    Just("a".to_string()),
                    Just("b".to_string()),
                    Just("c d".to_string()),
                    Just("c%20d".to_string()),
                    Just("**".to_string()),
                    "[*?\\[\\]{}!a-z.%]{1,6}",
                ],
                0..4,
            )
            .prop_map(|parts| parts.join("/")),
        ],
    ) {
        let session = memory_session();
        match read_memory(session, &suffix) {
            Ok(frame) => {
                // A frame read is a real listing: it counts the rows it found.
                let rows = runtime().block_on(frame.count()).unwrap();
                prop_assert!(rows > 0 && rows.is_multiple_of(10), "{suffix:?}: {rows}");
            }
            Err(e) => prop_assert!(
                matches!(
                    e,
                    Error::SourceNotFound { .. }
                        | Error::Store(_)
                        | Error::Plan { .. }
                        | Error::InvalidParquet { .. }
                ),
                "{suffix:?}: {e:?}"
            ),
        }
    }
}

/// The objects of the overlap property's store, each a 10-row Parquet file.
const OVERLAP_OBJECTS: [&str; 4] = [
    "a/one.parquet",
    "a/b/two.parquet",
    "a/k=v/three.parquet",
    "c d/four.parquet",
];

fn taxi_bytes() -> &'static Vec<u8> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::read(crate::common::taxi_file(dir.path(), "t.parquet", 10, 10)).unwrap()
    })
}

/// Whatever a sink is asked to write, a source reads the same rows afterwards: a
/// destination that would change them is refused (and then nothing is written).
/// Returns whether it was refused.
async fn write_beside(source: &str, dest: &str) -> bool {
    let session = Session::new();
    let store = session
        .stores()
        .store_for(&url::Url::parse("memory://o/").unwrap())
        .unwrap();
    for key in OVERLAP_OBJECTS {
        object_store::ObjectStoreExt::put(
            store.as_ref(),
            &object_store::path::Path::from(key),
            taxi_bytes().clone().into(),
        )
        .await
        .unwrap();
    }
    let listing = || async {
        use futures::TryStreamExt;
        let mut keys: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    };
    let source = format!("memory://o/{source}");
    let frame = session.read_parquet(&source).await.unwrap();
    let before = frame.count().await.unwrap();
    let objects = listing().await;
    let written = frame
        .write_parquet(&format!("memory://o/{dest}"), ParquetWrite::snappy())
        .await;
    let again = session.read_parquet(&source).await.unwrap();
    assert_eq!(
        again.count().await.unwrap(),
        before,
        "{source} -> {dest}: {:?}",
        written.map(|w| w.url)
    );
    let refused = matches!(written, Err(Error::DestinationOverlapsSource { .. }));
    if refused {
        assert_eq!(listing().await, objects, "{source} -> {dest}");
    }
    refused
}

/// Found by `accepted_destinations_never_change_what_the_source_reads`: a glob's
/// listing enters partition directories (`k=v`), so writing into one changed what the
/// glob read; such a destination is refused now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_in_a_partition_directory_below_a_glob_is_refused() {
    assert!(write_beside("c%20d/*.parquet", "c%20d/k=v/").await);
    assert!(write_beside("a/*.parquet", "a/k=v/new.parquet").await);
    assert!(!write_beside("a/*.parquet", "a/k=v/x").await, "not a match");
    assert!(!write_beside("a/*.parquet", "b/k=v/new.parquet").await);
}

proptest! {
    #![proptest_config(Config { cases: config().cases / 4, ..config() })]

    #[test]
    fn accepted_destinations_never_change_what_the_source_reads(
        source in prop::sample::select(&[
            "a/", "a", "a/one.parquet", "a/*.parquet", "a/*", "a/o*.parquet",
            "a/[ot]*.parquet", "c d/", "c%20d/*.parquet",
        ][..]),
        parts in prop::collection::vec(
            prop::sample::select(&[
                "a", "b", "c d", "c%20d", "k=v", "one.parquet", "new.parquet", "x",
            ][..]),
            1..4,
        ),
        directory in any::<bool>(),
    ) {
        let mut dest = parts.join("/");
        if directory {
            dest.push('/');
        }
        runtime().block_on(write_beside(source, &dest));
    }
}

#[test]
fn globs_in_a_store_match_what_they_say() {
    let session = memory_session();
    let count = |suffix: &str| {
        read_memory(session, suffix)
            .map(|frame| runtime().block_on(frame.count()).unwrap())
            .map_err(|e| e.to_string())
    };
    assert_eq!(count("a/*.parquet"), Ok(10));
    // A directory is read without its subdirectories (DataFusion's listing; only
    // `key=value` partition directories are entered).
    assert_eq!(count("a/"), Ok(10));
    assert_eq!(count("c d/*.parquet"), Ok(10));
    assert_eq!(count("c%20d/three.parquet"), Ok(10));
    // DataFusion's listing matches a glob against the first path component below
    // its base only (`listing_table_ignore_subdirectory`): a glob across directories
    // finds nothing there.
    assert!(count("*/three.parquet").is_err());
    assert!(count("nothing/*.parquet").is_err());
}

/// A change to a manifest's JSON.
type Change = Box<dyn Fn(&mut serde_json::Value)>;

/// Damaged manifests the fuzzer (or a reading of the format) found accepted before
/// `parse` checked names and figures; each is refused now.
#[test]
fn hostile_manifests_are_refused() {
    let seed: serde_json::Value = serde_json::from_slice(&seeds().manifest).unwrap();
    Manifest::parse(&seeds().manifest).expect("the seed parses");
    let cases: Vec<(&str, Change)> = vec![
        (
            "a part outside its directory",
            Box::new(|m| m["files"][0]["path"] = json!("../../other/part-0.parquet")),
        ),
        (
            "an absolute part",
            Box::new(|m| m["files"][0]["path"] = json!("/etc/passwd")),
        ),
        (
            "a backslash",
            Box::new(|m| m["files"][0]["path"] = json!("data-1\\..\\x.parquet")),
        ),
        (
            "an empty part path",
            Box::new(|m| m["files"][0]["path"] = json!("")),
        ),
        (
            "an empty component",
            Box::new(|m| m["files"][0]["path"] = json!("data-1//part-0.parquet")),
        ),
        (
            "a NUL in a part",
            Box::new(|m| m["files"][0]["path"] = json!("part\u{0}.parquet")),
        ),
        (
            "a task that escapes",
            Box::new(|m| m["task"] = json!("../numbers")),
        ),
        ("an empty key", Box::new(|m| m["key"] = json!(""))),
        (
            "columns that are not the schema's",
            Box::new(|m| m["columns"][0] = json!("x: Int64")),
        ),
        (
            "a key with a newline",
            Box::new(|m| m["key"] = json!("ab\ncd")),
        ),
        (
            "rows that do not add up",
            Box::new(|m| m["rows"] = json!(m["rows"].as_u64().unwrap() + 1)),
        ),
        (
            "a part listed twice",
            Box::new(|m| {
                let first = m["files"][0].clone();
                m["files"].as_array_mut().unwrap().push(first);
                m["rows"] = json!(m["rows"].as_u64().unwrap() * 2);
            }),
        ),
        (
            "sizes that overflow",
            Box::new(|m| {
                let mut second = m["files"][0].clone();
                second["path"] = json!("data-2/part-0.parquet");
                second["rows"] = json!(0);
                second["size"] = json!(u64::MAX);
                m["files"][0]["size"] = json!(u64::MAX);
                m["files"].as_array_mut().unwrap().push(second);
            }),
        ),
        (
            "rows that overflow",
            Box::new(|m| {
                let mut second = m["files"][0].clone();
                second["path"] = json!("data-2/part-0.parquet");
                second["rows"] = json!(u64::MAX);
                m["files"].as_array_mut().unwrap().push(second);
            }),
        ),
    ];
    for (what, change) in cases {
        let mut value = seed.clone();
        change(&mut value);
        let reason = Manifest::parse(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(!reason.is_empty(), "{what}");
        read_through_store(&serde_json::to_vec(&value).unwrap());
    }
}

/// Every single-bit flip of a manifest's schema (hex IPC) is refused or read, never a
/// panic: arrow-ipc 59 panicked on some (an integer type 80 bits wide, found by
/// `the_checkpoint_store_reads_damaged_manifests_as_invalid`), which took down the
/// process that looked the checkpoint up, or ran `sluice cache ls`. A flip that still
/// decodes to another schema is looked up by a flow, which must read the right rows:
/// one decoded to a schema without columns, and the checkpoint was a hit with no
/// columns (found here; the manifest's schema must now match its `columns`).
#[test]
fn every_bit_flip_of_a_manifest_schema_is_refused_or_read_never_a_panic() {
    let seed: serde_json::Value = serde_json::from_slice(&seeds().manifest).unwrap();
    let original = Manifest::parse(&seeds().manifest)
        .unwrap()
        .schema()
        .unwrap();
    let hex = seed["schema_ipc"].as_str().unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let (mut refused, mut read, mut other) = (0, 0, 0);
    for at in 0..bytes.len() {
        for bit in 0..8 {
            let mut flipped = bytes.clone();
            flipped[at] ^= 1 << bit;
            let mut value = seed.clone();
            value["schema_ipc"] = json!(
                flipped
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            let bytes = serde_json::to_vec(&value).unwrap();
            match Manifest::parse(&bytes) {
                Ok(manifest) => {
                    check_accepted_manifest(&manifest);
                    if manifest.schema().unwrap() != original {
                        look_up_damaged(&bytes);
                        other += 1;
                    }
                    read += 1;
                }
                Err(reason) => {
                    assert!(reason.contains("schema"), "{reason}");
                    refused += 1;
                }
            }
        }
    }
    assert_eq!(refused + read, bytes.len() * 8);
    eprintln!(
        "{} flips of the schema: {refused} refused, {read} read ({other} to another schema)",
        bytes.len() * 8
    );
    assert!(refused > 0 && read > 0, "{refused} refused, {read} read");
}

/// A TTL so long that `created + ttl` passes the calendar's end panicked when the
/// checkpoint was committed; it now never expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_whose_expiry_passes_the_calendar_never_expires() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().display().to_string();
    let ttl = std::time::Duration::from_secs(u64::MAX / 4000);
    for expected in [TaskState::Completed, TaskState::Cached] {
        let run = Flow::new("forever")
            .with_result_store(&store)
            .with_run_history(false)
            .run(json!({}), async {
                Task::new("numbers")
                    .cache(CachePolicy::inputs().expire_after(ttl))
                    .run(|cx| async move { cx.sql("SELECT 1 AS n", []).await })
                    .await?
                    .count()
                    .await
            })
            .await;
        assert_eq!(run.output.unwrap(), 1);
        assert_eq!(run.record.tasks[0].state, expected);
    }
    let entries = CheckpointStore::open(&Session::new(), &store)
        .unwrap()
        .list()
        .await
        .unwrap();
    assert_eq!(entries[0].expires, None);
}
