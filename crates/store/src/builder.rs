//! Building the object store for a URL: S3 (AWS conventions), HTTP(S), local disk,
//! memory, and GCS / Azure behind cargo features.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    RetryConfig, UploadPart,
};
use url::Url;

use crate::redact::redact;
use crate::{Result, StoreError};

/// How requests to a remote store are retried: transient failures (5xx, connection
/// resets, timeouts) are retried with exponential backoff until either limit is hit.
/// Conditional writes are never retried blindly (object_store's own rule).
///
/// The defaults suit batch ETL on a flaky network without hanging on a dead endpoint:
/// up to 5 retries within 30 s, backoff from 100 ms doubling up to 5 s.
///
/// ```
/// use std::time::Duration;
/// let policy = sluice_store::RetryPolicy::default().with_max_retries(2).with_timeout(Duration::from_secs(5));
/// assert_eq!(policy.max_retries, 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// No retry starts after this much time since the first attempt.
    pub timeout: Duration,
    /// The first backoff.
    pub initial_backoff: Duration,
    /// The largest backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            timeout: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Sets the number of retries.
    pub fn with_max_retries(mut self, retries: usize) -> Self {
        self.max_retries = retries;
        self
    }

    /// Sets the overall retry time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the first and largest backoff.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    fn to_config(self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: self.initial_backoff,
                max_backoff: self.max_backoff,
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.timeout,
        }
    }
}

/// Builds the object store for a URL's `scheme://authority`.
///
/// [`from_env`](Self::from_env) starts from the AWS conventions (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` for
/// S3-compatible servers, `AWS_ALLOW_HTTP`); the `with_*` methods override them for
/// this store. This is what a [`StoreRegistry`](crate::StoreRegistry) does on first use
/// of a URL; build one by hand to give one store its own endpoint or credentials.
///
/// ```
/// use sluice_store::{RetryPolicy, StoreBuilder};
/// let url = url::Url::parse("s3://my-bucket/").unwrap();
/// let store = StoreBuilder::from_url(&url)
///     .with_endpoint("http://127.0.0.1:9000")
///     .with_region("us-east-1")
///     .with_credentials("access", "secret", None)
///     .with_allow_http(true)
///     .with_retry(RetryPolicy::default().with_max_retries(3))
///     .build()
///     .unwrap();
/// assert!(store.to_string().contains("my-bucket"));
/// ```
#[derive(Clone, Default)]
pub struct StoreBuilder {
    url: Option<Url>,
    from_env: bool,
    endpoint: Option<String>,
    region: Option<String>,
    credentials: Option<(String, String, Option<String>)>,
    allow_http: Option<bool>,
    retry: RetryPolicy,
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    /// object_store's own options, by key, applied last.
    options: Vec<(String, String)>,
    /// A path inside the bucket that every object path is relative to.
    prefix: Option<Path>,
}

