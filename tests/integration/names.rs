//! Names and paths: task names, flow names, run ids and cache keys never make a key
//! outside its prefix (a hostile name is refused with `Error::InvalidName` before
//! anything is written, on local disk and on S3), and a destination that overlaps a
//! source is refused before anything is written, however the two are spelled.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::TryStreamExt;
use object_store::ObjectStore;
use serde_json::json;
use sluice::prelude::*;
use sluice::{CheckpointStore, MAX_NAME_LEN, RunFilter, RunStore, Task, one_line};

use crate::common::{dir_entries, relative_files_under, taxi_file};
use crate::remote::S3Target;

/// Names that would leave their prefix, or that no key should hold.
fn hostile_names(outside: &Path) -> Vec<String> {
    let mut names: Vec<String> = [
        "",
        ".",
        "..",
        "../escaped",
        "../../escaped",
        "a/../../escaped",
        "/escaped",
        "..\\escaped",
        "a\\b",
        "nul\0byte",
        "new\nline",
        "\r",
        "tab\tname",
        "\u{1b}[31mred",
        " ",
        "two words",
        ".hidden",
        "_manifest.json",
        "-flag",
        "%2e%2e",
        "*",
        "a?b",
        "r#type",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    names.push(outside.join("escaped").display().to_string());
    names.push("x".repeat(MAX_NAME_LEN + 1));
    names
}

/// The `InvalidName` inside an error (a task wraps it), as `(what, name)`.
fn invalid_name(error: &Error) -> Option<(&'static str, &str)> {
    match error {
        Error::InvalidName { what, name, .. } => Some((*what, name.as_str())),
        Error::Task { source, .. } => invalid_name(source),
        _ => None,
    }
}

/// A flow run (`flow`, recorded in `runs`) calling a task named `task`, persisted as
/// a barrier in `store` (so that a checkpoint would be written at the call), then
/// writing `dest`. Returns the run and whether the task's body ran.
async fn run_named(
    flow: &str,
    task: &str,
    store: &str,
    runs: &str,
    dest: &str,
) -> (sluice::FlowRun<WriteSummary>, bool) {
    let body_ran = Arc::new(AtomicBool::new(false));
    let ran = Arc::clone(&body_ran);
    let run = Flow::new(flow)
        .with_result_store(store)
        .with_run_store(runs)
        .run(json!({}), async move {
            let df = Task::new(task)
                .persist(Persist::Barrier)
                .run(|cx| {
                    let ran = Arc::clone(&ran);
                    async move {
                        ran.store(true, Ordering::SeqCst);
                        cx.sql("SELECT * FROM (VALUES (1), (2)) AS t(n)", []).await
                    }
                })
                .await?;
            df.write_parquet(dest, ParquetWrite::snappy()).await
        })
        .await;
    (run, body_ran.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_task_names_are_refused_before_anything_is_written() {
    let root = tempfile::tempdir().unwrap();
    let outside = root.path().join("outside");
    let store = root.path().join("store/results/").display().to_string();
    let runs = root.path().join("runs").display().to_string();
    let dest = root.path().join("out.parquet").display().to_string();
    let names = hostile_names(&outside);
    for name in &names {
        let (run, body_ran) = run_named("names", name, &store, &runs, &dest).await;
        let error = run.output.unwrap_err();
        assert_eq!(
            invalid_name(&error),
            Some(("task name", name.as_str())),
            "{name:?}: {error}"
        );
        assert!(!body_ran, "{name:?}: the body ran");
        let message = error.to_string();
        assert!(
            message.contains("invalid task name") && !message.contains(['\n', '\0', '\r']),
            "{message}"
        );
        // Nothing but the flow's own run record (and its index key), anywhere under
        // the root.
        let files = relative_files_under(root.path());
        assert!(
            files
                .iter()
                .all(|f| f.starts_with("runs/runs/names/") || f.starts_with("runs/runs-index/")),
            "{name:?}: {files:?}"
        );
    }
    assert!(!outside.exists());
    // The run records (two per run: started, ended) say why.
    let records = RunStore::open(&Session::new(), &runs)
        .unwrap()
        .list(&RunFilter::default())
        .await
        .unwrap();
    assert_eq!(records.len(), names.len());
    assert!(records.iter().all(|r| r.state == FlowState::Failed
        && r.error.as_deref().unwrap().contains("invalid task name")));
}

#[task(name = "a/../../escaped", persist)]
async fn escaping_task(cx: &TaskContext) -> Result<Frame> {
    cx.sql("SELECT 1 AS n", []).await
}

#[flow(name = "../escaped")]
async fn escaping_flow(dest: &str) -> Result<WriteSummary> {
    escaping_task()
        .await?
        .write_parquet(dest, ParquetWrite::snappy())
        .await
}

#[flow]
async fn flow_with_escaping_task(dest: &str) -> Result<WriteSummary> {
    escaping_task()
        .await?
        .write_parquet(dest, ParquetWrite::snappy())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_flow_names_are_refused_before_the_body_runs() {
    let root = tempfile::tempdir().unwrap();
    let outside = root.path().join("outside");
    let store = root.path().join("store").display().to_string();
    let runs = root.path().join("runs").display().to_string();
    let dest = root.path().join("out.parquet").display().to_string();
    for name in hostile_names(&outside) {
        let (run, body_ran) = run_named(&name, "fine", &store, &runs, &dest).await;
        let error = run.output.unwrap_err();
        assert_eq!(
            invalid_name(&error),
            Some(("flow name", name.as_str())),
            "{name:?}: {error}"
        );
        assert!(!body_ran, "{name:?}");
        assert_eq!(run.record.state, FlowState::Failed);
        assert_eq!(
            run.record.error.as_deref(),
            Some(error.to_string().as_str())
        );
        assert_eq!(
            relative_files_under(root.path()),
            Vec::<String>::new(),
            "{name:?}"
        );
    }
    // Through the macros too: an explicit name is checked like any other.
    let run = escaping_flow(&dest)
        .with_run_store(&runs)
        .with_result_store(&store)
        .run()
        .await;
    let error = run.output.unwrap_err();
    assert_eq!(invalid_name(&error), Some(("flow name", "../escaped")));
    let run = flow_with_escaping_task(&dest)
        .with_run_store(&runs)
        .with_result_store(&store)
        .run()
        .await;
    let error = run.output.unwrap_err();
    assert_eq!(invalid_name(&error), Some(("task name", "a/../../escaped")));
    let files = relative_files_under(root.path());
    // The run's record and its index key, nothing else.
    assert!(
        files
            .iter()
            .all(|f| f.starts_with("runs/runs/flow_with_escaping_task/")
                || f.starts_with("runs/runs-index/")),
        "{files:?}"
    );
    assert!(!outside.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_cache_keys_and_parameters_are_hashed_into_the_key() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let hostile = "../../../escaped/\0\n/etc/passwd";
    for refresh in [false, true] {
        let run = Flow::new("keys")
            .with_result_store(store.display().to_string())
            .with_run_history(false)
            .run(json!({}), async {
                let df = Task::new("keyed")
                    .cache(CachePolicy::key_fn(move |_| hostile.to_string()).refresh(refresh))
                    .persist(Persist::Barrier)
                    .with_parameter("path", json!(hostile))
                    .run(|cx| async move { cx.sql("SELECT 1 AS n", []).await })
                    .await?;
                df.count().await
            })
            .await;
        assert_eq!(run.output.unwrap(), 1);
    }
    let files = relative_files_under(root.path());
    assert!(!files.is_empty());
    for file in &files {
        let parts: Vec<&str> = file.split('/').collect();
        assert_eq!(&parts[..3], ["store", "checkpoints", "keyed"], "{file}");
        assert!(
            parts[3].len() >= 32 && parts[3].chars().all(|c| c.is_ascii_hexdigit()),
            "the key is a hex digest: {file}"
        );
    }
    assert_eq!(dir_entries(root.path()), ["store"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_and_checkpoint_stores_refuse_hostile_names_and_touch_nothing() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store").display().to_string();
    let runs = root.path().join("runs").display().to_string();
    let dest = root.path().join("out.parquet").display().to_string();
    let (run, _) = run_named("names", "kept", &store, &runs, &dest).await;
    run.output.unwrap();
    let before = relative_files_under(root.path());
    let session = Session::new();
    let run_store = RunStore::open(&session, &runs).unwrap();
    let checkpoints = CheckpointStore::open(&session, &store).unwrap();
    for name in hostile_names(&root.path().join("outside")) {
        let mut record = run.record.clone();
        record.run_id = name.clone();
        let error = run_store.write(&record).await.unwrap_err();
        assert_eq!(invalid_name(&error), Some(("run id", name.as_str())));
        let mut record = run.record.clone();
        record.flow = name.clone();
        let error = run_store.write(&record).await.unwrap_err();
        assert_eq!(invalid_name(&error), Some(("flow name", name.as_str())));
        let error = run_store
            .list(&RunFilter::default().with_flow(name.as_str()))
            .await
            .unwrap_err();
        assert_eq!(invalid_name(&error), Some(("flow name", name.as_str())));
        let error = checkpoints.show(&name, "").await.unwrap_err();
        assert_eq!(invalid_name(&error), Some(("task name", name.as_str())));
        let error = checkpoints.clear(Some(&name)).await.unwrap_err();
        assert_eq!(invalid_name(&error), Some(("task name", name.as_str())));
    }
    assert_eq!(relative_files_under(root.path()), before);
    assert_eq!(checkpoints.list().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_write_nothing_to_s3() {
    let s3 = S3Target::new("names").await;
    let session = s3.session();
    let store = s3.url("results/");
    let runs = s3.url("runs/");
    let dest = s3.url("out.parquet");
    let outside = PathBuf::from("/outside");
    for (flow, task) in hostile_names(&outside)
        .into_iter()
        .flat_map(|name| [(name.clone(), "fine".to_string()), ("fine".into(), name)])
    {
        let run = Flow::new(flow.as_str())
            .with_result_store(&store)
            .with_run_store(&runs)
            .configure(|o| o.with_session(session.clone()))
            .run(json!({}), async {
                Task::new(task.as_str())
                    .persist(Persist::Barrier)
                    .run(|cx| async move { cx.sql("SELECT 1 AS n", []).await })
                    .await?
                    .write_parquet(&dest, ParquetWrite::snappy())
                    .await
            })
            .await;
        let error = run.output.unwrap_err();
        assert!(invalid_name(&error).is_some(), "{flow:?} {task:?}: {error}");
    }
    // Only the records of the runs whose flow name was valid (one object per run: its
    // start and end records share a key). The in-process server's bucket is this
    // test's alone, so anything anywhere in it counts.
    let objects: Vec<String> = s3
        .store()
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    let ours: Vec<&String> = objects
        .iter()
        .filter(|o| s3.server.is_some() || o.starts_with(&s3.prefix))
        .collect();
    // Each run's record and its index key, nothing else.
    let runs_prefix = format!("{}/runs/runs/fine/", s3.prefix);
    let index_prefix = format!("{}/runs/runs-index/", s3.prefix);
    let (records, keys): (Vec<&&String>, Vec<&&String>) =
        ours.iter().partition(|o| o.starts_with(&runs_prefix));
    assert!(
        keys.iter().all(|o| o.starts_with(&index_prefix)),
        "{ours:?}"
    );
    assert_eq!(records.len(), hostile_names(&outside).len(), "{ours:?}");
    assert_eq!(keys.len(), records.len(), "{ours:?}");
}

/// Writes `frame` to `dest`, expecting `DestinationOverlapsSource`.
async fn refused(frame: &Frame, dest: &str) {
    let error = frame
        .write_parquet(dest, ParquetWrite::snappy())
        .await
        .map(|s| s.url)
        .unwrap_err();
    assert!(
        matches!(error, Error::DestinationOverlapsSource { .. }),
        "{dest}: {error}"
    );
}

/// A path to `target` relative to the current directory (`../../tmp/...`).
fn relative_to_cwd(target: &Path) -> String {
    let cwd = std::env::current_dir().unwrap();
    let up = cwd.components().count() - 1;
    let rest = target.strip_prefix("/").unwrap();
    format!("{}{}", "../".repeat(up), rest.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_overlapping_a_local_source_are_refused_however_spelled() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let trips = data.join("trips");
    std::fs::create_dir_all(&trips).unwrap();
    taxi_file(&trips, "a.parquet", 100, 100);
    let session = Session::new();
    let file = trips.join("a.parquet");
    let plain = |p: &Path| p.display().to_string();
    let file_url = |p: &Path| url::Url::from_file_path(p).unwrap().to_string();

    // The same file, spelled plain, as a file:// URL, relative, with `..` and `.`.
    let one = session.read_parquet(&plain(&file)).await.unwrap();
    refused(&one, &file_url(&file)).await;
    refused(&one, &relative_to_cwd(&file)).await;
    refused(&one, &format!("{}/../trips/./a.parquet", plain(&trips))).await;
    let by_url = session.read_parquet(&file_url(&file)).await.unwrap();
    refused(&by_url, &plain(&file)).await;
    let by_relative = session.read_parquet(&relative_to_cwd(&file)).await.unwrap();
    refused(&by_relative, &plain(&file)).await;
    // A directory destination holding the source.
    refused(&one, &format!("{}/", plain(&data))).await;
    refused(&one, &plain(&data)).await;

    // A file inside a source directory, and the directory itself.
    let dir = session
        .read_parquet(&format!("{}/", plain(&trips)))
        .await
        .unwrap();
    refused(&dir, &plain(&trips.join("b.parquet"))).await;
    refused(&dir, &plain(&trips.join("sub/deeper/c.parquet"))).await;
    refused(&dir, &format!("{}/", plain(&trips))).await;

    // Globs: a match, the globbed directory, a directory around it.
    let glob = session
        .read_parquet(&format!("{}/*.parquet", plain(&trips)))
        .await
        .unwrap();
    refused(&glob, &plain(&trips.join("new.parquet"))).await;
    refused(&glob, &format!("{}/", plain(&trips))).await;
    refused(&glob, &format!("{}/", plain(&data))).await;

    // Through a symbolic link to the source directory, both ways round.
    let link = root.path().join("link");
    std::os::unix::fs::symlink(&trips, &link).unwrap();
    let via_link = session
        .read_parquet(&format!("{}/", plain(&link)))
        .await
        .unwrap();
    refused(&via_link, &plain(&trips.join("b.parquet"))).await;
    refused(&dir, &plain(&link.join("b.parquet"))).await;
    refused(&one, &plain(&link.join("a.parquet"))).await;

    // Nothing was written, not even staged.
    assert_eq!(
        relative_files_under(root.path()),
        ["data/trips/a.parquet", "link"]
    );

    // Beside the source is fine, and so is a sibling directory sharing a prefix.
    for dest in [
        plain(&data.join("out.parquet")),
        plain(&data.join("trips-out/x.parquet")),
        plain(&trips.join("sub/x.parquet")),
    ] {
        let source = if dest.contains("sub") { &glob } else { &dir };
        assert_eq!(
            source
                .write_parquet(&dest, ParquetWrite::snappy())
                .await
                .unwrap()
                .rows,
            100,
            "{dest}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_overlapping_an_s3_source_are_refused_however_spelled() {
    let s3 = S3Target::new("overlap").await;
    let session = s3.session();
    let local = tempfile::tempdir().unwrap();
    let file = taxi_file(local.path(), "a.parquet", 100, 100);
    let bytes = std::fs::read(&file).unwrap();
    let store = s3.store();
    for key in ["raw/a.parquet", "my dir/a b.parquet"] {
        let path = object_store::path::Path::from(format!("{}/{key}", s3.prefix));
        object_store::ObjectStoreExt::put(store.as_ref(), &path, bytes.clone().into())
            .await
            .unwrap();
    }
    let list = || async {
        let mut keys: Vec<String> = s3
            .store()
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    };
    let before = list().await;

    let one = session
        .read_parquet(&s3.url("raw/a.parquet"))
        .await
        .unwrap();
    refused(&one, &s3.url("raw/a.parquet")).await;
    refused(&one, &s3.url("raw/../raw/a.parquet")).await;
    refused(&one, &s3.url("raw/")).await;
    refused(&one, &format!("s3://{}/", s3.bucket)).await;
    let dir = session.read_parquet(&s3.url("raw/")).await.unwrap();
    refused(&dir, &s3.url("raw/b.parquet")).await;
    refused(&dir, &s3.url("raw")).await;
    let glob = session
        .read_parquet(&s3.url("raw/*.parquet"))
        .await
        .unwrap();
    refused(&glob, &s3.url("raw/new.parquet")).await;
    refused(&glob, &s3.url("raw/")).await;
    // Spaces, written plain or percent-encoded, are one object.
    let spaced = session
        .read_parquet(&s3.url("my dir/a b*.parquet"))
        .await
        .unwrap();
    refused(&spaced, &s3.url("my%20dir/a%20b2.parquet")).await;
    refused(&spaced, &s3.url("my dir/a b2.parquet")).await;
    let encoded = session
        .read_parquet(&s3.url("my%20dir/a%20b.parquet"))
        .await
        .unwrap();
    refused(&encoded, &s3.url("my dir/a b.parquet")).await;

    assert_eq!(list().await, before, "nothing was written");
    // Another prefix of the same bucket is fine.
    let written = glob
        .write_parquet(&s3.url("clean/a.parquet"), ParquetWrite::snappy())
        .await
        .unwrap();
    assert_eq!(written.rows, 100);
}

/// Result and run store locations whose path cannot be an object key prefix (a NUL, a
/// newline, once decoded) are refused when opened. They were taken as the store's root
/// instead: checkpoints and run records landed at the top of the bucket, or of the
/// local file system (`/checkpoints/...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_locations_whose_prefix_is_not_a_key_are_refused_not_replaced_by_the_root() {
    let session = Session::new();
    let memory = session
        .stores()
        .store_for(&url::Url::parse("memory://names/").unwrap())
        .unwrap();
    for location in [
        "memory://names/pre%00fix/",
        "memory://names/new%0Aline/",
        "memory://names/a/%0D/b/",
    ] {
        let error = CheckpointStore::open(&session, location).unwrap_err();
        assert!(
            matches!(
                error,
                Error::Store(sluice::store::StoreError::InvalidUrl { .. })
            ),
            "{location}: {error}"
        );
        assert!(RunStore::open(&session, location).is_err(), "{location}");
        let run = Flow::new("names")
            .with_result_store(location)
            .with_run_store(location)
            .configure(|o| o.with_session(session.clone()))
            .run(json!({}), async {
                Task::new("kept")
                    .persist(Persist::Barrier)
                    .run(|cx| async move { cx.sql("SELECT 1 AS n", []).await })
                    .await?
                    .count()
                    .await
            })
            .await;
        let error = run.output.unwrap_err();
        assert!(
            one_line(&error).contains("invalid"),
            "{location}: {}",
            one_line(&error)
        );
        let objects: Vec<String> = memory
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert!(objects.is_empty(), "{location}: {objects:?}");
    }
    // On local disk, a path with a newline in a directory name: refused before
    // anything is written (the file system's root would have taken the objects).
    let root = tempfile::tempdir().unwrap();
    let location = format!("{}/new\nline/", root.path().display());
    assert!(CheckpointStore::open(&session, &location).is_err());
    assert!(RunStore::open(&session, &location).is_err());
    assert_eq!(relative_files_under(root.path()), Vec::<String>::new());
}
