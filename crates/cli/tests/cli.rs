//! `sluice cache ls|show|gc|clear` against a result store that a real flow filled, and
//! `sluice runs ls|show` against the runs real flows recorded.

use std::path::Path;
use std::process::{Command, Output};

use sluice_core::{Error, Flow, Persist, Task};

fn sluice(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .expect("run sluice");
    assert!(
        output.status.success(),
        "sluice {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Runs a flow whose one task is persisted into `store`; returns the task's key.
fn fill(store: &Path) -> String {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = store.display().to_string();
    runtime.block_on(async move {
        let run = Flow::new("fill")
            .with_result_store(store)
            .run(serde_json::json!({}), async {
                Task::new("numbers")
                    .persist(Persist::Tee)
                    .run(|cx| async move {
                        cx.sql("SELECT * FROM (VALUES (1), (2), (3)) AS t(n)", [])
                            .await
                    })
                    .await?
                    .collect()
                    .await
            })
            .await;
        run.output.unwrap();
        run.record.tasks[0].cache_key.clone().unwrap()
    })
}

#[test]
fn cache_commands_list_show_collect_and_clear() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("results");
    let key = fill(&store);
    let store_arg = store.display().to_string();

    let listed = json(&sluice(&["cache", "ls", "--store", &store_arg, "--json"]));
    let entries = listed.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(entries[0]["task"], "numbers");
    assert_eq!(entries[0]["key"], key);
    assert_eq!(entries[0]["state"], "valid");
    assert_eq!(entries[0]["rows"], 3);
    let table = sluice(&["cache", "ls", "--store", &store_arg]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("TASK"), "{table}");
    assert!(
        table.contains("numbers") && table.contains(&key[..16]),
        "{table}"
    );

    let manifest = json(&sluice(&[
        "cache",
        "show",
        "--store",
        &store_arg,
        "numbers",
        &key[..6],
        "--json",
    ]));
    assert_eq!(manifest["key"], key);
    assert_eq!(manifest["rows"], 3);
    assert_eq!(manifest["format_version"], 2);
    assert!(manifest["files"][0]["blake3"].as_str().unwrap().len() == 64);
    // One 128-bit checksum per block of the part.
    let blocks = manifest["files"][0]["blocks"].as_array().unwrap();
    let size = manifest["files"][0]["size"].as_u64().unwrap();
    assert_eq!(blocks.len() as u64, size.div_ceil(sluice_core::BLOCK_SIZE));
    assert!(blocks.iter().all(|b| b.as_str().unwrap().len() == 32));

    // An orphan as a killed run leaves it; gc with no grace removes it and only it.
    let orphan = store
        .join("checkpoints/numbers")
        .join(&key)
        .join("data-killed");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("part-0.parquet"), b"half").unwrap();
    let kept = json(&sluice(&["cache", "gc", "--store", &store_arg, "--json"]));
    assert_eq!(kept["orphans"].as_array().unwrap().len(), 0, "{kept}");
    let report = json(&sluice(&[
        "cache", "gc", "--store", &store_arg, "--grace", "0s", "--json",
    ]));
    assert_eq!(report["orphans"].as_array().unwrap().len(), 1, "{report}");
    assert!(!orphan.join("part-0.parquet").exists());
    let listed = json(&sluice(&["cache", "ls", "--store", &store_arg, "--json"]));
    assert_eq!(listed[0]["state"], "valid");

    sluice(&["cache", "clear", "--store", &store_arg, "--task", "numbers"]);
    let listed = json(&sluice(&["cache", "ls", "--store", &store_arg, "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 0, "{listed}");
}

#[test]
fn bad_task_names_and_unknown_keys_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["cache", "show", "--store"])
        .arg(dir.path())
        .args(["../etc", "abc"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid task name"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["cache", "show", "--store"])
        .arg(dir.path())
        .args(["transform", "abc"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no checkpoint of task"), "{stderr}");
}

#[test]
fn runs_commands_list_and_show_recorded_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().display().to_string();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (ok, failed) = runtime.block_on(async {
        let ok = Flow::new("daily")
            .with_run_store(&store)
            .run(serde_json::json!({"day": "2026-11-27"}), async {
                Task::new("count").run(|_cx| async { Ok(3u64) }).await
            })
            .await;
        let failed = Flow::new("weekly")
            .with_run_store(&store)
            .run(serde_json::json!({}), async {
                Task::new("boom")
                    .run(|_cx| async { Err::<u64, _>(Error::custom("the API said no")) })
                    .await
            })
            .await;
        (ok.record, failed.record)
    });

    let listed = json(&sluice(&["runs", "ls", "--store", &store, "--json"]));
    let runs = listed.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{listed}");
    assert_eq!(runs[0]["run_id"], failed.run_id.as_str(), "newest first");
    for (run, record) in runs.iter().zip([&failed, &ok]) {
        for field in ["run_id", "flow", "state", "start", "end"] {
            assert!(!run[field].is_null(), "{field} missing in {run}");
        }
        assert_eq!(run["flow"], record.flow.as_str());
    }
    let only_failed = json(&sluice(&[
        "runs", "ls", "--store", &store, "--state", "failed", "--json",
    ]));
    assert_eq!(only_failed.as_array().unwrap().len(), 1);
    assert_eq!(only_failed[0]["flow"], "weekly");
    let by_flow = json(&sluice(&[
        "runs", "ls", "--store", &store, "--flow", "daily", "--since", "1h", "--json",
    ]));
    assert_eq!(by_flow.as_array().unwrap().len(), 1);
    let none_yet = json(&sluice(&[
        "runs",
        "ls",
        "--store",
        &store,
        "--since",
        "2999-01-01T00:00:00Z",
        "--json",
    ]));
    assert!(none_yet.as_array().unwrap().is_empty());

    let table = sluice(&["runs", "ls", "--store", &store]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("RUN"), "{table}");
    assert!(
        table.contains("weekly") && table.contains("Failed"),
        "{table}"
    );

    let shown = json(&sluice(&[
        "runs",
        "show",
        "--store",
        &store,
        &ok.run_id[..8],
        "--json",
    ]));
    assert_eq!(shown["run_id"], ok.run_id.as_str());
    assert_eq!(shown["parameters"]["day"], "2026-11-27");
    assert_eq!(shown["tasks"][0]["name"], "count");
    let text = sluice(&["runs", "show", "--store", &store, &failed.run_id]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("the API said no"), "{text}");

    let missing = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["runs", "show", "--store", &store, "nope"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("no flow run \"nope\""), "{stderr}");
}

#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().display().to_string();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        Flow::new("daily")
            .with_run_store(&store)
            .run(serde_json::json!({}), async { Ok(()) })
            .await
    });
    // Standard output closed before the command writes: every write fails (EPIPE).
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["runs", "ls", "--store", &store])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `sluice ARGS` in `dir`, with `env` added and the caller's own settings variables
/// cleared; the command's output whatever its status.
fn sluice_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("SLUICE_CONFIG")
        .env_remove("SLUICE_RESULT_STORE")
        .env_remove("SLUICE_RUN_STORE")
        .env("SLUICE_USER_CONFIG", "");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run sluice")
}