impl fmt::Debug for StoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print credentials.
        f.debug_struct("StoreBuilder")
            .field("url", &self.url.as_ref().map(redact))
            .field("from_env", &self.from_env)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("prefix", &self.prefix)
            .field(
                "options",
                &self.options.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl StoreBuilder {
    /// A store for `url`'s scheme and authority, configured only by the `with_*` calls.
    pub fn from_url(url: &Url) -> Self {
        Self {
            url: Some(url.clone()),
            ..Self::default()
        }
    }

    /// A store for `url`, configured from the environment (AWS conventions for S3),
    /// then by the `with_*` calls.
    pub fn from_env(url: &Url) -> Self {
        Self {
            from_env: true,
            ..Self::from_url(url)
        }
    }

    /// The endpoint of an S3-compatible server (`http://127.0.0.1:9000`).
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// The S3 region.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Static credentials: access key id, secret key and an optional session token.
    pub fn with_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        self.credentials = Some((
            access_key_id.into(),
            secret_access_key.into(),
            session_token,
        ));
        self
    }

    /// Allows plain `http://` endpoints.
    pub fn with_allow_http(mut self, allow: bool) -> Self {
        self.allow_http = Some(allow);
        self
    }

    /// How transient failures are retried.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The time limit of one request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The time limit for connecting.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// An option of object_store's builder for the URL's scheme, by the key
    /// `parse_url_opts` takes (`region`, `endpoint`, `allow_http`, `timeout`,
    /// `virtual_hosted_style_request`, …), applied after every other setting. An
    /// unknown key is an error when the store is built.
    ///
    /// ```
    /// let url = url::Url::parse("s3://bucket/").unwrap();
    /// let store = sluice_store::StoreBuilder::from_url(&url)
    ///     .with_option("region", "eu-west-1")
    ///     .with_option("skip_signature", "true")
    ///     .build();
    /// assert!(store.is_ok());
    /// ```
    pub fn with_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// Makes every object path relative to `prefix` inside the bucket (a named store
    /// whose URL is `s3://bucket/prefix`).
    ///
    /// ```
    /// let url = url::Url::parse("memory://scratch/").unwrap();
    /// let store = sluice_store::StoreBuilder::from_url(&url).with_prefix("area/one").build();
    /// assert!(store.is_ok());
    /// ```
    pub fn with_prefix(mut self, prefix: impl Into<Path>) -> Self {
        let prefix = prefix.into();
        self.prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
        self
    }

    /// Whether plain HTTP is allowed: set by hand, or `AWS_ALLOW_HTTP` with `from_env`.
    fn allow_http(&self) -> Option<bool> {
        self.allow_http.or_else(|| {
            self.from_env
                .then(|| std::env::var("AWS_ALLOW_HTTP").ok())
                .flatten()
                .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
        })
    }

    fn client_options(&self) -> ClientOptions {
        // Replaces the builder's client options wholesale, so it carries over what
        // `from_env` would otherwise have set there.
        let mut options = ClientOptions::new();
        if let Some(allow) = self.allow_http() {
            options = options.with_allow_http(allow);
        }
        if let Some(timeout) = self.timeout {
            options = options.with_timeout(timeout);
        }
        if let Some(timeout) = self.connect_timeout {
            options = options.with_connect_timeout(timeout);
        }
        options
    }

    /// Builds the store. Multipart uploads of the store are aborted when dropped
    /// unfinished, so a failed or cancelled write leaves no parts behind.
    pub fn build(self) -> Result<Arc<dyn ObjectStore>> {
        let url = self.url.clone().ok_or_else(|| StoreError::InvalidUrl {
            location: String::new(),
            reason: "a store builder needs a URL".into(),
        })?;
        let invalid = |source: object_store::Error| StoreError::ObjectStore {
            operation: "configure",
            url: redact(&url),
            source,
        };
        #[cfg(feature = "s3")]
        let mut server_side_copy = None;
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "file" => Arc::new(LocalFileSystem::new()),
            "memory" => Arc::new(InMemory::new()),
            #[cfg(feature = "s3")]
            "s3" | "s3a" => {
                use object_store::aws::AmazonS3Builder;
                let bucket = url.host_str().unwrap_or_default();
                let mut builder = if self.from_env {
                    AmazonS3Builder::from_env()
                } else {
                    AmazonS3Builder::new()
                }
                .with_bucket_name(bucket);
                if let Some(endpoint) = &self.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(region) = &self.region {
                    builder = builder.with_region(region);
                }
                if let Some((key, secret, token)) = &self.credentials {
                    builder = builder
                        .with_access_key_id(key)
                        .with_secret_access_key(secret);
                    if let Some(token) = token {
                        builder = builder.with_token(token);
                    }
                }
                let mut builder = builder
                    .with_retry(self.retry.to_config())
                    .with_client_options(self.client_options());
                for (key, value) in &self.options {
                    builder = builder.with_config(key.parse().map_err(invalid)?, value);
                }
                let s3 = Arc::new(builder.clone().build().map_err(invalid)?);
                server_side_copy = crate::s3_requests::S3Requests::new(
                    &builder,
                    Arc::clone(&s3),
                    self.prefix.clone(),
                    self.retry.max_retries,
                )
                .map_err(invalid)?;
                s3
            }
            #[cfg(feature = "http")]
            "http" | "https" => {
                use object_store::http::HttpBuilder;
                let base = format!(
                    "{}://{}",
                    url.scheme(),
                    &url[url::Position::BeforeHost..url::Position::AfterPort]
                );
                // Writing `http://` in the URL is the user's consent to plain HTTP.
                let mut options = self
                    .client_options()
                    .with_allow_http(url.scheme() == "http" || self.allow_http == Some(true));
                for (key, value) in &self.options {
                    options = options.with_config(key.parse().map_err(invalid)?, value);
                }
                let store = HttpBuilder::new()
                    .with_url(base)
                    .with_retry(self.retry.to_config())
                    .with_client_options(options)
                    .build()
                    .map_err(invalid)?;
                Arc::new(store)
            }
            #[cfg(feature = "gcp")]
            "gs" => {
                use object_store::gcp::GoogleCloudStorageBuilder;
                let builder = if self.from_env {
                    GoogleCloudStorageBuilder::from_env()
                } else {
                    GoogleCloudStorageBuilder::new()
                };
                let mut builder = builder
                    .with_bucket_name(url.host_str().unwrap_or_default())
                    .with_retry(self.retry.to_config())
                    .with_client_options(self.client_options());
                for (key, value) in &self.options {
                    builder = builder.with_config(key.parse().map_err(invalid)?, value);
                }
                Arc::new(builder.build().map_err(invalid)?)
            }
            #[cfg(feature = "azure")]
            "az" | "abfs" | "abfss" => {
                use object_store::azure::MicrosoftAzureBuilder;
                let builder = if self.from_env {
                    MicrosoftAzureBuilder::from_env()
                } else {
                    MicrosoftAzureBuilder::new()
                };
                let mut builder = builder
                    .with_url(url.as_str())
                    .with_retry(self.retry.to_config())
                    .with_client_options(self.client_options());
                for (key, value) in &self.options {
                    builder = builder.with_config(key.parse().map_err(invalid)?, value);
                }
                Arc::new(builder.build().map_err(invalid)?)
            }
            scheme => {
                return Err(StoreError::UnsupportedScheme {
                    url: redact(&url),
                    scheme: scheme.to_string(),
                });
            }
        };
        let store: Arc<dyn ObjectStore> = match self.prefix {
            Some(prefix) => Arc::new(object_store::prefix::PrefixStore::new(store, prefix)),
            None => store,
        };
        let remote = !matches!(url.scheme(), "file" | "memory");
        let store: Arc<dyn ObjectStore> = Arc::new(AbortingStore {
            inner: store,
            remote,
            short_read_retries: self.retry.max_retries,
        });
        #[cfg(feature = "s3")]
        if let Some(copy) = server_side_copy {
            crate::s3_requests::S3Requests::register(&store, copy);
        }
        Ok(store)
    }
}

