//! Named stores (`store://NAME/…` from `[stores.NAME]` settings): two S3 endpoints with
//! the same bucket name and different credentials in one run, whole-bucket settings for
//! plain URLs, named local stores, and the errors that name what to fix.

use sluice::prelude::*;
use sluice::store::{Settings, SettingsError, StoreError};
use sluice_testkit::servers::S3Server;

use crate::common::{etl, taxi_file};

/// Two S3 servers, each with its own keys and a bucket `trips`.
async fn two_endpoints() -> (S3Server, S3Server) {
    let a = S3Server::start_with_keys("key-of-a", "secret-of-a-0001")
        .await
        .unwrap();
    let b = S3Server::start_with_keys("key-of-b", "secret-of-b-0002")
        .await
        .unwrap();
    for server in [&a, &b] {
        server.create_bucket("trips").unwrap();
    }
    (a, b)
}

/// `[stores.NAME]` for `url` on `server`, with the keys given.
fn store_toml(name: &str, url: &str, server: &S3Server, key: &str, secret: &str) -> String {
    format!(
        "[stores.{name}]\nurl = \"{url}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
         allow_http = true\nmax_retries = 1\nretry_timeout = \"5s\"\n\
         access_key_id = \"{key}\"\nsecret_access_key = \"{secret}\"\n",
        server.endpoint()
    )
}