#[test]
fn stores_and_config_view_say_where_each_setting_came_from_and_redact_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    let nested = project.join("flows/daily");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(
        project.join("sluice.toml"),
        "result_store = \"store://lake/sluice/\"\n\
         [stores.lake]\nurl = \"s3://trips/raw\"\nendpoint = \"http://127.0.0.1:9000\"\n\
         access_key_id = { env = \"LAKE_KEY_ID\" }\nsecret_access_key = \"written-out-secret\"\n",
    )
    .unwrap();
    let user = dir.path().join("user.toml");
    std::fs::write(
        &user,
        "run_store = \"/tmp/runs/\"\n[stores.lake]\nurl = \"s3://user-bucket\"\nregion = \"eu-west-1\"\n\
         [stores.archive]\nurl = \"s3://archive\"\nprofile = \"archive\"\n",
    )
    .unwrap();
    let user = user.to_str().unwrap();
    // From a subdirectory: the project's file is found in a parent.
    let env = [
        ("SLUICE_USER_CONFIG", user),
        ("SLUICE_STORES__LAKE__REGION", "eu-central-1"),
    ];
    let output = sluice_in(&nested, &["stores", "show", "lake"], &env);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shown = String::from_utf8_lossy(&output.stdout);
    let project_file = project.join("sluice.toml");
    let line = |key: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("no {key} in {shown}"))
            .to_string()
    };
    // The project's file over the user's; the variable over both.
    assert!(line("url").contains("s3://trips/raw"), "{shown}");
    assert!(
        line("url").contains(&project_file.display().to_string()),
        "{shown}"
    );
    assert!(line("region").contains("eu-central-1"), "{shown}");
    assert!(
        line("region").contains("$SLUICE_STORES__LAKE__REGION"),
        "{shown}"
    );
    assert!(
        line("access_key_id").contains("env = \"LAKE_KEY_ID\""),
        "{shown}"
    );
    assert!(line("secret_access_key").contains("<redacted>"), "{shown}");
    let everything = format!("{shown}{}", String::from_utf8_lossy(&output.stderr));
    assert!(!everything.contains("written-out-secret"), "{everything}");
    // A secret written out is warned about (without its value).
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("secret"),
        "{everything}"
    );

    let output = sluice_in(&nested, &["stores", "ls"], &env);
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(
        listed.contains("archive") && listed.contains("profile archive"),
        "{listed}"
    );
    assert!(
        listed.contains("lake") && listed.contains("http://127.0.0.1:9000"),
        "{listed}"
    );

    let output = sluice_in(&nested, &["config", "view"], &env);
    let view = String::from_utf8_lossy(&output.stdout);
    assert!(view.contains(&format!("# read {user}")), "{view}");
    assert!(
        view.contains("result_store = \"store://lake/sluice/\""),
        "{view}"
    );
    assert!(view.contains("run_store = \"/tmp/runs/\""), "{view}");
    assert!(!view.contains("written-out-secret"), "{view}");

    // SLUICE_CONFIG names the project file instead.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "[stores.only]\nurl = \"s3://only\"\n").unwrap();
    let output = sluice_in(
        &nested,
        &["stores", "ls"],
        &[("SLUICE_CONFIG", other.to_str().unwrap())],
    );
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(
        listed.contains("only") && !listed.contains("lake"),
        "{listed}"
    );
}

