//! What Sluice never does, tried hard: leak a credential, serve a torn or partial
//! checkpoint to racing runs, or leave a half-written output or an orphan after a crash.
//!
//! Each test runs the seed example as a child process against real servers on loopback
//! (the in-process `s3s-fs` S3 server and the HTTP file server), as users run it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sluice_testkit::servers::{HttpFileServer, S3Server};

use crate::common::{files_under, taxi_file};
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

mod secrets {
    use super::*;

    /// Distinctive secrets, so that any copy of them anywhere is found.
    const SESSION_TOKEN: &str = "SLUICE-SESSION-TOKEN-7d1e0c";
    const WRONG_SECRET: &str = "SLUICE-WRONG-SECRET-5b9f3a";
    const URL_PASSWORD: &str = "SLUICE-URL-PASSWORD-c04e2d";
    const LITERAL_SECRET: &str = "SLUICE-LITERAL-SECRET-9a4c71";

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
        // Named stores of a project's sluice.toml: credentials by reference (and one
        // written out, which is warned about but never shown).
        let project = tempfile::tempdir().unwrap();
        std::fs::write(
            project.path().join("sluice.toml"),
            format!(
                "[stores.named]\nurl = \"s3://sluice/named\"\nendpoint = \"{}\"\n\
                 region = \"us-east-1\"\nallow_http = true\n\
                 access_key_id = {{ env = \"NAMED_KEY_ID\" }}\n\
                 secret_access_key = {{ env = \"NAMED_SECRET\" }}\n\
                 session_token = {{ env = \"NAMED_TOKEN\" }}\n\
                 [stores.literal]\nurl = \"s3://sluice/literal\"\n\
                 secret_access_key = \"{LITERAL_SECRET}\"\n",
                s3.endpoint()
            ),
        )
        .unwrap();
        let named = |command: &mut Command| {
            command
                .current_dir(project.path())
                .env("NAMED_KEY_ID", S3Server::ACCESS_KEY)
                .env("NAMED_SECRET", S3Server::SECRET_KEY)
                .env("NAMED_TOKEN", SESSION_TOKEN)
                .env("RUST_LOG", "trace")
                .stdin(Stdio::null())
                .output()
                .expect("run")
        };
        let output = named(Command::new(example_binary()).args([
            "--source",
            &source,
            "--dest",
            "store://named/out/f.parquet",
            "--cache",
            "store://named/cache/",
            "--run-store",
            "store://named/runs/",
            "--progress",
            "lines:50ms",
        ]));
        assert!(
            output.status.success(),
            "named stores: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .filter(|l| !l.contains(" TRACE ") && !l.contains(" DEBUG "))
                .collect::<Vec<_>>()
                .join("\n")
        );
        artifacts.add_output("named stores", &output);
        for args in [
            vec!["stores", "ls", "-vv"],
            vec!["stores", "show", "named", "-vv"],
            vec!["stores", "show", "literal", "-vv"],
            vec!["config", "view", "-vv"],
            vec![
                "cache",
                "ls",
                "--store",
                "store://named/cache/",
                "--json",
                "-vv",
            ],
            vec![
                "runs",
                "ls",
                "--store",
                "store://named/runs/",
                "--json",
                "-vv",
            ],
        ] {
            let output = named(Command::new(cli_binary()).args(&args));
            assert!(
                output.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            artifacts.add_output(&format!("sluice {}", args.join(" ")), &output);
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
        eprintln!(
            "secrets: searched {} artifacts, {} bytes",
            artifacts.0.len(),
            artifacts.bytes()
        );
        artifacts.assert_free_of(&[
            S3Server::SECRET_KEY,
            SESSION_TOKEN,
            WRONG_SECRET,
            URL_PASSWORD,
            LITERAL_SECRET,
        ]);
    }
}

mod crash_loop {
    use std::time::Instant;

    use object_store::ObjectStore;
    use object_store::path::Path as ObjectPath;
    use sluice::Manifest;
    use sluice::prelude::*;