/// Wraps a store so that a multipart upload dropped before `complete` is aborted.
/// DataFusion's writers drop their upload on failure without aborting it (see
/// `datafusion-datasource/src/write/mod.rs`), which on S3 leaves invisible, billed parts.
#[derive(Debug)]
pub(crate) struct AbortingStore {
    inner: Arc<dyn ObjectStore>,
    /// Whether the store is reached over the network, where a body can come back
    /// short (see `get_ranges`).
    remote: bool,
    /// How often a body that came back short is resumed before it is an error.
    short_read_retries: usize,
}

impl fmt::Display for AbortingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait]
impl ObjectStore for AbortingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        // Counted from before the request: if the caller is dropped while the upload is
        // being created, the creation still completes in its own task and is aborted.
        // Dropping the value sent (the caller gone) aborts the upload.
        let open = crate::cleanup::Pending::new();
        let inner = Arc::clone(&self.inner);
        let path = location.clone();
        let replacing = opts.extensions.get::<Replacing>().cloned();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let created = inner
                .put_multipart_opts(&path, opts)
                .await
                .map(|upload| AbortOnDrop {
                    inner: Some(upload),
                    location: path,
                    open: Some(open),
                    store: inner,
                    bytes: 0,
                    started: std::time::SystemTime::now(),
                    replacing,
                });
            let _ = sender.send(created);
        });
        let upload = receiver.await.map_err(|_| object_store::Error::Generic {
            store: "sluice",
            source: format!("the creation of the multipart upload of {location} was lost").into(),
        })??;
        Ok(Box::new(upload))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let head = options.head;
        let mut result = self.inner.get_opts(location, options).await?;
        // What was read is where it was asked for: object_store 0.13's `PrefixStore`
        // (under a named store with a prefix) answers with the prefixed location.
        result.meta.location = location.clone();
        Ok(if head {
            result
        } else {
            let resume = Resume {
                store: Arc::clone(&self.inner),
                attempts: self.short_read_retries,
            };
            checked_length(location, result, Some(resume))
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        // object_store's own coalescing slices each fetched buffer by the range it
        // asked for, and panics (`range start must not be greater than end`) when a
        // buffer came back short; over the network, coalesce here instead, fetching
        // through `get_opts` above, which turns a short body into an error first.
        let parts = if self.remote {
            use object_store::ObjectStoreExt;
            object_store::coalesce_ranges(
                ranges,
                |range| self.get_range(location, range),
                object_store::OBJECT_STORE_COALESCE_DEFAULT,
            )
            .await?
        } else {
            self.inner.get_ranges(location, ranges).await?
        };
        for (range, bytes) in ranges.iter().zip(&parts) {
            let received = bytes.len() as u64;
            if received != range.end - range.start {
                return Err(short_read(location, range.clone(), received));
            }
        }
        Ok(parts)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        if !self.remote {
            return self.inner.delete_stream(locations);
        }
        // S3 deletes with a bulk `POST ?delete`, which object_store does not retry
        // once the request was sent (a POST is not idempotent to it), though deleting
        // is: a reset connection then failed a publish whose copy had succeeded, or
        // left a staged object behind. Retry the paths whose delete failed transiently.
        use futures::StreamExt;
        let inner = Arc::clone(&self.inner);
        locations
            .chunks(DELETE_BATCH)
            .then(move |chunk| delete_with_retries(Arc::clone(&inner), chunk))
            .flat_map(futures::stream::iter)
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        if !self.remote {
            return self.inner.rename_opts(from, to, options).await;
        }
        // object_store's rename over the network is a copy, then a delete; the delete
        // goes through `delete_stream` above so that a lost answer is retried.
        let RenameOptions {
            target_mode,
            extensions,
        } = options;
        let mode = match target_mode {
            object_store::RenameTargetMode::Overwrite => object_store::CopyMode::Overwrite,
            object_store::RenameTargetMode::Create => object_store::CopyMode::Create,
        };
        let copy = CopyOptions { mode, extensions };
        self.inner.copy_opts(from, to, copy).await?;
        object_store::ObjectStoreExt::delete(self, from).await
    }
}