#[test]
fn malformed_settings_unknown_stores_and_unset_variables_are_errors_naming_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        "[stores.lake]\nurl = \"s3://trips\"\nregion = eu-west-1\n",
    )
    .unwrap();
    let output = sluice_in(dir.path(), &["stores", "ls"], &[]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("sluice.toml line 3, column 10"), "{err}");
    // Every command that opens a store refuses too, before anything runs.
    let output = sluice_in(dir.path(), &["cache", "ls"], &[]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("line 3, column 10"));

    std::fs::write(
        dir.path().join("sluice.toml"),
        "[stores.lake]\nurl = \"s3://trips\"\nendpoint = \"http://127.0.0.1:9\"\n\
         access_key_id = { env = \"LAKE_KEY_ID_UNSET\" }\nsecret_access_key = { env = \"LAKE_SECRET_UNSET\" }\n",
    )
    .unwrap();
    let output = sluice_in(
        dir.path(),
        &["cache", "ls", "--store", "store://lake/sluice/"],
        &[],
    );
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("LAKE_KEY_ID_UNSET") || err.contains("LAKE_SECRET_UNSET"),
        "{err}"
    );
    assert!(err.contains("store `lake`"), "{err}");

    let output = sluice_in(dir.path(), &["stores", "show", "lakes"], &[]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("`lakes`") && err.contains("defined: lake"),
        "{err}"
    );
}

mod ui {
    //! `sluice ui` in a real browser: a run store filled by real flows (completed,
    //! failed, cancelled, cached and skipped tasks, 1,000 mapped calls, a run still
    //! going) and one record written by hand, served by `sluice ui` as a process and
    //! read by headless Chromium, whose DOM is checked and whose screenshots are saved.

    use std::io::{BufRead, BufReader, Read, Write};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use sluice_core::{
        CancellationToken, Flow, FlowRunRecord, FlowState, Frame, Persist, Task, map,
    };

