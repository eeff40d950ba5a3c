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