fn session(settings: Settings) -> Session {
    Session::builder().with_settings(settings).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_endpoints_with_one_bucket_name_are_read_and_written_each_with_its_own_credentials() {
    let (a, b) = two_endpoints().await;
    let raw = a.bucket_dir("trips").join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    taxi_file(&raw, "in.parquet", 20_000, 5_000);
    let settings = Settings::from_toml(&format!(
        "{}{}",
        store_toml("src", "s3://trips/raw", &a, "key-of-a", "secret-of-a-0001"),
        store_toml("dst", "s3://trips/out", &b, "key-of-b", "secret-of-b-0002"),
    ))
    .unwrap();
    let run = etl("store://src/in.parquet", "store://dst/tips.parquet")
        .with_session(session(settings))
        .run()
        .await;
    let summary = run.output.as_ref().expect("the run succeeds").clone();
    assert_eq!(summary.rows, 20_000);
    // Written at B only, though both have a bucket `trips`.
    assert!(b.bucket_dir("trips").join("out/tips.parquet").is_file());
    assert!(!a.bucket_dir("trips").join("out").exists());
    // The record names where things are (endpoint and bucket), never the alias or a key.
    assert_eq!(
        summary.url,
        format!("{}/trips/out/tips.parquet", b.endpoint())
    );
    // (The parameters keep what the caller passed.)
    let tasks = serde_json::to_string(&run.record.tasks).unwrap();
    assert!(
        tasks.contains(&format!("{}/trips/raw/in.parquet", a.endpoint())),
        "{tasks}"
    );
    assert!(!tasks.contains("store://"), "{tasks}");
    let record = serde_json::to_string(&run.record).unwrap();
    assert!(!record.contains("secret-of"), "{record}");

    // B's bucket read by a plain URL picks up the store defined for the whole bucket.
    let whole = Settings::from_toml(&store_toml(
        "b-trips",
        "s3://trips",
        &b,
        "key-of-b",
        "secret-of-b-0002",
    ))
    .unwrap();
    let frame = session(whole)
        .read_parquet("s3://trips/out/tips.parquet")
        .await
        .unwrap();
    assert_eq!(frame.count().await.unwrap(), 20_000);

    // The other endpoint's keys are refused there: the write fails, nothing appears.
    let wrong = Settings::from_toml(&format!(
        "{}{}",
        store_toml("src", "s3://trips/raw", &a, "key-of-a", "secret-of-a-0001"),
        store_toml("dst", "s3://trips/out", &b, "key-of-a", "secret-of-a-0001"),
    ))
    .unwrap();
    let run = etl("store://src/in.parquet", "store://dst/refused.parquet")
        .with_session(session(wrong))
        .run()
        .await;
    let err = run.output.expect_err("B refuses A's keys");
    assert!(!err.to_string().contains("secret-of"), "{err}");
    assert!(!b.bucket_dir("trips").join("out/refused.parquet").exists());
}

#[tokio::test]
async fn named_local_stores_are_local_paths_and_unknown_names_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 3_000, 1_000);
    let lake = dir.path().join("lake");
    let settings = Settings::from_toml(&format!(
        "result_store = \"store://lake/sluice/\"\n[stores.lake]\nurl = \"{}\"\n",
        lake.display()
    ))
    .unwrap();
    let session = session(settings);
    // A named store on disk is written and published as a local path is.
    let url = session
        .stores()
        .resolve("store://lake/out/tips.parquet")
        .unwrap();
    assert_eq!(url.scheme(), "file");
    let run = etl(source.to_str().unwrap(), "store://lake/out/tips.parquet")
        .with_session(session.clone())
        .run()
        .await;
    assert_eq!(run.output.unwrap().rows, 3_000);
    assert!(lake.join("out/tips.parquet").is_file());
    // The run was recorded, and checkpoints would go, where the settings say.
    assert_eq!(
        session.settings().unwrap().result_store(),
        Some("store://lake/sluice/")
    );

    let err = session
        .read_parquet("store://nope/in.parquet")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("`nope`") && text.contains("defined: lake"),
        "{text}"
    );
    assert!(
        matches!(
            &err,
            Error::Store(StoreError::Settings(SettingsError::UnknownStore { name, .. })) if name == "nope"
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_named_store_whose_variable_is_unset_fails_the_run_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 1_000, 1_000);
    let settings = Settings::from_toml(
        "[stores.lake]\nurl = \"s3://trips\"\nendpoint = \"http://127.0.0.1:9\"\n\
         access_key_id = { env = \"SLUICE_TEST_UNSET_KEY_ID\" }\n\
         secret_access_key = { env = \"SLUICE_TEST_UNSET_SECRET\" }\n",
    )
    .unwrap();
    let run = etl(source.to_str().unwrap(), "store://lake/out.parquet")
        .with_session(session(settings))
        .run()
        .await;
    let text = run.output.unwrap_err().to_string();
    assert!(
        text.contains("SLUICE_TEST_UNSET_KEY_ID") || text.contains("SLUICE_TEST_UNSET_SECRET"),
        "{text}"
    );
    assert!(text.contains("store `lake`"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_example_reads_and_writes_named_stores_of_its_projects_file_with_credentials_by_reference_and_profile()
 {
    let (a, b) = two_endpoints().await;
    let raw = a.bucket_dir("trips").join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    taxi_file(&raw, "in.parquet", 10_000, 5_000);
    let project = tempfile::tempdir().unwrap();
    let reference = |name: &str, url: &str, server: &S3Server, prefix: &str| {
        format!(
            "[stores.{name}]\nurl = \"{url}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             allow_http = true\naccess_key_id = {{ env = \"{prefix}_KEY_ID\" }}\n\
             secret_access_key = {{ env = \"{prefix}_SECRET\" }}\n",
            server.endpoint()
        )
    };
    // B's keys from an AWS shared-credentials profile instead.
    let credentials = project.path().join("aws-credentials");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\
         [dst-profile]\naws_access_key_id = key-of-b\naws_secret_access_key = secret-of-b-0002\n",
    )
    .unwrap();
    let toml = |src: &S3Server, src_env: &str| {
        format!(
            "run_store = \"store://dst/runs/\"\n{}[stores.dst]\nurl = \"s3://trips/out\"\n\
             endpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\nprofile = \"dst-profile\"\n",
            reference("src", "s3://trips/raw", src, src_env),
            b.endpoint(),
        )
    };
    let cache = project.path().join("cache");
    let run = |settings: String, dest: &str, summary: &str| {
        std::fs::write(project.path().join("sluice.toml"), settings).unwrap();
        std::process::Command::new(crate::example::example_binary())
            .current_dir(project.path())
            .args(["--source", "store://src/in.parquet", "--dest", dest])
            .args(["--cache", cache.to_str().unwrap(), "--summary", summary])
            .env("RUST_LOG", "warn")
            .env_remove("SLUICE_CONFIG")
            .env_remove("SLUICE_RUN_STORE")
            .env("A_KEY_ID", "key-of-a")
            .env("A_SECRET", "secret-of-a-0001")
            .env("B_KEY_ID", "key-of-b")
            .env("B_SECRET", "secret-of-b-0002")
            .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
            // No AWS_* variable: each store's credentials come from its own references.
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_ENDPOINT_URL")
            .output()
            .unwrap()
    };
    let transform_key = |summary: &str| {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(project.path().join(summary)).unwrap()).unwrap();
        let tasks = record["tasks"].as_array().unwrap();
        let transform = tasks.iter().find(|t| t["name"] == "transform").unwrap();
        transform["cache_key"].as_str().unwrap().to_string()
    };
    let output = run(toml(&a, "A"), "store://dst/tips.parquet", "one.json");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(b.bucket_dir("trips").join("out/tips.parquet").is_file());
    assert!(!a.bucket_dir("trips").join("out").exists());
    // The run record went to the run store the file names, on B.
    let runs = b.bucket_dir("trips").join("out/runs");
    assert!(runs.is_dir(), "no run records under {}", runs.display());
    assert!(!stderr.contains("secret-of"), "{stderr}");

    // The same bytes at the same path in B's bucket of the same name: `src` now names
    // B, and the cache key changes with the endpoint (no hit on A's checkpoint).
    let raw_b = b.bucket_dir("trips").join("raw");
    std::fs::create_dir_all(&raw_b).unwrap();
    std::fs::copy(raw.join("in.parquet"), raw_b.join("in.parquet")).unwrap();
    // Same size, same content (ETag) and same modification time: only the endpoint
    // tells the two objects apart.
    let modified = std::fs::metadata(raw.join("in.parquet"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(raw_b.join("in.parquet"))
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let output = run(toml(&b, "B"), "store://dst/tips2.parquet", "two.json");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_ne!(transform_key("one.json"), transform_key("two.json"));
    // Back to A: the first key again.
    let output = run(toml(&a, "A"), "store://dst/tips3.parquet", "three.json");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(transform_key("one.json"), transform_key("three.json"));
}

#[tokio::test]
async fn a_named_http_store_is_read_under_its_base_and_refused_as_a_destination() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("files/sub");
    std::fs::create_dir_all(&sub).unwrap();
    taxi_file(&sub, "in.parquet", 2_000, 1_000);
    let http = sluice_testkit::servers::HttpFileServer::start(&dir.path().join("files"))
        .await
        .unwrap();
    let settings = Settings::from_toml(&format!(
        "[stores.web]\nurl = \"{}\"\ntimeout = \"30s\"\n",
        http.url("sub")
    ))
    .unwrap();
    let session = session(settings);
    let frame = session
        .read_parquet("store://web/in.parquet")
        .await
        .unwrap();
    assert_eq!(frame.count().await.unwrap(), 2_000);
    let err = frame
        .write_parquet("store://web/out.parquet", ParquetWrite::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
}
