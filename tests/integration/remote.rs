//! Object stores over the network: S3 (an in-process `s3s-fs` server, or an external
//! endpoint named by `SLUICE_TEST_S3_*`) and HTTP (a file server with ranges), both
//! real servers on loopback.
//!
//! `.ci/run` runs the S3 tests a second time against moto's S3 server:
//! `SLUICE_TEST_S3_ENDPOINT=http://127.0.0.1:PORT SLUICE_TEST_S3_BUCKET=NAME
//! [SLUICE_TEST_S3_ACCESS_KEY=.. SLUICE_TEST_S3_SECRET_KEY=..] cargo test --test integration remote::s3`.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use sluice::datafusion::arrow::array::RecordBatch;
use sluice::prelude::*;
use sluice::store::{RetryPolicy, StoreBuilder};
use sluice_testkit::faults::{FaultKind, FaultProxy, FaultRule, ProxyFault};
use sluice_testkit::servers::{Fault, HttpFileServer, S3Server};

use crate::common::{etl, taxi_file};

/// Retries fast enough for tests that provoke failures.
fn quick_retries() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(3)
        .with_timeout(Duration::from_secs(10))
        .with_backoff(Duration::from_millis(10), Duration::from_millis(100))
}

/// Where the S3 tests run.
pub struct S3Target {
    /// The in-process server, unless an external endpoint is configured.
    pub server: Option<S3Server>,
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// A prefix of this test's own.
    pub prefix: String,
}

impl S3Target {
    pub async fn new(test: &str) -> S3Target {
        let prefix = format!("{test}-{}", std::process::id());
        if let Ok(endpoint) = std::env::var("SLUICE_TEST_S3_ENDPOINT") {
            return S3Target {
                server: None,
                endpoint,
                bucket: std::env::var("SLUICE_TEST_S3_BUCKET").expect("SLUICE_TEST_S3_BUCKET"),
                access_key: std::env::var("SLUICE_TEST_S3_ACCESS_KEY")
                    .unwrap_or_else(|_| "testing".into()),
                secret_key: std::env::var("SLUICE_TEST_S3_SECRET_KEY")
                    .unwrap_or_else(|_| "testing".into()),
                prefix,
            };
        }
        let server = S3Server::start().await.unwrap();
        server.create_bucket("sluice").unwrap();
        S3Target {
            endpoint: server.endpoint(),
            server: Some(server),
            bucket: "sluice".into(),
            access_key: S3Server::ACCESS_KEY.into(),
            secret_key: S3Server::SECRET_KEY.into(),
            prefix,
        }
    }

    /// `s3://bucket/prefix/key`.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{}/{key}", self.bucket, self.prefix)
    }

    pub fn store_builder(&self, bucket: &str) -> StoreBuilder {
        StoreBuilder::from_url(&url::Url::parse(&format!("s3://{bucket}/")).unwrap())
            .with_endpoint(&self.endpoint)
            .with_region("us-east-1")
            .with_credentials(&self.access_key, &self.secret_key, None)
            .with_allow_http(true)
            .with_retry(quick_retries())
    }

    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store_builder(&self.bucket).build().unwrap()
    }

    /// object_store's own S3 client for the bucket, without Sluice's store layers (its
    /// multipart uploads stay open until completed or aborted).
    pub fn raw_client(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(&self.bucket)
            .with_region("us-east-1")
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    /// A session whose `s3://bucket` is this target.
    pub fn session(&self) -> Session {
        Session::builder()
            .with_object_store(
                &url::Url::parse(&format!("s3://{}/", self.bucket)).unwrap(),
                self.store(),
            )
            .build()
            .unwrap()
    }

    /// The environment a child process needs to reach the target by AWS conventions.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    pub async fn exists(&self, key: &str) -> bool {
        let path = object_store::path::Path::from(format!("{}/{key}", self.prefix));
        self.store().head(&path).await.is_ok()
    }

    /// Waits until the in-process server holds no unfinished multipart upload.
    pub async fn assert_no_pending_uploads(&self) {
        let Some(server) = &self.server else { return };
        for _ in 0..100 {
            if server.pending_uploads() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{} multipart uploads were left unfinished",
            server.pending_uploads()
        );
    }
}

/// What `proxy` counted once it has settled: its relays add a response's bytes as they
/// pass, so the last ones may land just after the client has them.
async fn settled_stats(
    proxy: &sluice_testkit::faults::FaultProxy,
) -> sluice_testkit::faults::FaultStats {
    let mut last = proxy.stats();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = proxy.stats();
        if (now.requests, now.body_bytes) == (last.requests, last.body_bytes) {
            return now;
        }
        last = now;
    }
    last
}

/// Sums two of the taxi columns: a query that needs 2 of the 19 columns.
async fn sum_two_columns(frame: &Frame) -> Vec<RecordBatch> {
    let sums = frame
        .aggregate(
            Vec::<Expr>::new(),
            [sum(col("tip_amount")), sum(col("total_amount"))],
        )
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(sums[0].num_rows(), 1);
    sums
}

async fn run_etl(session: &Session, source: &str, dest: &str) -> sluice::Result<WriteSummary> {
    etl(source, dest).with_session(session.clone()).await
}