/// Paths deleted per bulk request (S3 takes up to 1,000).
const DELETE_BATCH: usize = 1000;
/// Attempts of a delete that fails transiently.
const DELETE_ATTEMPTS: u32 = 4;

/// Deletes `chunk`'s paths, retrying those that failed transiently (a missing
/// object counts as deleted, as S3 itself has it).
async fn delete_with_retries(
    inner: Arc<dyn ObjectStore>,
    chunk: Vec<object_store::Result<Path>>,
) -> Vec<object_store::Result<Path>> {
    use futures::StreamExt;
    let mut done = Vec::with_capacity(chunk.len());
    let mut pending = Vec::new();
    for item in chunk {
        match item {
            Ok(path) => pending.push(path),
            Err(e) => done.push(Err(e)),
        }
    }
    let mut attempt = 1;
    while !pending.is_empty() {
        let paths = pending.clone();
        let results: Vec<_> = inner
            .delete_stream(futures::stream::iter(paths.clone().into_iter().map(Ok)).boxed())
            .collect()
            .await;
        let failed: Vec<object_store::Error> =
            results.into_iter().filter_map(Result::err).collect();
        if failed.is_empty() {
            done.extend(paths.into_iter().map(Ok));
            break;
        }
        let retryable = failed.iter().all(|e| {
            matches!(
                crate::classify(e),
                crate::StoreErrorKind::Transient | crate::StoreErrorKind::Unreachable
            )
        });
        if !retryable || attempt >= DELETE_ATTEMPTS {
            // Which paths failed is not always known (a lost bulk answer fails them
            // all): report the errors, once each.
            done.extend(failed.into_iter().map(Err));
            break;
        }
        tracing::debug!(
            attempt,
            paths = paths.len(),
            "retrying a delete that failed transiently"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
        attempt += 1;
        pending = paths;
    }
    done
}

/// Where a streamed body is read from, to resume it when it comes back short.
struct Resume {
    store: Arc<dyn ObjectStore>,
    /// Resumptions allowed (the store's retry count).
    attempts: usize,
}

/// What a checked body stream carries from one item to the next.
struct Checked {
    stream: BoxStream<'static, object_store::Result<bytes::Bytes>>,
    received: u64,
    resumed: usize,
    done: bool,
}

/// Makes a streamed body that ends before the range it announced either resume
/// (a ranged read of the rest, from the same version of the object) or, when that
/// fails too, end in an error: never hand on fewer bytes as the whole.
///
/// object_store trusts the transport to deliver every byte of a body: hyper reports a
/// body shorter than its `Content-Length` (and object_store retries it), but a body
/// whose `Content-Length` itself was cut (a broken cache or server) ends "normally",
/// and `GetResult::bytes` hands on what arrived. Parquet would then decode a short
/// buffer as the column chunk it asked for, or panic on it.
fn checked_length(location: &Path, result: GetResult, resume: Option<Resume>) -> GetResult {
    use futures::StreamExt;
    let GetResult {
        payload,
        meta,
        range,
        attributes,
    } = result;
    let payload = match payload {
        object_store::GetResultPayload::Stream(stream) => {
            let location = location.clone();
            let wanted = range.clone();
            let etag = meta.e_tag.clone();
            let resume = resume.map(Arc::new);
            let start = Checked {
                stream,
                received: 0,
                resumed: 0,
                done: false,
            };
            let checked = futures::stream::unfold(start, move |mut state| {
                let location = location.clone();
                let range = wanted.clone();
                let etag = etag.clone();
                let resume = resume.clone();
                async move {
                    if state.done {
                        return None;
                    }
                    let expected = range.end - range.start;
                    loop {
                        match state.stream.next().await {
                            Some(Ok(bytes)) => {
                                state.received += bytes.len() as u64;
                                return Some((Ok(bytes), state));
                            }
                            Some(Err(e)) => {
                                state.done = true;
                                return Some((Err(e), state));
                            }
                            None if state.received >= expected => return None,
                            None => {}
                        }
                        let rest = range.start + state.received..range.end;
                        let resumed = match &resume {
                            Some(resume) if state.resumed < resume.attempts => {
                                state.resumed += 1;
                                tracing::info!(%location, start = rest.start, end = rest.end, attempt = state.resumed, "a read was cut short; reading the rest");
                                let options = GetOptions::new().with_range(Some(rest.clone()));
                                match resume.store.get_opts(&location, options).await {
                                    // The same version, and the range asked for.
                                    Ok(more) if more.meta.e_tag == etag && more.range == rest => {
                                        Some(more.into_stream())
                                    }
                                    _ => None,
                                }
                            }
                            _ => None,
                        };
                        match resumed {
                            Some(stream) => state.stream = stream,
                            None => {
                                state.done = true;
                                let received = state.received;
                                return Some((Err(short_read(&location, range, received)), state));
                            }
                        }
                    }
                }
            });
            object_store::GetResultPayload::Stream(checked.boxed())
        }
        file => file,
    };
    GetResult {
        payload,
        meta,
        range,
        attributes,
    }
}

/// The error of a read that received fewer bytes than it asked for: transient to
/// every caller (an `UnexpectedEof` in the chain), typed underneath.
fn short_read(location: &Path, range: std::ops::Range<u64>, received: u64) -> object_store::Error {
    tracing::warn!(%location, start = range.start, end = range.end, received, "a read was cut short");
    object_store::Error::Generic {
        store: "sluice",
        source: Box::new(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            StoreError::ShortRead {
                location: location.to_string(),
                start: range.start,
                end: range.end,
                expected: range.end - range.start,
                received,
            },
        )),
    }
}