    use super::*;
    use crate::cache::content;
    use crate::remote::S3Target;

    /// Kills in the default suite; `SLUICE_CRASH_KILLS` asks for more.
    const DEFAULT_KILLS: u32 = 50;
    const ROWS: u64 = 200_000;

    /// A small deterministic generator (xorshift64*), seeded by `SLUICE_CRASH_SEED`.
    struct Rng(u64);

    impl Rng {
        fn fraction(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    struct Loop {
        target: S3Target,
        store: std::sync::Arc<dyn ObjectStore>,
        session: Session,
        source: String,
        dest: String,
        cache: String,
        runs: String,
        summary: PathBuf,
    }

    impl Loop {
        fn command(&self) -> Command {
            let mut command = Command::new(example_binary());
            command
                .args(["--source", &self.source, "--dest", &self.dest])
                .args(["--cache", &self.cache, "--run-store", &self.runs])
                .args(["--progress", "off", "--summary"])
                .arg(&self.summary)
                .envs(self.target.env())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            command
        }

        /// Every object under the test's prefix.
        async fn objects(&self, under: &str) -> Vec<object_store::ObjectMeta> {
            use futures::TryStreamExt;
            let prefix = ObjectPath::from(format!("{}/{under}", self.target.prefix));
            self.store
                .list(Some(&prefix))
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
        }

        /// The committed checkpoints: each manifest parses, and describes a whole result.
        async fn manifests(&self) -> Vec<(ObjectPath, Manifest)> {
            use object_store::ObjectStoreExt;
            let mut found = Vec::new();
            for meta in self.objects("cache/checkpoints/").await {
                if meta.location.filename() != Some("_manifest.json") {
                    continue;
                }
                let bytes = self.store.get(&meta.location).await.unwrap().bytes().await;
                let manifest = Manifest::parse(&bytes.unwrap())
                    .unwrap_or_else(|e| panic!("torn manifest {}: {e}", meta.location));
                assert_eq!(manifest.rows, ROWS, "a manifest of a partial checkpoint");
                assert_eq!(
                    manifest.files.iter().map(|f| f.rows).sum::<u64>(),
                    ROWS,
                    "{}",
                    meta.location
                );
                found.push((meta.location, manifest));
            }
            found
        }

        /// What a reader of the destination sees: nothing, or the whole reference. Staging
        /// objects of killed runs are hidden (`.name.sluice-staging-*`); returns how many.
        async fn check_destination(&self, reference: &str) -> usize {
            let mut hidden = 0;
            for meta in self.objects("out/").await {
                let name = meta.location.filename().unwrap().to_string();
                if name.starts_with('.') && name.contains(sluice::store::STAGING_MARKER) {
                    hidden += 1;
                    continue;
                }
                assert_eq!(
                    name, "result.parquet",
                    "a visible object at the destination"
                );
                assert_eq!(content(&self.session, &self.dest).await, reference);
            }
            hidden
        }

        /// Runs the `sluice` CLI with the target's credentials; it must succeed.
        fn cli(&self, args: &[&str]) {
            let output = Command::new(cli_binary())
                .args(args)
                .envs(self.target.env())
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "sluice {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }

        fn summary(&self) -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(&self.summary).unwrap()).unwrap()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpointing_flow_killed_at_random_points_never_shows_partial_or_wrong_data() {
        let kills_wanted: u32 = std::env::var("SLUICE_CRASH_KILLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_KILLS);
        let seed: u64 = std::env::var("SLUICE_CRASH_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x5eed_c0ff_ee00_0001);
        let target = S3Target::new("crash-loop").await;
        let dir = tempfile::tempdir().unwrap();
        let local = taxi_file(dir.path(), "in.parquet", ROWS, 20_000);
        let store = target.store();
        {
            use object_store::ObjectStoreExt;
            let bytes = std::fs::read(&local).unwrap();
            let path = ObjectPath::from(format!("{}/in/in.parquet", target.prefix));
            store.put(&path, bytes.into()).await.unwrap();
        }
        let l = Loop {
            source: target.url("in/in.parquet"),
            dest: target.url("out/result.parquet"),
            cache: target.url("cache/"),
            runs: target.url("runs/"),
            summary: dir.path().join("summary.json"),
            session: target.session(),
            store,
            target,
        };

        // The reference: a whole run with a cache of its own.
        let reference_dest = l.target.url("reference/result.parquet");
        let started = Instant::now();
        let output = Command::new(example_binary())
            .args(["--source", &l.source, "--dest", &reference_dest])
            .args(["--progress", "off", "--run-store", &l.runs])
            .envs(l.target.env())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let whole = started.elapsed();
        let reference = content(&l.session, &reference_dest).await;

        let mut rng = Rng(seed);
        let (mut kills, mut completed, mut hits, mut iteration) = (0u32, 0u32, 0u32, 0u32);
        let (mut most_hidden, mut kills_without_checkpoint) = (0, 0);
        // How long the last run that ended took: a cache hit can be much quicker than a
        // run that writes the checkpoint (on some servers), and kills must land in both.
        let mut last_run = whole;
        while kills < kills_wanted {
            iteration += 1;
            let _ = std::fs::remove_file(&l.summary);
            let spawned = Instant::now();
            let mut child = l.command().spawn().unwrap();
            // Every tenth run goes to its end; the others die somewhere in [0, 1.2 × a run).
            let deadline = (iteration % 10 != 0).then(|| last_run.mul_f64(1.2 * rng.fraction()));
            let finished = match deadline {
                Some(after) => {
                    tokio::time::sleep(after).await;
                    child.try_wait().unwrap()
                }
                None => None,
            };
            let status = match (deadline, finished) {
                (Some(_), None) => {
                    child.kill().unwrap(); // SIGKILL: no cleanup of any kind runs
                    child.wait().unwrap();
                    // A publish the killed client had asked for may still be copying in
                    // the test server: s3s-fs copies an object by `fs::copy` into the
                    // destination (truncate, then write) where S3's CopyObject is
                    // atomic, and it goes on after the client is gone. Let it land
                    // before looking, or a reader sees the test server's half-copy.
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    kills += 1;
                    if l.manifests().await.is_empty() {
                        kills_without_checkpoint += 1;
                    }
                    None
                }
                (_, Some(status)) => Some(status),
                (None, None) => Some(child.wait().unwrap()),
            };
            if let Some(status) = status {
                let mut stderr = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                assert!(status.success(), "run {iteration} failed: {stderr}");
                completed += 1;
                last_run = spawned.elapsed();
                let record = l.summary();
                let transform = record["tasks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|t| t["name"] == "transform")
                    .unwrap();
                if transform["state"] == "Cached" {
                    hits += 1;
                }
                assert_eq!(
                    content(&l.session, &l.dest).await,
                    reference,
                    "run {iteration}"
                );
                // Every other time, start over without a checkpoint, so that kills keep
                // landing in checkpoint writes as well as in cache hits.
                if completed % 2 == 1 {
                    l.cli(&["cache", "clear", "--store", &l.cache]);
                }
            }
            // After every run, killed or not: whole manifests only, and the destination
            // holds the whole output or nothing.
            l.manifests().await;
            most_hidden = most_hidden.max(l.check_destination(&reference).await);
        }

        // A last run ends well, reads a checkpoint if one was committed, and is right.
        let output = l.command().output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(content(&l.session, &l.dest).await, reference);
        let manifests = l.manifests().await;
        assert_eq!(manifests.len(), 1, "one key, one checkpoint");

        // `sluice cache gc` then leaves the parts the manifest names, and what killed
        // writers left only where their lease has not lapsed yet (a live writer's looks
        // the same); once the leases have lapsed, exactly the parts the manifest names.
        l.cli(&["cache", "gc", "--store", &l.cache, "--grace", "0s"]);
        let leased: Vec<String> = l
            .objects("cache/")
            .await
            .into_iter()
            .map(|m| m.location.to_string())
            .filter(|p| p.ends_with("/_lease"))
            .map(|p| p.trim_end_matches("_lease").to_string())
            .collect();
        let unnamed_outside_leases = |kept: &[String], named: &[String]| -> Vec<String> {
            kept.iter()
                .filter(|p| !named.contains(p) && !leased.iter().any(|dir| p.starts_with(dir)))
                .cloned()
                .collect()
        };
        let (location, manifest) = &manifests[0];
        let dir = location.as_ref().trim_end_matches("_manifest.json");
        let mut named: Vec<String> = manifest
            .files
            .iter()
            .map(|f| format!("{dir}{}", f.path))
            .collect();
        // What is kept beside the manifest, the last-hit marker and cached schemas.
        let kept_parts = || async {
            let mut kept: Vec<String> = l
                .objects("cache/")
                .await
                .into_iter()
                .map(|m| m.location.to_string())
                .filter(|p| {
                    !p.ends_with("/_manifest.json")
                        && !p.ends_with("/_last_hit")
                        && !p.contains("/schemas/")
                })
                .collect();
            kept.sort();
            kept
        };
        let kept = kept_parts().await;
        named.sort();
        assert_eq!(
            unnamed_outside_leases(&kept, &named),
            Vec::<String>::new(),
            "orphans after gc"
        );
        let lapsed = chrono::Utc::now() + chrono::Duration::from_std(sluice::LEASE_TTL).unwrap();
        sluice::CheckpointStore::open(&l.session, &l.cache)
            .unwrap()
            .gc(lapsed, std::time::Duration::ZERO)
            .await
            .unwrap();
        let kept = kept_parts().await;
        assert_eq!(kept, named, "orphans after the leases lapsed");
        // Staging objects that killed sinks left at the destination are hidden from
        // readers; gc over the destination's prefix removes them.
        l.cli(&[
            "cache",
            "gc",
            "--store",
            &l.target.url("out/"),
            "--grace",
            "0s",
        ]);
        assert_eq!(
            l.check_destination(&reference).await,
            0,
            "staging left after gc"
        );
        let pending = l.target.server.as_ref().map(|s| s.pending_uploads());
        eprintln!(
            "crash loop: {kills} kills ({kills_without_checkpoint} before any checkpoint was \
             committed), {completed} completed runs ({hits} cache hits) in {iteration} \
             iterations (a whole run takes {whole:?}); at most {most_hidden} hidden staging \
             objects at the destination; {pending:?} multipart uploads of killed runs left \
             pending on the server"
        );
        assert!(completed >= kills / 10, "too few runs completed");
    }
}

mod races {
    use std::sync::{Arc, Barrier};

    use object_store::ObjectStoreExt;
    use object_store::path::Path as ObjectPath;
    use sluice::CheckpointStore;

    use super::*;
    use crate::cache::{cached_etl, content};
    use crate::remote::S3Target;

    const ROWS: u64 = 40_000;
    /// Flows in each camp: threads in this process, and child processes.
    const THREADS: usize = 10;
    const PROCESSES: usize = 10;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn twenty_flows_in_threads_and_processes_race_on_two_keys_and_one_checkpoint_stands_per_key()
     {
        let target = Arc::new(S3Target::new("races").await);
        let dir = tempfile::tempdir().unwrap();
        // Two sources, two keys; each flow takes one, alternately.
        let mut sources = Vec::new();
        for (i, seed) in [(0, 1), (1, 2)] {
            let local = dir.path().join(format!("in-{i}.parquet"));
            sluice_testkit::taxi::write_taxi_parquet(
                &local,
                &sluice_testkit::taxi::TaxiGenOptions::new(ROWS + i)
                    .with_seed(seed)
                    .with_row_group_rows(10_000),
            )
            .unwrap();
            let key = format!("{}/in/in-{i}.parquet", target.prefix);
            target
                .store()
                .put(
                    &ObjectPath::from(key),
                    std::fs::read(&local).unwrap().into(),
                )
                .await
                .unwrap();
            sources.push(target.url(&format!("in/in-{i}.parquet")));
        }
        let cache = target.url("cache/");
        let runs = target.url("runs/");
        let dest = |camp: &str, i: usize| target.url(&format!("out/{camp}-{i}.parquet"));

        // Everyone starts together: the threads at a barrier, the processes as they spawn.
        let barrier = Arc::new(Barrier::new(THREADS + 1));
        let threads: Vec<_> = (0..THREADS)
            .map(|i| {
                let (barrier, target) = (Arc::clone(&barrier), Arc::clone(&target));
                let (source, dest) = (sources[i % 2].clone(), dest("thread", i));
                let (cache, runs) = (cache.clone(), runs.clone());
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_all()
                        .build()
                        .unwrap();
                    barrier.wait();
                    // The cache suite's seed ETL: its `transform` is the example's, token for
                    // token, so threads and processes compute the same cache keys.
                    runtime.block_on(
                        cached_etl(&source, &dest)
                            .with_session(target.session())
                            .with_result_store(&cache)
                            .with_run_store(&runs)
                            .run(),
                    )
                })
            })
            .collect();
        barrier.wait();
        let children: Vec<_> = (0..PROCESSES)
            .map(|i| {
                Command::new(example_binary())
                    .args(["--source", &sources[i % 2], "--dest", &dest("process", i)])
                    .args(["--cache", &cache, "--run-store", &runs, "--progress", "off"])
                    .envs(target.env())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut states = std::collections::BTreeMap::<String, usize>::new();
        for thread in threads {
            let run = thread.join().unwrap();
            run.output.as_ref().unwrap();
            let transform = run.record.task("transform").unwrap();
            let committed = transform.cache.as_ref().is_some_and(|c| c.committed);
            let state = format!("{:?}, committed: {committed}", transform.state);
            *states.entry(state).or_default() += 1;
        }
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }

        // Exactly one whole checkpoint per key, whoever won.
        let session = target.session();
        let store = CheckpointStore::open(&session, &cache).unwrap();
        let entries = store.list().await.unwrap();
        assert_eq!(entries.len(), 2, "{entries:#?}");
        for entry in &entries {
            assert_eq!(entry.state, "valid", "{entry:?}");
        }
        let mut rows: Vec<u64> = entries.iter().map(|e| e.rows.unwrap()).collect();
        rows.sort();
        assert_eq!(rows, [ROWS, ROWS + 1]);
        // Every output is right: equal to a fresh run's, with no cache at all.
        let mut references = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            let reference = target.url(&format!("reference/{i}.parquet"));
            crate::common::etl(source, &reference)
                .with_session(session.clone())
                .with_checkpoints(false)
                .await
                .unwrap();
            references.push(content(&session, &reference).await);
        }
        for i in 0..THREADS.max(PROCESSES) {
            for camp in ["thread", "process"] {
                assert_eq!(
                    content(&session, &dest(camp, i)).await,
                    references[i % 2],
                    "{camp} {i}"
                );
            }
        }
        // The losers' parts are gone or collectable: after gc only the winners' remain.
        store
            .gc(chrono::Utc::now(), std::time::Duration::ZERO)
            .await
            .unwrap();
        let (mut parts, mut named) = (0, 0);
        let prefix = ObjectPath::from(format!("{}/cache/checkpoints/", target.prefix));
        let objects: Vec<_> = {
            use futures::TryStreamExt;
            let store = target.store();
            store.list(Some(&prefix)).try_collect().await.unwrap()
        };
        for meta in objects {
            if meta.location.as_ref().contains("/data-") {
                parts += 1;
            } else if meta.location.filename() == Some("_manifest.json") {
                let bytes = target.store().get(&meta.location).await.unwrap();
                let manifest = sluice::Manifest::parse(&bytes.bytes().await.unwrap()).unwrap();
                named += manifest.files.len();
            }
        }
        assert_eq!(parts, named, "parts of losing runs left after gc");
        eprintln!("races: transform states in the threads {states:?}");
    }
}