mod s3 {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_seed_etl_runs_from_local_disk_to_s3_and_back() {
        let target = S3Target::new("roundtrip").await;
        let session = target.session();
        let dir = tempfile::tempdir().unwrap();
        let source = taxi_file(dir.path(), "in.parquet", 60_000, 20_000);
        // local → S3
        let on_s3 = target.url("out/tips.parquet");
        let written = run_etl(&session, source.to_str().unwrap(), &on_s3)
            .await
            .unwrap();
        assert_eq!(written.rows, 60_000);
        assert_eq!(written.files.len(), 1);
        assert!(target.exists("out/tips.parquet").await);
        // S3 → local: read the output back from S3 and copy it to local disk
        let back = dir.path().join("back.parquet");
        let copied = session
            .read_parquet(&on_s3)
            .await
            .unwrap()
            .write_parquet(back.to_str().unwrap(), ParquetWrite::default())
            .await
            .unwrap();
        assert_eq!(copied.rows, 60_000);
        let cols = session
            .read_parquet(back.to_str().unwrap())
            .await
            .unwrap()
            .columns();
        assert_eq!(cols.last().map(String::as_str), Some("tip_fraction"));
        target.assert_no_pending_uploads().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_prefixes_and_globs_read_every_matching_object() {
        let target = S3Target::new("prefix").await;
        let session = target.session();
        let dir = tempfile::tempdir().unwrap();
        let source = taxi_file(dir.path(), "in.parquet", 20_000, 10_000);
        let frame = session
            .read_parquet(source.to_str().unwrap())
            .await
            .unwrap();
        frame
            .write_parquet(&target.url("parts/a.parquet"), ParquetWrite::default())
            .await
            .unwrap();
        frame
            .write_parquet(&target.url("parts/b.parquet"), ParquetWrite::default())
            .await
            .unwrap();
        frame
            .write_csv(&target.url("parts/c.csv"), CsvWrite::default())
            .await
            .unwrap();
        let all = session.read_parquet(&target.url("parts/")).await.unwrap();
        assert_eq!(all.count().await.unwrap(), 40_000);
        let one = session
            .read_parquet(&target.url("parts/a*.parquet"))
            .await
            .unwrap();
        assert_eq!(one.count().await.unwrap(), 20_000);
        let csv = session
            .read_csv(&target.url("parts/*.csv"), CsvReadOptions::new())
            .await
            .unwrap();
        assert_eq!(csv.count().await.unwrap(), 20_000);
        // A directory of parts is published with _SUCCESS last.
        let summary = frame
            .write_parquet(
                &target.url("dir/"),
                ParquetWrite::default().with_layout(WriteLayout::Directory),
            )
            .await
            .unwrap();
        assert_eq!(summary.rows, 20_000);
        assert!(target.exists("dir/_SUCCESS").await);
        assert_eq!(
            session
                .read_parquet(&target.url("dir/"))
                .await
                .unwrap()
                .count()
                .await
                .unwrap(),
            20_000
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_two_column_query_fetches_well_under_half_of_an_s3_object() {
        let target = S3Target::new("ranges").await;
        let Some(server) = &target.server else { return }; // counts need the in-process server
        let session = target.session();
        let dir = tempfile::tempdir().unwrap();
        let source = taxi_file(dir.path(), "in.parquet", 200_000, 50_000);
        let size = std::fs::metadata(&source).unwrap().len();
        let key = target.url("big.parquet");
        session
            .read_parquet(source.to_str().unwrap())
            .await
            .unwrap()
            .write_parquet(&key, ParquetWrite::snappy().with_row_group_rows(50_000))
            .await
            .unwrap();
        server.stats().reset();
        let frame = session.read_parquet(&key).await.unwrap();
        sum_two_columns(&frame).await;
        let sent = server.stats().bytes_sent();
        eprintln!("2 of 19 columns from S3: {sent} bytes of a {size}-byte object");
        assert!(
            sent > 0 && sent < size / 2,
            "fetched {sent} of {size} bytes"
        );
    }

    /// `sluice serve-s3` serves files placed in its directory: a ranged GET of one must
    /// not read the whole object (s3s-fs hashes every byte of an object it has no stored
    /// ETag for, on every request). The ETag it answers with is the stamp derived from
    /// size and modification time, so no hash was computed; a file replaced in place
    /// gets a new one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_range_of_a_large_placed_object_is_served_without_hashing_it() {
        use object_store::ObjectStoreExt;
        let target = S3Target::new("placed").await;
        let Some(server) = &target.server else { return }; // placing needs its directory
        let dir = server.bucket_dir(&target.bucket).join(&target.prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let placed = dir.join("big.bin");
        let stamp = |path: &std::path::Path| {
            let meta = std::fs::metadata(path).unwrap();
            let nanos = meta
                .modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            format!("\"{:x}-{nanos:x}\"", meta.len())
        };
        // 1 GiB, sparse: hashing it would read every byte.
        let file = std::fs::File::create(&placed).unwrap();
        file.set_len(1 << 30).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"the end", (1 << 30) - 7).unwrap();
        drop(file);
        let store = target.store();
        let path = object_store::path::Path::from(format!("{}/big.bin", target.prefix));
        let range = store
            .get_range(&path, (1 << 30) - 1024..1 << 30)
            .await
            .unwrap();
        assert_eq!(range.len(), 1024);
        assert_eq!(&range[1017..], b"the end");
        let head = store.head(&path).await.unwrap();
        assert_eq!(head.e_tag.as_deref(), Some(stamp(&placed).as_str()));

        // Replaced in place: a new stamp, not the stored one.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&placed, b"small now").unwrap();
        let head = store.head(&path).await.unwrap();
        assert_eq!(head.size, 9);
        assert_eq!(head.e_tag.as_deref(), Some(stamp(&placed).as_str()));
        let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(&bytes[..], b"small now");
        // A suffix longer than the object is the whole object, as S3 answers it (a
        // footer read of a small file asks for one).
        let options = object_store::GetOptions {
            range: Some(object_store::GetRange::Suffix(1024)),
            ..Default::default()
        };
        let whole = store.get_opts(&path, options).await.unwrap();
        assert_eq!(whole.range, 0..9);
        assert_eq!(&whole.bytes().await.unwrap()[..], b"small now");

        // An uploaded object keeps the ETag s3s-fs stored for it (its MD5).
        let uploaded = object_store::path::Path::from(format!("{}/up.bin", target.prefix));
        let put = store.put(&uploaded, "uploaded".into()).await.unwrap();
        let head = store.head(&uploaded).await.unwrap();
        assert_eq!(head.e_tag, put.e_tag);
        assert_eq!(head.e_tag.map(|t| t.len()), Some(34), "an MD5 in quotes");
    }

    /// A multipart upload completes as S3 completes it: the ETags the client lists must
    /// be its parts' (a wrong one is refused and the upload stays open), a part uploaded
    /// again counts as its last upload, and the object's ETag is the MD5 of the parts'
    /// MD5s with the part count (the known answer below, as any S3 gives it). The test
    /// server completes without hashing the parts again (`s3s-fs` 0.14 re-reads and
    /// re-hashes every part, and takes any ETag listed).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multipart_upload_completes_with_s3s_etags_and_checks_the_listed_ones() {
        use object_store::multipart::{MultipartStore, PartId};
        use object_store::{ObjectStoreExt, PutPayload};
        let target = S3Target::new("complete").await;
        let s3 = target.raw_client();
        let path = object_store::path::Path::from(format!("{}/joined.bin", target.prefix));
        let first: Vec<u8> = (0..5 << 20).map(|i| (i % 251) as u8).collect();
        let id = s3.create_multipart(&path).await.unwrap();
        s3.put_part(&path, &id, 0, PutPayload::from(vec![7u8; 5 << 20]))
            .await
            .unwrap();
        // Part 1 again, other bytes: the upload's part 1 is these.
        let one = s3
            .put_part(&path, &id, 0, PutPayload::from(first.clone()))
            .await
            .unwrap();
        assert_eq!(one.content_id, "\"4c28640dc8df1933aaea192100d50ae0\"");
        let two = s3
            .put_part(&path, &id, 1, PutPayload::from_static(b"the last part"))
            .await
            .unwrap();

        let wrong = PartId {
            content_id: "\"00000000000000000000000000000000\"".into(),
        };
        let refused = s3
            .complete_multipart(&path, &id, vec![one.clone(), wrong])
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("InvalidPart"), "{refused}");
        assert!(s3.head(&path).await.is_err(), "no object after a refusal");

