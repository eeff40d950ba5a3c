//! Real servers for tests, on loopback: an S3-compatible server (`s3s-fs`, in-process)
//! and an HTTP file server with `HEAD`, `Range` and `ETag`.
//!
//! Both bind `127.0.0.1:0`, count the requests they answer and the body bytes they
//! send, can be told to fail the next requests (503, or a dropped connection) to
//! exercise retries, and stop when dropped.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> sluice_testkit::Result<()> {
//! use sluice_testkit::servers::HttpFileServer;
//!
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("hello.txt"), "hello world").unwrap();
//! let server = HttpFileServer::start(dir.path()).await?;
//! assert!(server.url("hello.txt").starts_with("http://127.0.0.1:"));
//! assert_eq!(server.stats().bytes_sent(), 0);
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::s3_backend::{FsBackend, object_path, sidecar_path, write_aside};
use crate::{Result, TestkitError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResponseBody = BoxBody<Bytes, BoxError>;

/// A fault the server injects into the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer `503 Service Unavailable`.
    Unavailable,
    /// Drop the connection without an answer (the client sees a reset).
    Reset,
}

/// What a server counted, shared with its connections.
#[derive(Debug, Default)]
pub struct ServerStats {
    requests: AtomicU64,
    bytes_sent: AtomicU64,
    faults_left: AtomicU64,
    fault_is_reset: AtomicBool,
}

impl ServerStats {
    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Response body bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::SeqCst)
    }

    /// Sets both counters back to zero.
    pub fn reset(&self) {
        self.requests.store(0, Ordering::SeqCst);
        self.bytes_sent.store(0, Ordering::SeqCst);
    }

    /// Makes the next `requests` requests fail with `fault`.
    pub fn fail_next(&self, requests: u64, fault: Fault) {
        self.fault_is_reset
            .store(fault == Fault::Reset, Ordering::SeqCst);
        self.faults_left.store(requests, Ordering::SeqCst);
    }

    fn take_fault(&self) -> Option<Fault> {
        let took = self
            .faults_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        took.then(|| {
            if self.fault_is_reset.load(Ordering::SeqCst) {
                Fault::Reset
            } else {
                Fault::Unavailable
            }
        })
    }
}

/// A running server's accept loop and counters. Dropping it stops the server.
#[derive(Debug)]
struct Running {
    addr: SocketAddr,
    stats: Arc<ServerStats>,
    accept: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Running {
    /// Serves `handler` on a fresh loopback port, wrapping it with counting and faults.
    async fn start<H, F>(addr: SocketAddr, handler: H) -> Result<Self>
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: std::future::Future<Output = Response<ResponseBody>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TestkitError::Server { source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| TestkitError::Server { source })?;
        let stats = Arc::new(ServerStats::default());
        let counters = Arc::clone(&stats);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let stats = Arc::clone(&counters);
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let handler = handler.clone();
                    let stats = Arc::clone(&stats);
                    async move {
                        stats.requests.fetch_add(1, Ordering::SeqCst);
                        match stats.take_fault() {
                            Some(Fault::Reset) => {
                                return Err(std::io::Error::other("injected connection reset"));
                            }
                            Some(Fault::Unavailable) => {
                                return Ok(plain(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    "injected fault",
                                ));
                            }
                            None => {}
                        }
                        let response = handler(request).await;
                        let counted = Arc::clone(&stats);
                        Ok(response.map(move |body| {
                            body.map_frame(move |frame| {
                                if let Some(data) = frame.data_ref() {
                                    counted
                                        .bytes_sent
                                        .fetch_add(data.len() as u64, Ordering::SeqCst);
                                }
                                frame
                            })
                            .boxed()
                        }))
                    }
                });
                tokio::spawn(async move {
                    let _ = ConnBuilder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            stats,
            accept,
        })
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// An S3-compatible server (`s3s-fs`) on loopback, storing objects under a temporary
/// directory (a bucket is a folder). Requests must be signed with
/// [`ACCESS_KEY`](Self::ACCESS_KEY) / [`SECRET_KEY`](Self::SECRET_KEY).
#[derive(Debug)]
pub struct S3Server {
    running: Running,
    root: PathBuf,
    access_key: String,
    secret_key: String,
    _temporary: Option<tempfile::TempDir>,
}

