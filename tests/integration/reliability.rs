//! What Sluice never does, tried hard: leak a credential, serve a torn or partial
//! checkpoint to racing runs, or leave a half-written output or an orphan after a crash.
//!
//! Each test runs the seed example as a child process against real servers on loopback
//! (the in-process `s3s-fs` S3 server and the HTTP file server), as users run it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sluice_testkit::servers::{HttpFileServer, S3Server};

use crate::common::taxi_file;
use crate::example::example_binary;

/// `target/<profile>/sluice`, the CLI, which `cargo test --workspace` builds.
pub fn cli_binary() -> PathBuf {
    let path = example_binary()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join(format!("sluice{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

mod secrets {
    use super::*;

    /// Distinctive secrets, so that any copy of them anywhere is found.
    const SESSION_TOKEN: &str = "SLUICE-SESSION-TOKEN-7d1e0c";
    const WRONG_SECRET: &str = "SLUICE-WRONG-SECRET-5b9f3a";
    const URL_PASSWORD: &str = "SLUICE-URL-PASSWORD-c04e2d";

    /// Everything a run leaves that a person or a program may read.
    #[derive(Default)]
    struct Artifacts(Vec<(String, Vec<u8>)>);

    impl Artifacts {
        fn add(&mut self, what: impl Into<String>, bytes: impl Into<Vec<u8>>) {
            self.0.push((what.into(), bytes.into()));
        }

        fn add_output(&mut self, what: &str, output: &Output) {
            self.add(format!("{what}: stdout"), output.stdout.clone());
            self.add(format!("{what}: stderr"), output.stderr.clone());
        }

        fn add_files(&mut self, dir: &Path) {
            for path in files_under(dir) {
                let bytes = std::fs::read(&path).unwrap();
                self.add(path.display().to_string(), bytes);
            }
        }

        /// Panics naming every artifact that holds one of `secrets`.
        fn assert_free_of(&self, secrets: &[&str]) {
            let mut leaks = Vec::new();

            for (what, bytes) in &self.0 {
                for secret in secrets {
                    if let Some(at) = bytes
                        .windows(secret.len())
                        .position(|w| w == secret.as_bytes())
                    {
                        let around = &bytes[at.saturating_sub(200)..(at + 100).min(bytes.len())];
                        leaks.push(format!(
                            "{secret} in {what}: …{}…",
                            String::from_utf8_lossy(around)
                        ));
                    }
                }
            }
            assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
        }

        fn bytes(&self) -> usize {
            self.0.iter().map(|(_, b)| b.len()).sum()
        }
    }

    /// The example, logging everything (`RUST_LOG=trace`) with progress lines, against
    /// the S3 server with `secret` and a session token.
    fn example(s3: &S3Server, secret: &str, args: &[&str]) -> Output {
        Command::new(example_binary())
            .args(args)
            .args(["--progress", "lines:50ms"])
            .envs(s3.env())
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
            .env("RUST_LOG", "trace")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run the example")
    }

    fn cli(s3: &S3Server, args: &[&str]) -> Output {
        Command::new(cli_binary())
            .args(args)
            .args(["-vv"])
            .envs(s3.env())
            .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
            .env("RUST_LOG", "trace")
            .output()
            .expect("run the CLI")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_secret_reaches_logs_errors_records_manifests_or_progress() {
        let dir = tempfile::tempdir().unwrap();
        let served = dir.path().join("served");
        std::fs::create_dir(&served).unwrap();
        taxi_file(&served, "in.parquet", 20_000, 5_000);
        let http = HttpFileServer::start(&served).await.unwrap();
        let s3 = S3Server::start().await.unwrap();
        s3.create_bucket("sluice").unwrap();
        // `http://user:password@host/...`: the password must not travel further.
        let with_password = |name: &str| {
            http.url(name)
                .replacen("http://", &format!("http://reader:{URL_PASSWORD}@"), 1)
        };
        let source = with_password("in.parquet");
        let missing = with_password("missing.parquet");
        let runs = dir.path().join("runs");
        let runs = runs.to_str().unwrap();
        let summary = dir.path().join("summary.json");
        let summary = summary.to_str().unwrap();
        let cache = "s3://sluice/cache/";
        let common = ["--cache", cache, "--run-store", runs, "--summary", summary];
        let mut artifacts = Artifacts::default();
        let cases: Vec<(&str, &str, Vec<&str>, bool)> = vec![
            // Succeeds, checkpointing `transform` on S3; then a cache hit.
            (
                "first run",
                S3Server::SECRET_KEY,
                vec!["--source", &source, "--dest", "s3://sluice/out/a.parquet"],
                true,
            ),
            (
                "cache hit",
                S3Server::SECRET_KEY,
                vec!["--source", &source, "--dest", "s3://sluice/out/b.parquet"],
                true,
            ),
            // Fails: a missing HTTP object, a missing bucket, a wrong secret.
            (
                "missing source",
                S3Server::SECRET_KEY,
                vec!["--source", &missing, "--dest", "s3://sluice/out/c.parquet"],
                false,
            ),
            (
                "missing bucket",
                S3Server::SECRET_KEY,
                vec![
                    "--source",
                    "s3://nobucket/in.parquet",
                    "--dest",
                    "s3://sluice/out/n.parquet",
                ],
                false,
            ),
            (
                "wrong secret",
                WRONG_SECRET,
                vec!["--source", &source, "--dest", "s3://sluice/out/d.parquet"],
                false,
            ),
            // The run store on S3 too.
            (
                "records on S3",
                S3Server::SECRET_KEY,
                vec![
                    "--source",
                    &source,
                    "--dest",
                    "s3://sluice/out/e.parquet",
                    "--run-store",
                    "s3://sluice/runs/",
                ],
                true,
            ),
        ];
        for (what, secret, args, succeeds) in cases {
            let mut args = args;
            args.extend_from_slice(&common);
            if args.iter().filter(|a| **a == "--run-store").count() == 2 {
                // The case's own run store comes first; drop the common one.
                let at = args.iter().rposition(|a| *a == "--run-store").unwrap();
                args.drain(at..at + 2);
            }
            let output = example(&s3, secret, &args);
            assert_eq!(
                output.status.success(),
                succeeds,
                "{what}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .filter(|l| !l.contains(" TRACE ") && !l.contains(" DEBUG "))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            let stderr = String::from_utf8_lossy(&output.stderr);
            // The runs did log at trace level, and printed progress lines.
            assert!(stderr.contains("TRACE"), "{what}: nothing logged at trace");
            if succeeds {
                assert!(stderr.contains("rows"), "{what}: no progress line");
            }
            artifacts.add_output(what, &output);
            artifacts.add(format!("{what}: summary"), std::fs::read(summary).unwrap());
        }
        for args in [
            vec!["runs", "ls", "--store", runs],
            vec!["runs", "ls", "--store", "s3://sluice/runs/", "--json"],
            vec!["cache", "ls", "--store", cache, "--json"],
            vec!["cache", "gc", "--store", cache, "--grace", "0s"],
        ] {
            let output = cli(&s3, &args);
            assert!(
                output.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            artifacts.add_output(&format!("sluice {}", args.join(" ")), &output);
        }
        // Records, manifests, checkpoints and outputs: on local disk and on the server.
        artifacts.add_files(dir.path());
        artifacts.add_files(&s3.bucket_dir("sluice"));
        // And what a library user can print: errors and `Debug` of the store builder.
        let builder = sluice::store::StoreBuilder::from_url(&url::Url::parse(&source).unwrap())
            .with_credentials("key", URL_PASSWORD, Some(SESSION_TOKEN.to_string()));
        artifacts.add("StoreBuilder Debug", format!("{builder:?}"));
        let error = crate::common::etl(&missing, dir.path().join("x.parquet").to_str().unwrap())
            .await
            .unwrap_err();
        artifacts.add("Error Display", error.to_string());
        artifacts.add("Error Debug", format!("{error:?}"));
        artifacts.add(
            "Error one_line",
            sluice::one_line(&error as &(dyn std::error::Error + 'static)),
        );

        assert!(artifacts.bytes() > 100_000, "too little was searched");
        artifacts.assert_free_of(&[
            S3Server::SECRET_KEY,
            SESSION_TOKEN,
            WRONG_SECRET,
            URL_PASSWORD,
        ]);
    }
}