        let done = s3
            .complete_multipart(&path, &id, vec![one, two])
            .await
            .unwrap();
        assert_eq!(
            done.e_tag.as_deref(),
            Some("\"54420c9bd0a43e64ad20b221d497393b-2\"")
        );
        let bytes = s3.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(bytes.len(), first.len() + 13);
        assert!(bytes[..first.len()] == first[..] && &bytes[first.len()..] == b"the last part");
        assert_eq!(s3.head(&path).await.unwrap().e_tag, done.e_tag);
        if let Some(server) = &target.server {
            assert_eq!(server.pending_uploads(), 0);
            let left = std::fs::read_dir(server.bucket_dir(&target.bucket).parent().unwrap())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(".upload_id-"))
                .count();
            assert_eq!(left, 0, "parts or their records left behind");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_s3_write_aborts_its_upload_and_leaves_no_object() {
        let target = S3Target::new("abort").await;
        let session = Session::builder()
            .with_target_partitions(1)
            .with_object_store(
                &url::Url::parse(&format!("s3://{}/", target.bucket)).unwrap(),
                target.store(),
            )
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        taxi_file(dir.path(), "a.parquet", 300_000, 50_000);
        // b.parquet: a valid footer over garbled data pages, read after a.parquet.
        let b = taxi_file(dir.path(), "b.parquet", 50_000, 50_000);
        let mut bytes = std::fs::read(&b).unwrap();
        let middle = bytes.len() / 2;
        for byte in &mut bytes[middle - 100_000..middle + 100_000] {
            *byte = 0xA5;
        }
        std::fs::write(&b, bytes).unwrap();
        let frame = session
            .read_parquet(&format!("{}/", dir.path().display()))
            .await
            .unwrap();
        let dest = target.url("never.parquet");
        let error = frame
            .write_parquet(
                &dest,
                ParquetWrite::with_compression(sluice::Compression::Uncompressed)
                    .with_row_group_rows(50_000),
            )
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Write { .. }), "{error}");
        assert!(
            error.to_string().contains("b.parquet")
                || error.to_string().contains(dir.path().to_str().unwrap()),
            "{error}"
        );
        assert!(!target.exists("never.parquet").await);
        target.assert_no_pending_uploads().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_errors_are_typed_and_name_the_url_without_secrets() {
        let target = S3Target::new("errors").await;
        let session = target.session();
        // A key that does not exist.
        let missing = session
            .read_parquet(&target.url("nope.parquet"))
            .await
            .unwrap_err();
        assert!(matches!(missing, Error::SourceNotFound { .. }), "{missing}");
        assert!(missing.to_string().contains("nope.parquet"));
        // A bucket that does not exist.
        let no_bucket = format!("s3://no-such-bucket-{}/x.parquet", std::process::id());
        let bucket_url = url::Url::parse(&no_bucket).unwrap();
        let other = Session::builder()
            .with_object_store(
                &bucket_url,
                target
                    .store_builder(bucket_url.host_str().unwrap())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let error = other.read_parquet(&no_bucket).await.unwrap_err();
        assert!(matches!(error, Error::BucketNotFound { .. }), "{error:?}");
        assert!(error.to_string().contains(&no_bucket), "{error}");
        // Wrong credentials.
        if target.server.is_some() {
            let bad = Session::builder()
                .with_object_store(
                    &url::Url::parse(&format!("s3://{}/", target.bucket)).unwrap(),
                    StoreBuilder::from_url(
                        &url::Url::parse(&format!("s3://{}/", target.bucket)).unwrap(),
                    )
                    .with_endpoint(&target.endpoint)
                    .with_region("us-east-1")
                    .with_credentials(&target.access_key, "not-the-secret-XYZ", None)
                    .with_allow_http(true)
                    .with_retry(quick_retries())
                    .build()
                    .unwrap(),
                )
                .build()
                .unwrap();
            let denied = bad
                .read_parquet(&target.url("x.parquet"))
                .await
                .unwrap_err();
            assert!(matches!(denied, Error::AccessDenied { .. }), "{denied:?}");
            assert!(
                !denied.to_string().contains("not-the-secret-XYZ"),
                "{denied}"
            );
            assert!(
                denied.to_string().contains(&target.url("x.parquet")),
                "{denied}"
            );
        }
    }

    /// A session reaching the target's bucket through `proxy`, one partition, and S3's
    /// smallest part (5 MiB) as the writer's buffer: an uncompressed output of a few
    /// hundred thousand taxi rows is an upload of several parts.
    fn small_parts_session(target: &S3Target, proxy: &FaultProxy) -> Session {
        let config = sluice::datafusion::prelude::SessionConfig::new().set_usize(
            "datafusion.execution.objectstore_writer_buffer_size",
            5 << 20,
        );
        Session::builder()
            .with_config(config)
            .with_target_partitions(1)
            .with_object_store(
                &url::Url::parse(&format!("s3://{}/", target.bucket)).unwrap(),
                target
                    .store_builder(&target.bucket)
                    .with_endpoint(proxy.endpoint())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    /// A rule that touches (1 ms) every request to a staging name, to count them.
    fn staging_requests() -> FaultRule {
        FaultRule::new(ProxyFault::Latency(Duration::from_millis(1)))
            .target_contains(sluice::store::STAGING_MARKER)
    }

    /// A target behind a proxy, a session through it ([`small_parts_session`]), a local
    /// taxi file of 300,000 rows and a destination on the target holding an older file.
    struct InPlaceCase {
        target: S3Target,
        proxy: FaultProxy,
        session: Session,
        source: std::path::PathBuf,
        dest: String,
        _dir: tempfile::TempDir,
    }

    impl InPlaceCase {
        async fn new(test: &str) -> InPlaceCase {
            let target = S3Target::new(test).await;
            let proxy = FaultProxy::builder(&target.endpoint).start().await.unwrap();
            let session = small_parts_session(&target, &proxy);
            let dir = tempfile::tempdir().unwrap();
            let source = taxi_file(dir.path(), "in.parquet", 300_000, 100_000);
            let dest = target.url("out/tips.parquet");
            let old = session
                .sql("SELECT 1 AS n", [])
                .await
                .unwrap()
                .write_parquet(&dest, ParquetWrite::default())
                .await
                .unwrap();
            assert_eq!(old.rows, 1);
            InPlaceCase {
                target,
                proxy,
                session,
                source,
                dest,
                _dir: dir,
            }
        }
    }

    /// The bytes of `key` under the target's prefix.
    async fn object(target: &S3Target, key: &str) -> bytes::Bytes {
        let path = object_store::path::Path::from(format!("{}/{key}", target.prefix));
        target
            .store()
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    }

    /// One file on S3 is written in place: the column copy's multipart upload goes to
    /// the destination itself and the publish completes it, with no staging object, no
    /// server-side copy (CopyObject stops at 5 GiB) and no delete; DataFusion's writer
    /// writes through a store that holds its completion (or its one small put) for the
    /// publish. The file replaces the one there; both paths write the same rows; a
    /// directory is still staged.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn single_files_on_s3_are_uploaded_to_their_destination_and_published_by_completing_them()
    {
        let InPlaceCase {
            target,
            proxy,
            session,
            source,
            dest,
            _dir,
        } = InPlaceCase::new("in-place").await;
        let uncompressed = || ParquetWrite::with_compression(sluice::Compression::Uncompressed);
        let frame = || async {
            let raw = session
                .read_parquet(source.to_str().unwrap())
                .await
                .unwrap();
            raw.with_column("tip_fraction", col("tip_amount") / col("total_amount"))
                .unwrap()
        };
        proxy.set_rules([staging_requests()]);
        let written = frame()
            .await
            .write_parquet(&dest, uncompressed())
            .await
            .unwrap();
        let stats = settled_stats(&proxy).await;
        assert!(written.method.is_column_copy(), "{:?}", written.method);
        assert_eq!(written.rows, 300_000);
        assert_eq!(
            stats.injected(FaultKind::Latency),
            0,
            "requests to a staging name: {:?}",
            stats.log
        );
        let copied = object(&target, "out/tips.parquet").await;
        assert!(
            copied.len() > 5 << 20,
            "{} bytes: several parts",
            copied.len()
        );
        assert_eq!(written.bytes, copied.len() as u64);
        // DataFusion's writer writes in place too (its completion held for the publish),
        // the same rows.
        proxy.reset_stats();
        let slow = target.url("out/slow.parquet");
        let rewritten = frame()
            .await
            .write_parquet(&slow, uncompressed().with_column_copy(false))
            .await
            .unwrap();
        assert!(!rewritten.method.is_column_copy());
        assert_eq!(settled_stats(&proxy).await.injected(FaultKind::Latency), 0);
        // A small file is one put at the publish: no upload, copy, delete or HEAD.
        proxy.reset_stats();
        proxy.set_rules([
            FaultRule::new(ProxyFault::Latency(Duration::from_millis(1)))
                .target_contains("small.parquet"),
        ]);
        let small = frame()
            .await
            .aggregate([col("VendorID")], [sum(col("tip_amount")).alias("tips")])
            .unwrap()
            .write_parquet(&target.url("out/small.parquet"), ParquetWrite::default())
            .await
            .unwrap();
        assert!(small.rows > 0);
        let stats = settled_stats(&proxy).await;
        assert_eq!(stats.injected(FaultKind::Latency), 1, "{:?}", stats.log);
        assert_eq!(stats.log[0].method, "PUT");
        // A directory is still staged (the rule sees its staging name).
        proxy.reset_stats();
        proxy.set_rules([staging_requests()]);
        frame()
            .await
            .write_parquet(
                &target.url("out/dir/"),
                uncompressed().with_layout(WriteLayout::Directory),
            )
            .await
            .unwrap();
        assert!(settled_stats(&proxy).await.injected(FaultKind::Latency) > 0);
        let rows = |url: String| {
            let session = session.clone();
            async move {
                let frame = session.read_parquet(&url).await.unwrap();
                let batches = frame.collect().await.unwrap();
                let all = sluice::datafusion::arrow::compute::concat_batches(
                    &batches[0].schema(),
                    &batches,
                )
                .unwrap();
                all.columns().to_vec()
            }
        };
        assert!(
            rows(dest).await == rows(slow).await,
            "the same rows in order"
        );
        target.assert_no_pending_uploads().await;
    }

    /// An in-place upload whose part fails for good: the write fails naming the
    /// destination, the old file stays as it was, and the upload is aborted (no part left
    /// on the server, no staging object).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_in_place_upload_that_fails_keeps_the_old_file_and_leaves_no_upload() {
        let InPlaceCase {
            target,
            proxy,
            session,
            source,
            dest,
            _dir,
        } = InPlaceCase::new("in-place-fails").await;
        let old = object(&target, "out/tips.parquet").await;
        proxy.set_rules([FaultRule::new(ProxyFault::InternalError)
            .method("PUT")
            .target_contains("partNumber=2")]);
        let error = session
            .read_parquet(source.to_str().unwrap())
            .await
            .unwrap()
            .with_column("tip_fraction", col("tip_amount") / col("total_amount"))
            .unwrap()
            .write_parquet(
                &dest,
                ParquetWrite::with_compression(sluice::Compression::Uncompressed),
            )
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Write { .. }), "{error}");
        assert!(error.to_string().contains("out/tips.parquet"), "{error}");
        assert!(
            settled_stats(&proxy)
                .await
                .injected(FaultKind::InternalError)
                > 0
        );
        proxy.clear_rules();
        assert_eq!(object(&target, "out/tips.parquet").await, old);
        target.assert_no_pending_uploads().await;
        let path = object_store::path::Path::from(format!("{}/out", target.prefix));
        let left: Vec<_> = target
            .store()
            .list(Some(&path))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transient_s3_faults_are_retried() {
        let target = S3Target::new("faults").await;
        let Some(server) = &target.server else { return };
        let session = target.session();
        let frame = session
            .sql("SELECT * FROM (VALUES (1), (2), (3)) AS t(n)", [])
            .await
            .unwrap();
        frame
            .write_parquet(&target.url("n.parquet"), ParquetWrite::default())
            .await
            .unwrap();
        server.stats().fail_next(2, Fault::Unavailable);
        let back = session
            .read_parquet(&target.url("n.parquet"))
            .await
            .unwrap();
        assert_eq!(back.count().await.unwrap(), 3);
        server.stats().fail_next(2, Fault::Reset);
        let again = session
            .read_parquet(&target.url("n.parquet"))
            .await
            .unwrap();
        assert_eq!(
            again
                .collect()
                .await
                .unwrap()
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>(),
            3
        );
    }
    /// Uploads a killed writer left open under a folder (as an executor SIGKILLed
    /// mid-part leaves them) are listed and aborted; others are left alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_left_open_under_a_folder_are_found_and_aborted() {
        use object_store::multipart::MultipartStore;
        use object_store::path::Path;
        let target = S3Target::new("open-uploads").await;
        // object_store's own client: its uploads stay open until completed or aborted.
        let raw = target.raw_client();
        let key = |name: &str| Path::from(format!("{}/{name}", target.prefix));
        let before = target.server.as_ref().map(S3Server::pending_uploads);
        for name in [
            "out/parts/a.parquet",
            "out/parts/sub/b.parquet",
            "out/other.parquet",
        ] {
            let id = raw.create_multipart(&key(name)).await.unwrap();
            raw.put_part(&key(name), &id, 0, vec![7u8; 1024].into())
                .await
                .unwrap();
        }
        let opened = |n: usize| before.map(|b| b + n);
        assert_eq!(
            target.server.as_ref().map(S3Server::pending_uploads),
            opened(3)
        );

        let store = target.store();
        let parts = key("out/parts");
        let aborted = sluice::store::abort_pending_uploads(&store, &parts)
            .await
            .unwrap();
        assert_eq!(aborted, 2);
        assert_eq!(
            target.server.as_ref().map(S3Server::pending_uploads),
            opened(1)
        );
        // Nothing left there; a store Sluice did not build cannot list.
        assert_eq!(
            sluice::store::abort_pending_uploads(&store, &parts)
                .await
                .unwrap(),
            0
        );
        let unknown: Arc<dyn ObjectStore> = Arc::new(raw);
        assert_eq!(
            sluice::store::abort_pending_uploads(&unknown, &key("out"))
                .await
                .unwrap(),
            0
        );
        sluice::store::abort_pending_uploads(&store, &key("out"))
            .await
            .unwrap();
        target.assert_no_pending_uploads().await;
    }