/// `127.0.0.1:0`: any free loopback port.
fn any_loopback_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl S3Server {
    /// The access key the server accepts.
    pub const ACCESS_KEY: &'static str = "sluice-test-access";
    /// The secret key the server accepts.
    pub const SECRET_KEY: &'static str = "sluice-test-secret-key";
    /// The region clients should sign for.
    pub const REGION: &'static str = "us-east-1";

    /// Starts a server with no buckets, storing objects in a temporary directory.
    pub async fn start() -> Result<Self> {
        let temporary = tempfile::tempdir().map_err(|source| TestkitError::Server { source })?;
        let mut server = Self::start_at(temporary.path(), any_loopback_port()).await?;
        server._temporary = Some(temporary);
        Ok(server)
    }

    /// Starts a server with no buckets that accepts only these keys (two servers with
    /// different credentials, as two endpoints have).
    pub async fn start_with_keys(access_key: &str, secret_key: &str) -> Result<Self> {
        let temporary = tempfile::tempdir().map_err(|source| TestkitError::Server { source })?;
        let mut server = Self::start_with(
            temporary.path(),
            any_loopback_port(),
            access_key,
            secret_key,
        )
        .await?;
        server._temporary = Some(temporary);
        Ok(server)
    }

    /// Starts a server on `addr` whose buckets are the folders of `root`.
    pub async fn start_at(root: &Path, addr: SocketAddr) -> Result<Self> {
        Self::start_with(root, addr, Self::ACCESS_KEY, Self::SECRET_KEY).await
    }

    async fn start_with(
        root: &Path,
        addr: SocketAddr,
        access_key: &str,
        secret_key: &str,
    ) -> Result<Self> {
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| TestkitError::S3 {
            message: format!("{e:?}"),
        })?;
        let fs = FsBackend::new(fs, root);
        let service = {
            let mut builder = s3s::service::S3ServiceBuilder::new(fs);
            builder.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret_key));
            builder.build()
        };
        let objects = Arc::new(root.to_path_buf());
        let running = Running::start(addr, move |request: Request<Incoming>| {
            let service = service.clone();
            let objects = Arc::clone(&objects);
            async move {
                if matches!(*request.method(), Method::GET | Method::HEAD) {
                    stamp_placed_object(&objects, request.uri().path()).await;
                }
                match hyper::service::Service::call(&service, request).await {
                    Ok(response) => response.map(|body| body.map_err(BoxError::from).boxed()),
                    Err(e) => {
                        tracing::warn!(error = ?e, "s3s failed to answer");
                        plain(StatusCode::INTERNAL_SERVER_ERROR, "s3s error")
                    }
                }
            }
        })
        .await?;
        Ok(Self {
            running,
            root: root.to_path_buf(),
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            _temporary: None,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.running.endpoint()
    }

    /// Creates an empty bucket.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        let path = self.root.as_path().join(name);
        std::fs::create_dir_all(&path).map_err(|source| TestkitError::Io { path, source })
    }

    /// Where the server keeps the objects of `bucket` on disk.
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.as_path().join(bucket)
    }

    /// The environment a client (or a child process) needs to reach this server with
    /// AWS conventions.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", Self::REGION.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn pending_uploads(&self) -> usize {
        std::fs::read_dir(self.root.as_path())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| {
                        let name = e.file_name();
                        let name = name.to_string_lossy();
                        name.starts_with(".upload-") && name.ends_with(".json")
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// What the server counted, and its fault injection.
    pub fn stats(&self) -> &ServerStats {
        &self.running.stats
    }
}

/// The ETag both servers give a file they did not store themselves (unquoted): its size
/// and modification time, so that a file replaced in place gets a new one.
fn file_etag(size: u64, modified: std::time::SystemTime) -> String {
    let nanos = modified
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{size:x}-{nanos:x}")
}

/// Gives an object placed in the server's directory by hand (rather than uploaded) an
/// ETag stored as s3s-fs stores an upload's, derived from its size and modification time
/// as [`HttpFileServer`]'s are ([`file_etag`]).
///
/// Without a stored ETag s3s-fs computes the MD5 of the whole object for every `GET` and
/// `HEAD`, whatever the range asked for: half a second per request on a 200 MB file,
/// which made every remote figure taken on this server about the server. An object
/// whose stored ETag is older than the object (replaced in place since) gets a new one.
/// `uri_path` is the request's path-style `/bucket/key`.
async fn stamp_placed_object(root: &Path, uri_path: &str) {
    let decoded = percent_encoding::percent_decode_str(uri_path).decode_utf8_lossy();
    let Some((bucket, key)) = decoded.trim_start_matches('/').split_once('/') else {
        return;
    };
    // s3s-fs refuses such keys itself; nothing to stamp.
    let Ok(object) = object_path(root, bucket, key) else {
        return;
    };
    let Ok(meta) = tokio::fs::metadata(&object).await else {
        return;
    };
    let Ok(modified) = meta.modified() else {
        return;
    };
    // s3s-fs's sidecar for the object (`FileSystem::get_internal_info_path`).
    let info = sidecar_path(root, bucket, key, ".internal.json");
    let stamped = tokio::fs::metadata(&info)
        .await
        .and_then(|info| info.modified())
        .is_ok_and(|stamped| stamped >= modified);
    if !meta.is_file() || stamped {
        return;
    }
    let body = format!("{{\"e_tag\":\"{}\"}}", file_etag(meta.len(), modified));
    let root = root.to_path_buf();
    // Written aside, so that a GET answered meanwhile reads a whole sidecar.
    let written =
        tokio::task::spawn_blocking(move || write_aside(&root, &info, body.as_bytes())).await;
    if let Ok(Err(error)) = written {
        tracing::warn!(%error, object = %object.display(), "could not store a placed object's ETag");
    }
}