#[derive(Debug)]
struct AbortOnDrop {
    inner: Option<Box<dyn MultipartUpload>>,
    location: Path,
    /// Counted by [`crate::cleanup::drain`] until the upload is completed or aborted.
    open: Option<crate::cleanup::Pending>,
    /// The store the upload is on, to look for the object when `complete` failed.
    store: Arc<dyn ObjectStore>,
    /// Bytes handed to `put_part`.
    bytes: u64,
    /// When the upload was created.
    started: std::time::SystemTime,
    /// What the location held when the upload began, for an upload at a name that is
    /// not unique (an output's destination); `None` for a unique name.
    replacing: Option<Replacing>,
}

/// What an upload's location held when the upload began, given in the upload's
/// [`PutMultipartOptions::extensions`] by a writer whose location is not a unique name
/// (an in-place upload at an output's destination), so that a completion whose answer
/// was lost is taken for done only when the object there is no longer that one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Replacing {
    /// No object.
    Nothing,
    /// This object.
    Object(ObjectMeta),
    /// Not known (the `HEAD` failed): a lost answer is an error.
    Unknown,
}

impl Replacing {
    /// Whether `now`, found at the location after a completion failed to answer, is no
    /// longer what was there before: a new ETag, or a later modification time (both
    /// by the server's clock). An object written again with the same bytes keeps a
    /// content-hash ETag (S3's, unencrypted), and object times have seconds: the same
    /// bytes written again within the second the old ones were is not told apart, and
    /// the lost answer is an error.
    fn replaced_by(&self, now: &ObjectMeta) -> bool {
        match self {
            Replacing::Nothing => true,
            Replacing::Object(before) => {
                now.e_tag != before.e_tag || now.last_modified > before.last_modified
            }
            Replacing::Unknown => false,
        }
    }
}