    /// An object composed from ranges of others by the server: long ranges copied
    /// (`UploadPartCopy`), short ones read and sent with their neighbours, invisible
    /// until the publish; an unpublished composition leaves nothing behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_server_composes_one_object_from_ranges_of_others() {
        use sluice::store::{ComposeOptions, OutputKind, Piece, StagedOutput, StoreRegistry};
        let target = S3Target::new("compose").await;
        let store = target.store();
        let bucket = url::Url::parse(&format!("s3://{}/", target.bucket)).unwrap();
        let registry = StoreRegistry::new();
        registry.register(&bucket, Arc::clone(&store));
        // Three objects: 6 MiB, 1 KiB and 12 MiB of distinct bytes.
        let object = |name: &str, len: usize, seed: u8| {
            let bytes: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect();
            let path = object_store::path::Path::from(format!("{}/in/{name}", target.prefix));
            (path, bytes::Bytes::from(bytes))
        };
        let objects = [
            object("a", 6 << 20, 1),
            object("b", 1 << 10, 2),
            object("c", 12 << 20, 3),
        ];
        for (path, bytes) in &objects {
            store.put(path, bytes.clone().into()).await.unwrap();
        }
        let pieces = vec![
            Piece::Range {
                path: objects[0].0.clone(),
                range: 0..(6 << 20),
            },
            Piece::Range {
                path: objects[1].0.clone(),
                range: 4..(1 << 10),
            },
            Piece::Range {
                path: objects[2].0.clone(),
                range: 100..(12 << 20),
            },
            Piece::Bytes(bytes::Bytes::from_static(b"the footer")),
        ];
        let mut expected = objects[0].1.to_vec();
        expected.extend_from_slice(&objects[1].1[4..]);
        expected.extend_from_slice(&objects[2].1[100..]);
        expected.extend_from_slice(b"the footer");

