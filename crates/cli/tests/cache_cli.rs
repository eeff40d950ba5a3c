//! `sluice cache ls|show|gc|clear` against a result store that a real flow filled.

use std::path::Path;
use std::process::{Command, Output};

use sluice_core::{Flow, Persist, Task};

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
    assert_eq!(manifest["format_version"], 1);
    assert!(manifest["files"][0]["blake3"].as_str().unwrap().len() == 64);

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