/// An HTTP file server on loopback serving a directory with `HEAD`, `GET`, single
/// `Range` requests, `ETag`, `Last-Modified` and `Content-Length`, like a CDN serving
/// Parquet files. [`HttpFileServer::start_without_ranges`] ignores `Range` headers, as
/// some servers do.
#[derive(Debug)]
pub struct HttpFileServer {
    running: Running,
}

impl HttpFileServer {
    /// Serves the files under `root`.
    pub async fn start(root: &Path) -> Result<Self> {
        Self::start_on(root, any_loopback_port(), true).await
    }

    /// Serves the files under `root`, answering every `GET` with the whole file.
    pub async fn start_without_ranges(root: &Path) -> Result<Self> {
        Self::start_on(root, any_loopback_port(), false).await
    }

    /// Serves the files under `root` on `addr`, with or without range support.
    pub async fn start_on(root: &Path, addr: SocketAddr, ranges: bool) -> Result<Self> {
        let root = Arc::new(root.to_path_buf());
        let running = Running::start(addr, move |request: Request<Incoming>| {
            let root = Arc::clone(&root);
            async move { serve_file(&root, &request, ranges).await }
        })
        .await?;
        Ok(Self { running })
    }

    /// The URL of `path` (relative to the served directory).
    pub fn url(&self, path: &str) -> String {
        format!(
            "{}/{}",
            self.running.endpoint(),
            path.trim_start_matches('/')
        )
    }

    /// What the server counted, and its fault injection.
    pub fn stats(&self) -> &ServerStats {
        &self.running.stats
    }
}

async fn serve_file(
    root: &Path,
    request: &Request<Incoming>,
    ranges: bool,
) -> Response<ResponseBody> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "read-only server");
    }
    let relative = request.uri().path().trim_start_matches('/');
    if relative.split('/').any(|part| part == "..") {
        return plain(StatusCode::FORBIDDEN, "no");
    }
    let path = root.join(relative);
    let Ok(meta) = tokio::fs::metadata(&path).await else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    if !meta.is_file() {
        return plain(StatusCode::NOT_FOUND, "not a file");
    }
    let size = meta.len();
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    let etag = format!("\"{}\"", file_etag(size, modified));
    let wanted = request
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| ranges)
        .map(|v| parse_range(v, size));
    let (status, range) = match wanted {
        None => (StatusCode::OK, 0..size),
        Some(Some(range)) => (StatusCode::PARTIAL_CONTENT, range),
        Some(None) => {
            let mut response = plain(StatusCode::RANGE_NOT_SATISFIABLE, "bad range");
            response.headers_mut().insert(
                hyper::header::CONTENT_RANGE,
                format!("bytes */{size}").parse().expect("valid header"),
            );
            return response;
        }
    };
    let body = if request.method() == Method::HEAD {
        Bytes::new()
    } else {
        match read_range(&path, range.clone()).await {
            Ok(bytes) => bytes,
            Err(_) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "read failed"),
        }
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let mut set = |name: hyper::header::HeaderName, value: String| {
        if let Ok(value) = value.parse() {
            headers.insert(name, value);
        }
    };
    set(
        hyper::header::CONTENT_LENGTH,
        (range.end - range.start).to_string(),
    );
    set(hyper::header::ETAG, etag);
    set(
        hyper::header::LAST_MODIFIED,
        httpdate::fmt_http_date(modified),
    );
    if ranges {
        set(hyper::header::ACCEPT_RANGES, "bytes".into());
    }
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            hyper::header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", range.start, range.end - 1),
        );
    }
    response
}

/// Parses one `bytes=` range; `None` when it cannot be satisfied.
fn parse_range(header: &str, size: u64) -> Option<std::ops::Range<u64>> {
    let spec = header.strip_prefix("bytes=")?.split(',').next()?.trim();
    let (start, end) = spec.split_once('-')?;
    let range = match (start.is_empty(), end.is_empty()) {
        (true, false) => {
            let suffix: u64 = end.parse().ok()?;
            size.saturating_sub(suffix)..size
        }
        (false, true) => start.parse().ok()?..size,
        (false, false) => start.parse().ok()?..(end.parse::<u64>().ok()? + 1).min(size),
        (true, true) => return None,
    };
    (range.start < range.end).then_some(range)
}

async fn read_range(path: &Path, range: std::ops::Range<u64>) -> std::io::Result<Bytes> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(range.start)).await?;
    let mut buffer = vec![0; (range.end - range.start) as usize];
    file.read_exact(&mut buffer).await?;
    Ok(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Some(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Some(90..100));
        assert_eq!(parse_range("bytes=95-200", 100), Some(95..100));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