        let dest = url::Url::parse(&target.url("out/composed.bin")).unwrap();
        let staged = StagedOutput::new(&registry, &dest, OutputKind::File).unwrap();
        let in_place = staged.in_place().unwrap().clone();
        assert!(in_place.can_compose());
        let server = target.server.as_ref();
        let sent_before = server.map(|s| s.stats().bytes_sent());
        let composed = in_place
            .compose(pieces.clone(), ComposeOptions::default())
            .await
            .unwrap();
        assert_eq!(composed.size, expected.len() as u64);
        // a is copied whole; b and the first 5 MiB - 1020 bytes of c are read and sent
        // as one part (S3's parts but the last are at least 5 MiB); the rest of c is
        // copied; the footer is the last part.
        assert_eq!(composed.parts, 4, "{composed:?}");
        let min = 5u64 << 20;
        assert_eq!(composed.read_bytes, min);
        assert_eq!(composed.sent_bytes, min + 10);
        assert_eq!(
            composed.copied_bytes + composed.read_bytes + 10,
            composed.size
        );
        if let (Some(server), Some(before)) = (server, sent_before) {
            // What the server sent the client: the ranges it read, and the answers.
            let sent = server.stats().bytes_sent() - before;
            assert!(sent < min + (64 << 10), "{sent} bytes read back");
        }
        // Invisible until the publish.
        assert!(!target.exists("out/composed.bin").await);
        staged.publish().await.unwrap();
        let path = object_store::path::Path::from(format!("{}/out/composed.bin", target.prefix));
        let got = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert!(
            got.as_ref() == expected.as_slice(),
            "the composed bytes differ"
        );