#[async_trait]
impl MultipartUpload for AbortOnDrop {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.bytes += data.content_length() as u64;
        match self.inner.as_mut() {
            Some(upload) => upload.put_part(data),
            None => Box::pin(futures::future::ready(Err(finished(&self.location)))),
        }
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let mut upload = self.inner.take().ok_or_else(|| finished(&self.location))?;
        let result = upload.complete().await;
        let Err(error) = result else {
            return result;
        };
        // A CompleteMultipartUpload whose answer was lost is retried by object_store,
        // and the server then denies knowing the upload (NoSuchUpload; s3s answers
        // AccessDenied): the upload did complete. Under a unique name (staging and
        // checkpoint parts) an object there of exactly the bytes sent, written since
        // the upload began, is this upload's; at an output's destination it must also
        // not be the object that was there before (an earlier run's output of the same
        // size, written a minute ago, is not this upload's).
        if let Ok(meta) =
            object_store::ObjectStoreExt::head(self.store.as_ref(), &self.location).await
            && self
                .replacing
                .as_ref()
                .is_none_or(|replacing| replacing.replaced_by(&meta))
        {
            let began = self
                .started
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            // Allow for the server's clock being a little behind ours.
            if meta.size == self.bytes && meta.last_modified.timestamp() >= began - 60 {
                tracing::info!(location = %self.location, error = %error, "the multipart upload completed though its completion failed to answer");
                return Ok(PutResult {
                    e_tag: meta.e_tag,
                    version: meta.version,
                });
            }
        }
        let _ = upload.abort().await;
        Err(error)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        match self.inner.take() {
            Some(mut upload) => upload.abort().await,
            None => Ok(()),
        }
    }
}