    const SECRET: &str = "SLUICE-UI-SECRET-4f2a";
    const HOSTILE_PATH: &str = "<img src=x onerror=alert(1)>";
    const HOSTILE_TASK: &str = "<script>alert(2)</script>";

    /// Chromium on `PATH` (the Debian package `chromium`; `.ci/run` installs it).
    fn chromium() -> PathBuf {
        let path = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&path) {
            for name in ["chromium", "chromium-browser", "google-chrome"] {
                let candidate = dir.join(name);
                if candidate.is_file() {
                    return candidate;
                }
            }
        }
        panic!(
            "the browser test needs Chromium on PATH: `apt-get install chromium` \
             (`.ci/run` installs it when missing)"
        );
    }

    fn chromium_command(extra: &[&str], url: &str) -> Command {
        let profile = tempfile::tempdir().unwrap().keep();
        let mut command = Command::new(chromium());
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--no-first-run",
                "--virtual-time-budget=3000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null());
        command
    }

    /// The DOM Chromium built for `url`, after its scripts ran.
    fn dom(url: &str) -> String {
        let output = chromium_command(&["--dump-dom"], url).output().unwrap();
        assert!(
            output.status.success(),
            "chromium failed on {url}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn screenshot(url: &str, name: &str) -> PathBuf {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ui-{name}.png"));
        let _ = std::fs::remove_file(&path);
        let output = chromium_command(
            &[
                &format!("--screenshot={}", path.display()),
                "--window-size=1400,1000",
            ],
            url,
        )
        .output()
        .unwrap();
        assert!(
            path.metadata().is_ok_and(|m| m.len() > 10_000),
            "no screenshot of {url}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        path
    }

    /// `sluice ui` as a process, stopped when dropped.
    struct Ui {
        child: Child,
        url: String,
    }

    impl Drop for Ui {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn start_ui(store: &Path) -> Ui {
        let store = store.display().to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "ui",
                "--runs",
                &store,
                "--cache",
                &store,
                "--bind",
                "127.0.0.1:0",
            ])
            .env("SLUICE_USER_CONFIG", "")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("sluice ui: ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .trim_end_matches('/')
            .to_string();
        Ui { child, url }
    }

    /// An HTTP/1.1 GET with the given `Host`, as a rebinding attacker's page would send.
    fn get_with_host(url: &str, host: &str) -> String {
        let addr = url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "GET /runs HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    /// The `href` of the first link in `dom` that starts with `prefix`.
    fn link(dom: &str, prefix: &str) -> String {
        let at = dom
            .find(&format!("href=\"{prefix}"))
            .unwrap_or_else(|| panic!("no link to {prefix} in the page"));
        let start = at + "href=\"".len();
        let end = start + dom[start..].find('"').unwrap();
        dom[start..end].replace("&amp;", "&")
    }

    async fn etl(store: &str) -> FlowRunRecord {
        let run = Flow::new("etl")
            .with_result_store(store)
            .with_run_store(store)
            .run(serde_json::json!({"source": format!("https://reader:{SECRET}@data.example/trips.parquet")}), async {
                let raw = Task::new("extract")
                    .run(|cx| async move {
                        cx.sql("SELECT * FROM (VALUES (1), (2), (3)) AS t(n)", []).await
                    })
                    .await?;
                Task::new("transform")
                    .persist(Persist::Tee)
                    .run(move |_cx| {
                        let raw = raw.clone();
                        async move { raw.select_columns(&["n"]) }
                    })
                    .await?
                    .count()
                    .await
            })
            .await;
        assert_eq!(run.output.unwrap(), 3);
        run.record
    }

    #[test]
    fn the_web_view_shows_runs_tasks_and_checkpoints_in_a_browser_and_never_markup_or_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let store_path = dir.path().join("sluice");
        let store = store_path.display().to_string();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        // Task runs keep their log lines (as the example's subscriber does).
        {
            use tracing_subscriber::layer::SubscriberExt as _;
            let subscriber =
                tracing_subscriber::registry().with(sluice_core::RunLogLayer::default());
            let _ = tracing::subscriber::set_global_default(subscriber);
        }

        // A record written by hand into the shared store, with markup as a task name.
        let handmade_id = "00000000-0000-4000-8000-00000000beef";
        let handmade = serde_json::json!({
            "flow": "handmade", "run_id": handmade_id, "state": "Completed", "mode": "lazy",
            "version": null, "parameters": {}, "start": "2026-12-01T10:00:00Z",
            "end": "2026-12-01T10:00:01Z", "duration_ms": 1000.0, "error": null,
            "tasks": [{"name": HOSTILE_TASK, "id": 1, "state": "Completed", "version": null,
                       "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T10:00:01Z",
                       "duration_ms": 1000.0, "busy_ms": 10.0, "rows": 1, "bytes": 8,
                       "sources": [], "cache_key": null, "cache": null, "executions": [],
                       "reason": null, "error": null}]
        });
        let handmade_dir = store_path.join("runs").join("handmade");
        std::fs::create_dir_all(&handmade_dir).unwrap();
        std::fs::write(
            handmade_dir.join(format!("{handmade_id}.json")),
            serde_json::to_vec(&handmade).unwrap(),
        )
        .unwrap();

        let fill_store = store.clone();
        // Debug builds of a 1,000-call flow need more stack than a test thread has.
        let handle = runtime.handle().clone();
        let filling = std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || {
                handle.block_on(async move {
                    let store = fill_store;
                    let first = etl(&store).await;
                    // Again: `transform` from its checkpoint, `extract` skipped.
                    let second = etl(&store).await;
                    // Markup in a parameter, a log line and an error (DataFusion quotes the
                    // table name it cannot find).
                    let broken = Flow::new("broken")
                        .with_run_store(&store)
                        .run(serde_json::json!({"source": HOSTILE_PATH}), async move {
                            Task::new("extract")
                                .run(move |cx| async move {
                                    tracing::warn!("reading {HOSTILE_PATH}");
                                    cx.sql(&format!("SELECT * FROM \"{HOSTILE_PATH}\""), [])
                                        .await
                                })
                                .await?
                                .count()
                                .await
                        })
                        .await
                        .record;
                    let token = CancellationToken::new();
                    let cancel = token.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        cancel.cancel();
                    });
                    let stopped = Flow::new("stopped")
                        .with_run_store(&store)
                        .with_cancellation(token)
                        .run(serde_json::json!({}), async {
                            Task::new("wait")
                                .run(|cx| async move {
                                    tokio::time::sleep(Duration::from_secs(30)).await;
                                    cx.sql("SELECT 1 AS n", []).await
                                })
                                .await?
                                .count()
                                .await
                        })
                        .await
                        .record;
                    let mapped = Flow::new("mapped")
                        .with_run_store(&store)
                        .run(serde_json::json!({}), async {
                            let squares = map(0..1000, |i| {
                                Task::new("square").run(move |cx| async move {
                                    cx.sql(&format!("SELECT {i} AS n"), []).await
                                })
                            })
                            .await?;
                            Frame::concat(squares)?.count().await
                        })
                        .await;
                    assert_eq!(mapped.output.as_ref().ok(), Some(&1000));
                    (first, second, broken, stopped, mapped.record)
                })
            });
        let (first, second, broken, stopped, mapped) = filling.unwrap().join().unwrap();
        assert_eq!(broken.state, FlowState::Failed);
        assert_eq!(stopped.state, FlowState::Cancelled);

        // A run still going: its first task ends, then it waits.
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let ongoing_store = store.clone();
        let ongoing = runtime.spawn(async move {
            Flow::new("ongoing")
                .with_run_store(&ongoing_store)
                .run(serde_json::json!({}), async move {
                    // Collected: its output streams, and the task completes now.
                    Task::new("first")
                        .run(|cx| async move { cx.sql("SELECT 1 AS n", []).await })
                        .await?
                        .collect()
                        .await?;
                    let _ = wait.await;
                    Ok(())
                })
                .await
        });
        // Longer than the live record's interval: the store has "first" completed.
        std::thread::sleep(Duration::from_millis(3_000));

        let ui = start_ui(&store_path);
        let list = dom(&format!("{}/runs", ui.url));
        for flow in ["etl", "broken", "stopped", "mapped", "ongoing", "handmade"] {
            assert!(
                list.contains(&format!("<td>{flow}</td>")),
                "{flow} missing:\n{list}"
            );
        }
        for state in ["Completed", "Failed", "Cancelled", "Running"] {
            assert!(
                list.contains(&format!(">{state}</span>")),
                "{state} missing"
            );
        }
        assert!(!list.contains(SECRET));

        // The second etl run: a cache hit and a skipped task; its link to the checkpoint.
        let run = dom(&format!("{}/runs/{}", ui.url, second.run_id));
        assert!(
            run.contains(">Cached</span>") && run.contains(">Skipped</span>"),
            "{run}"
        );
        assert!(!run.contains(SECRET), "the page shows a secret");
        let checkpoint = link(&run, "/checkpoints/transform/");
        assert!(checkpoint.ends_with(first.tasks[1].cache_key.as_deref().unwrap()));
        let page = dom(&format!("{}{checkpoint}", ui.url));
        assert!(
            page.contains("What the key covers") && page.contains("class=\"plan\""),
            "{page}"
        );
        assert!(page.contains(&format!("/runs/{}", first.run_id)));

        // Markup in an error and in a hand-written task name stays text.
        let failed = dom(&format!("{}/runs/{}", ui.url, broken.run_id));
        assert!(
            failed.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{failed}"
        );
        assert!(
            !failed.contains("<img"),
            "markup in an error became an element"
        );
        let hand = dom(&format!("{}/runs/{handmade_id}", ui.url));
        assert!(
            hand.contains("&lt;script&gt;alert(2)&lt;/script&gt;"),
            "{hand}"
        );
        assert!(
            !hand.contains("<script>alert(2)"),
            "a task name became a script"
        );

        // 1,000 mapped calls: one group, counted; the timeline on request only.
        let many = dom(&format!("{}/runs/{}", ui.url, mapped.run_id));
        assert!(many.contains("× 1000"), "no group of 1000 calls");
        assert!(
            many.contains("</span> 1000</span>"),
            "no count of 1000 completed calls"
        );
        assert!(many.contains("drawn on request"));
        assert_eq!(many.matches("class=\"member\"").count(), 1000);

        // The run still going shows its first task done, and follows the run.
        let ongoing_id = {
            let at = list.find("<td>ongoing</td>").unwrap();
            let row = &list[list[..at].rfind("<tr>").unwrap()..at];
            link(row, "/runs/").trim_start_matches("/runs/").to_string()
        };
        let live = dom(&format!("{}/runs/{ongoing_id}", ui.url));
        assert!(live.contains("data-live=\"true\""), "{live}");
        assert!(live.contains("<td class=\"name\">first</td>"), "{live}");
        assert!(
            live.contains(">Completed</span>"),
            "the record was not updated while running"
        );

        // Logs, paged, and the trace export.
        let trace = super::sluice(&["runs", "trace", &first.run_id[..8], "--store", &store]);
        let trace: serde_json::Value = serde_json::from_slice(&trace.stdout).unwrap();
        let names: Vec<&str> = trace["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert!(
            names.contains(&"transform") && names.contains(&"flow etl"),
            "{names:?}"
        );

        // DNS rebinding: another Host is refused.
        let refused = get_with_host(&ui.url, "attacker.example:80");
        assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
        let allowed = get_with_host(&ui.url, ui.url.trim_start_matches("http://"));
        assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");

        for (url, name) in [
            (format!("{}/runs", ui.url), "runs"),
            (format!("{}/runs/{}", ui.url, second.run_id), "run"),
            (format!("{}/runs/{}", ui.url, mapped.run_id), "mapped"),
            (format!("{}{checkpoint}", ui.url), "checkpoint"),
        ] {
            let path = screenshot(&url, name);
            eprintln!("screenshot: {}", path.display());
        }

        let _ = release.send(());
        let finished = runtime.block_on(ongoing).unwrap();
        assert_eq!(finished.record.state, FlowState::Completed);

        // Not on another address without consent.
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "ui",
                "--runs",
                &store,
                "--cache",
                &store,
                "--bind",
                "0.0.0.0:0",
            ])
            .output()
            .unwrap();
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("--allow-remote"));
    }
}