        // Composed and never published: aborted, nothing there, no upload left.
        let dest = url::Url::parse(&target.url("out/dropped.bin")).unwrap();
        let staged = StagedOutput::new(&registry, &dest, OutputKind::File).unwrap();
        staged
            .in_place()
            .unwrap()
            .compose(pieces, ComposeOptions::default())
            .await
            .unwrap();
        staged.abort().await.unwrap();
        target.assert_no_pending_uploads().await;
        assert!(!target.exists("out/dropped.bin").await);

        // A range of an object that is not there fails naming the destination.
        let dest = url::Url::parse(&target.url("out/missing.bin")).unwrap();
        let staged = StagedOutput::new(&registry, &dest, OutputKind::File).unwrap();
        let missing = vec![Piece::Range {
            path: object_store::path::Path::from(format!("{}/in/nothing", target.prefix)),
            range: 0..(6 << 20),
        }];
        let error = staged
            .in_place()
            .unwrap()
            .compose(missing, ComposeOptions::default())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("out/missing.bin"), "{error}");
        drop(staged);
        target.assert_no_pending_uploads().await;
    }
}

mod http {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_seed_etl_streams_from_http_to_s3() {
        let dir = tempfile::tempdir().unwrap();
        taxi_file(dir.path(), "yellow.parquet", 80_000, 20_000);
        let server = HttpFileServer::start(dir.path()).await.unwrap();
        let target = S3Target::new("http2s3").await;
        let session = target.session();
        let dest = target.url("nyc/2023/09.parquet");
        let written = run_etl(&session, &server.url("yellow.parquet"), &dest)
            .await
            .unwrap();
        assert_eq!(written.rows, 80_000);
        let back = session.read_parquet(&dest).await.unwrap();
        assert_eq!(back.count().await.unwrap(), 80_000);
        assert!(server.stats().requests() >= 2);
    }