fn finished(location: &Path) -> object_store::Error {
    object_store::Error::Generic {
        store: "sluice",
        source: format!("the multipart upload of {location} is already finished").into(),
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(mut upload) = self.inner.take() else {
            return;
        };
        let location = self.location.clone();
        let open = self.open.take();
        crate::cleanup::spawn("abort multipart upload", async move {
            let _open = open;
            match upload.abort().await {
                Ok(()) => tracing::debug!(%location, "aborted an unfinished multipart upload"),
                Err(e) => {
                    tracing::warn!(%location, error = %e, "could not abort an unfinished multipart upload")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn streamed(range: std::ops::Range<u64>, chunks: Vec<&'static [u8]>) -> GetResult {
        let location = Path::from("x.parquet");
        GetResult {
            payload: object_store::GetResultPayload::Stream(
                futures::stream::iter(chunks.into_iter().map(|c| Ok(bytes::Bytes::from_static(c))))
                    .boxed(),
            ),
            meta: ObjectMeta {
                location,
                last_modified: Default::default(),
                size: 100,
                e_tag: None,
                version: None,
            },
            range,
            attributes: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_body_shorter_than_its_range_is_an_error() {
        let location = Path::from("x.parquet");
        let whole = checked_length(&location, streamed(10..16, vec![b"abc", b"def"]), None);
        assert_eq!(&whole.bytes().await.unwrap()[..], b"abcdef");
        let short = checked_length(&location, streamed(10..16, vec![b"abc", b"d"]), None);
        let error = short.bytes().await.unwrap_err();
        assert!(
            error.to_string().contains("ended after 4 of the 6 bytes"),
            "{error}"
        );
        assert_eq!(crate::classify(&error), crate::StoreErrorKind::Transient);
    }

    #[tokio::test]
    async fn a_body_cut_short_is_resumed_from_the_same_version() {
        use object_store::ObjectStoreExt;
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let location = Path::from("x.parquet");
        let put = store
            .put(&location, PutPayload::from_static(b"0123456789abcdefghij"))
            .await
            .unwrap();
        let resume = || Resume {
            store: Arc::clone(&store),
            attempts: 2,
        };
        // Bytes 10..16 ("abcdef") arrive as "abc": the rest is read from the store.
        let mut cut = streamed(10..16, vec![b"abc"]);
        cut.meta.e_tag = put.e_tag.clone();
        let whole = checked_length(&location, cut, Some(resume()));
        assert_eq!(&whole.bytes().await.unwrap()[..], b"abcdef");
        // Another version of the object is not stitched on.
        let mut other = streamed(10..16, vec![b"abc"]);
        other.meta.e_tag = Some("another version".into());
        let error = checked_length(&location, other, Some(resume()))
            .bytes()
            .await
            .unwrap_err();
        assert!(error.to_string().contains("cut short"), "{error}");
    }
}