    /// The column copy over HTTP plans its fetches: each row group's chunks (copied, or
    /// read for the new column: each byte once) in one request, the footer in one, and
    /// the frame's schema, the copy's plan and its footer read share it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_column_copy_over_http_fetches_each_byte_once_in_a_request_per_row_group() {
        let dir = tempfile::tempdir().unwrap();
        let source = taxi_file(dir.path(), "yellow.parquet", 400_000, 100_000);
        let size = std::fs::metadata(&source).unwrap().len();
        let server = HttpFileServer::start(dir.path()).await.unwrap();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("out.parquet");
        let written = run_etl(
            &Session::new(),
            &server.url("yellow.parquet"),
            dest.to_str().unwrap(),
        )
        .await
        .unwrap();
        assert!(written.method.is_column_copy(), "{:?}", written.method);
        assert_eq!(written.rows, 400_000);
        let (requests, sent) = (server.stats().requests(), server.stats().bytes_sent());
        eprintln!("seed ETL over HTTP: {requests} requests, {sent} bytes of a {size}-byte file");
        // 4 row groups of about 1.7 MB each, and the listing with the footer (the file's
        // last 512 KiB, whose answer gives its size: no HEAD); chunk by chunk it took 80
        // requests, with a HEAD first 6.
        assert!(requests <= 4 + 1, "{requests} requests");
        // Every column chunk once and the listing's 512 KiB (reading the columns the new
        // one needs again took 1.2 times the file).
        assert!(sent <= size + (512 << 10), "{sent} bytes of {size}");
    }

    /// A remote scan reads its next row groups ahead: with latency on every request,
    /// more requests are in flight than the scan's partitions ask for one row group at a
    /// time, the same bytes are read (each row group read ahead is used), and the result
    /// is the same as with nothing read ahead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_remote_scan_reads_its_next_row_groups_ahead_and_reads_each_byte_once() {
        let dir = tempfile::tempdir().unwrap();
        taxi_file(dir.path(), "yellow.parquet", 160_000, 20_000);
        let server = HttpFileServer::start(dir.path()).await.unwrap();
        let proxy = FaultProxy::builder(&server.url(""))
            .rule(FaultRule::new(ProxyFault::Latency(Duration::from_millis(
                20,
            ))))
            .start()
            .await
            .unwrap();
        let url = proxy.url("yellow.parquet");
        let mut runs = Vec::new();
        for read_ahead in [0, sluice::DEFAULT_REMOTE_READ_AHEAD_BYTES] {
            let session = Session::builder()
                .with_remote_read_ahead_bytes(read_ahead)
                .build()
                .unwrap();
            let frame = session.read_parquet(&url).await.unwrap();
            settled_stats(&proxy).await;
            proxy.reset_stats();
            let sums = sum_two_columns(&frame).await;
            let stats = settled_stats(&proxy).await;
            runs.push((sums, stats.max_in_flight, stats.body_bytes));
        }
        let (without, with) = (&runs[0], &runs[1]);
        assert_eq!(without.0, with.0, "the same sums");
        assert!(
            with.1 > without.1,
            "{} requests in flight at most with reads ahead, {} without",
            with.1,
            without.1
        );
        assert!(
            with.2 as f64 <= without.2 as f64 * 1.02,
            "{} bytes read with reads ahead, {} without",
            with.2,
            without.2
        );
    }

    /// A scan of a remote source sends no `HEAD` when it is planned: DataFusion's listing
    /// table lists a single object again (a round trip before the first byte of data),
    /// but the frame pinned it when it was built, and the plan's scan is answered from
    /// the pin. Over a proxy that logs every `HEAD`: the frame's listing (the footer read,
    /// whose answer gives the size) sends none, the scan sends none, and the sums are
    /// those of the file on disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_remote_scan_is_planned_from_its_pins_without_a_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = taxi_file(dir.path(), "yellow.parquet", 50_000, 10_000);
        let server = HttpFileServer::start(dir.path()).await.unwrap();
        let proxy = FaultProxy::builder(&server.url(""))
            .rule(FaultRule::new(ProxyFault::Latency(Duration::ZERO)).method("HEAD"))
            .start()
            .await
            .unwrap();
        let session = Session::new();
        let remote = session
            .read_parquet(&proxy.url("yellow.parquet"))
            .await
            .unwrap();
        let sums = sum_two_columns(&remote).await;
        let stats = settled_stats(&proxy).await;
        let heads = stats.log.iter().filter(|f| f.method == "HEAD").count();
        assert_eq!(heads, 0, "{:?}", stats.log);
        // The footer, then the data: nothing else.
        assert!(stats.requests >= 2, "{} requests", stats.requests);
        let local = session.read_parquet(path.to_str().unwrap()).await.unwrap();
        // Float sums: equal up to the order the partitions added them in.
        let values = |batches: &[RecordBatch]| -> Vec<f64> {
            (0..2)
                .map(|c| {
                    let column = batches[0].column(c);
                    column
                        .as_any()
                        .downcast_ref::<sluice::datafusion::arrow::array::Float64Array>()
                        .unwrap()
                        .value(0)
                })
                .collect()
        };
        let (read, expected) = (values(&sums), values(&sum_two_columns(&local).await));
        for (a, b) in read.iter().zip(&expected) {
            assert!(
                (a - b).abs() <= 1e-9 * b.abs(),
                "{read:?} against {expected:?}"
            );
        }
    }

    /// A scan that skips row groups (pruned by their statistics) stops reading ahead at
    /// the first one it skips: what it wastes is what was read ahead before, not every
    /// pruned row group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_remote_scan_that_prunes_row_groups_stops_reading_ahead() {
        use sluice::datafusion::arrow::array::Int64Array;
        use sluice::datafusion::parquet::arrow::ArrowWriter;
        use sluice::datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
        const GROUPS: i64 = 30;
        const ROWS: i64 = 10_000;
        // 30 row groups; `grp` is the row group's number, so its statistics prune.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups.parquet");
        let ids: Vec<i64> = (0..GROUPS * ROWS).map(|i| i * 7919 % 1_000_003).collect();
        let groups: Vec<i64> = (0..GROUPS * ROWS).map(|i| i / ROWS).collect();
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(ids)) as _),
            ("grp", Arc::new(Int64Array::from(groups)) as _),
        ])
        .unwrap();
        // Statistics per chunk and no page index: the scan prunes whole row groups and
        // asks for the kept ones' chunks whole (with a page index it would ask for pages,
        // which are never read ahead).
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(ROWS as usize))
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_offset_index_disabled(true)
            .build();
        let mut writer = ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            batch.schema(),
            Some(props),
        )
        .unwrap();
        writer.write(&batch).unwrap();
        let footer = writer.close().unwrap();
        assert_eq!(footer.num_row_groups(), GROUPS as usize);
        let group_bytes: u64 = footer
            .row_group(1)
            .columns()
            .iter()
            .map(|c| c.compressed_size() as u64)
            .sum();
        let server = HttpFileServer::start(dir.path()).await.unwrap();
        let proxy = FaultProxy::builder(&server.url(""))
            .rule(FaultRule::new(ProxyFault::Latency(Duration::from_millis(
                5,
            ))))
            .start()
            .await
            .unwrap();
        let url = proxy.url("groups.parquet");
        // Every third row group is kept; each reader may read two row groups ahead.
        let kept: Vec<Expr> = (0..GROUPS).step_by(3).map(lit).collect();
        let partitions = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let mut runs = Vec::new();
        for read_ahead in [0, 2 * group_bytes * partitions + 1] {
            let session = Session::builder()
                .with_remote_read_ahead_bytes(read_ahead)
                .build()
                .unwrap();
            let frame = session
                .read_parquet(&url)
                .await
                .unwrap()
                .filter(col("grp").in_list(kept.clone(), false))
                .unwrap();
            settled_stats(&proxy).await;
            proxy.reset_stats();
            let sums = frame
                .aggregate(Vec::<Expr>::new(), [sum(col("id")), count(col("id"))])
                .unwrap()
                .collect()
                .await
                .unwrap();
            runs.push((sums, settled_stats(&proxy).await.body_bytes));
        }
        let (without, with) = (&runs[0], &runs[1]);
        assert_eq!(without.0, with.0, "the same sums");
        // Two row groups read ahead before the first skip, a little slack for the
        // pruned ones' sizes; reading ahead past every skip would waste twenty.
        assert!(
            with.1 <= without.1 + 3 * group_bytes,
            "{} bytes read with reads ahead, {} without (a row group is {group_bytes})",
            with.1,
            without.1
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_two_column_query_fetches_well_under_half_of_an_http_file() {
        let dir = tempfile::tempdir().unwrap();
        let source = taxi_file(dir.path(), "yellow.parquet", 200_000, 50_000);
        let size = std::fs::metadata(&source).unwrap().len();
        let server = HttpFileServer::start(dir.path()).await.unwrap();
        let session = Session::new();
        let frame = session
            .read_parquet(&server.url("yellow.parquet"))
            .await
            .unwrap();
        let footer_bytes = server.stats().bytes_sent();
        assert!(
            footer_bytes < size / 4,
            "building the frame fetched {footer_bytes} of {size}"
        );
        sum_two_columns(&frame).await;
        let sent = server.stats().bytes_sent();
        eprintln!("2 of 19 columns over HTTP: {sent} bytes of a {size}-byte file");
        assert!(sent < size / 2, "fetched {sent} of {size} bytes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_errors_are_typed_and_name_the_url() {
        let dir = tempfile::tempdir().unwrap();
        taxi_file(dir.path(), "yellow.parquet", 10_000, 10_000);
        let server = HttpFileServer::start(dir.path()).await.unwrap();
        let session = Session::new();
        let missing = session
            .read_parquet(&server.url("missing.parquet"))
            .await
            .unwrap_err();
        assert!(
            matches!(missing, Error::SourceNotFound { .. }),
            "{missing:?}"
        );
        assert!(missing.to_string().contains(&server.url("missing.parquet")));

        let no_ranges = HttpFileServer::start_without_ranges(dir.path())
            .await
            .unwrap();
        let url = no_ranges.url("yellow.parquet");
        let error = match session.read_parquet(&url).await {
            Err(e) => e,
            Ok(frame) => frame.count().await.unwrap_err(),
        };
        assert!(
            matches!(error, Error::RangeNotSupported { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains(&url), "{error}");

        let frame = session.sql("SELECT 1 AS x", []).await.unwrap();
        let read_only = frame
            .write_parquet(&server.url("out.parquet"), ParquetWrite::default())
            .await
            .unwrap_err();
        assert!(read_only.to_string().contains("read-only"), "{read_only}");
        assert!(!dir.path().join("out.parquet").exists());

        // Nothing listens on this port any more.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let dead = format!("http://127.0.0.1:{port}/yellow.parquet");
        let unreachable = Session::builder()
            .with_object_store(
                &url::Url::parse(&dead).unwrap(),
                StoreBuilder::from_url(&url::Url::parse(&dead).unwrap())
                    .with_retry(quick_retries())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
            .read_parquet(&dead)
            .await
            .unwrap_err();
        assert!(
            matches!(unreachable, Error::Unreachable { .. }),
            "{unreachable:?}"
        );
        assert!(unreachable.to_string().contains(&dead), "{unreachable}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transient_http_faults_are_retried() {
        let dir = tempfile::tempdir().unwrap();
        taxi_file(dir.path(), "yellow.parquet", 10_000, 10_000);
        let server = HttpFileServer::start(dir.path()).await.unwrap();
        let session = Session::builder()
            .with_object_store(
                &url::Url::parse(&server.url("")).unwrap(),
                StoreBuilder::from_url(&url::Url::parse(&server.url("")).unwrap())
                    .with_retry(quick_retries())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        server.stats().fail_next(2, Fault::Unavailable);
        let frame = session
            .read_parquet(&server.url("yellow.parquet"))
            .await
            .unwrap();
        server.stats().fail_next(2, Fault::Reset);
        assert_eq!(frame.count().await.unwrap(), 10_000);
    }
}
