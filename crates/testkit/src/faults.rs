//! A fault-injecting HTTP proxy for storage tests: a real TCP proxy on loopback in
//! front of an upstream server (the [`S3Server`](crate::servers::S3Server), the
//! [`HttpFileServer`](crate::servers::HttpFileServer), or any HTTP/1.1 endpoint).
//!
//! Clients talk to [`FaultProxy::endpoint`]; the proxy forwards each request to the
//! upstream unchanged (the `Host` header too, so S3 signatures made for the proxy's
//! address still verify) and relays the answer, unless a [`FaultRule`] picks the
//! request. Then it injects a [`ProxyFault`] instead: a 500, a 503, an S3 `SlowDown`,
//! added latency, a connection reset (TCP RST, before or after the upstream saw the
//! request), or a body cut short (the headers announce the full `Content-Length`, then
//! fewer bytes come, then the connection closes; or, the nastier variant, the
//! `Content-Length` is rewritten to match the bytes sent, so that the message is valid
//! HTTP while its `Content-Range` still announces the whole range).
//!
//! Rules match on the method and on substrings of the request target (path and
//! query), and pick the matching requests by position (the n-th, the first k, the
//! next k after some) or at a rate drawn from a seeded generator, so that a run is
//! repeatable. The proxy counts the requests it saw, the faults it injected by kind,
//! the body bytes it relayed and the most requests it had in flight at once.
//!
//! The proxy speaks HTTP/1.1 with one request per connection: it asks the upstream to
//! close after each answer and tells the client so, which keeps every fault confined
//! to the one request it was aimed at. It stops when dropped.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> sluice_testkit::Result<()> {
//! use sluice_testkit::faults::{FaultKind, FaultProxy, FaultRule, ProxyFault};
//! use sluice_testkit::servers::HttpFileServer;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("data.bin"), vec![7u8; 1000]).unwrap();
//! let server = HttpFileServer::start(dir.path()).await?;
//! // The first GET of data.bin gets a 503; everything else passes.
//! let proxy = FaultProxy::builder(&server.url(""))
//!     .seed(42)
//!     .rule(FaultRule::new(ProxyFault::Unavailable).method("GET").target_contains("data.bin").first(1))
//!     .start()
//!     .await?;
//!
//! let get = |()| async {
//!     let mut socket = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
//!     socket.write_all(b"GET /data.bin HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
//!     let mut answer = Vec::new();
//!     socket.read_to_end(&mut answer).await.unwrap();
//!     String::from_utf8_lossy(&answer).into_owned()
//! };
//! assert!(get(()).await.starts_with("HTTP/1.1 503"));
//! assert!(get(()).await.starts_with("HTTP/1.1 200"));
//! let stats = proxy.stats();
//! assert_eq!((stats.requests, stats.injected(FaultKind::Unavailable)), (2, 1));
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::{Result, TestkitError};

/// The largest request or response head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;

/// What the proxy does to a request a rule picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyFault {
    /// Answers `500 Internal Server Error` (S3 code `InternalError`) without forwarding.
    InternalError,
    /// Answers `503 Service Unavailable` (S3 code `ServiceUnavailable`) without forwarding.
    Unavailable,
    /// Answers S3's throttling error without forwarding: `503` with the XML body
    /// `<Error><Code>SlowDown</Code>...`.
    SlowDown,
    /// Waits this long, then forwards the request normally.
    Latency(Duration),
    /// Resets the connection (TCP RST) without forwarding the request.
    Reset,
    /// Forwards the request, lets the upstream act on it, then resets the connection
    /// instead of relaying the answer: the client cannot know whether it happened.
    ResetAfterUpstream,
    /// Relays the answer's headers with the full `Content-Length`, then half the body,
    /// then closes the connection.
    ShortBody,
    /// Relays half the body with a `Content-Length` that says so, and every other
    /// header (`Content-Range`, `ETag`) as the upstream sent it: a valid HTTP message
    /// whose body is shorter than the range it claims, as a broken cache or server may
    /// send. HTTP itself cannot reveal the truncation.
    TruncatedRange,
}

impl ProxyFault {
    /// The kind this fault is counted under.
    pub fn kind(self) -> FaultKind {
        match self {
            Self::InternalError => FaultKind::InternalError,
            Self::Unavailable => FaultKind::Unavailable,
            Self::SlowDown => FaultKind::SlowDown,
            Self::Latency(_) => FaultKind::Latency,
            Self::Reset => FaultKind::Reset,
            Self::ResetAfterUpstream => FaultKind::ResetAfterUpstream,
            Self::ShortBody => FaultKind::ShortBody,
            Self::TruncatedRange => FaultKind::TruncatedRange,
        }
    }
}

/// A [`ProxyFault`] without its parameters, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// [`ProxyFault::InternalError`].
    InternalError,
    /// [`ProxyFault::Unavailable`].
    Unavailable,
    /// [`ProxyFault::SlowDown`].
    SlowDown,
    /// [`ProxyFault::Latency`].
    Latency,
    /// [`ProxyFault::Reset`].
    Reset,
    /// [`ProxyFault::ResetAfterUpstream`].
    ResetAfterUpstream,
    /// [`ProxyFault::ShortBody`].
    ShortBody,
    /// [`ProxyFault::TruncatedRange`].
    TruncatedRange,
}

/// Which of the matching requests a rule picks.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pick {
    /// Every one.
    All,
    /// `count` of them after skipping `skip`.
    Window { skip: u64, count: u64 },
    /// Each with this probability, drawn from the proxy's seeded generator.
    Rate(f64),
}

/// When to inject a fault: which requests match (method, target substrings) and which
/// of the matching ones are picked (all, by position, or at a seeded rate).
///
/// ```
/// use sluice_testkit::faults::{FaultRule, ProxyFault};
/// // The 2nd part upload of any multipart upload gets a 500.
/// let rule = FaultRule::new(ProxyFault::InternalError).method("PUT").target_contains("partNumber=").nth(2);
/// // A fifth of the GETs of Parquet objects are throttled.
/// let throttle = FaultRule::new(ProxyFault::SlowDown).method("GET").target_contains(".parquet").rate(0.2);
/// # let _ = (rule, throttle);
/// ```
#[derive(Debug, Clone)]
pub struct FaultRule {
    fault: ProxyFault,
    method: Option<String>,
    contains: Vec<String>,
    lacks: Vec<String>,
    headers: Vec<String>,
    pick: Pick,
}

impl FaultRule {
    /// A rule injecting `fault` into every request (narrow it with the other methods).
    pub fn new(fault: ProxyFault) -> Self {
        Self {
            fault,
            method: None,
            contains: Vec::new(),
            lacks: Vec::new(),
            headers: Vec::new(),
            pick: Pick::All,
        }
    }

    /// Matches only requests with this method (`GET`, `PUT`, `POST`, ...).
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Matches only requests whose target (path and query, as sent) contains `text`;
    /// several calls must all match.
    pub fn target_contains(mut self, text: &str) -> Self {
        self.contains.push(text.to_string());
        self
    }

    /// Matches only requests whose target does not contain `text`.
    pub fn target_lacks(mut self, text: &str) -> Self {
        self.lacks.push(text.to_string());
        self
    }

    /// Matches only requests that carry the header `name` (any case), such as
    /// `x-amz-copy-source`, which tells S3's `UploadPartCopy` from `UploadPart` (the same
    /// method and target).
    ///
    /// ```
    /// use sluice_testkit::faults::{FaultRule, ProxyFault};
    /// let copies = FaultRule::new(ProxyFault::InternalError).method("PUT").header("x-amz-copy-source");
    /// # let _ = copies;
    /// ```
    pub fn header(mut self, name: &str) -> Self {
        self.headers.push(name.to_string());
        self
    }

    /// Picks only the `n`-th matching request (1-based).
    pub fn nth(self, n: u64) -> Self {
        self.window(n.saturating_sub(1), 1)
    }

    /// Picks the first `count` matching requests.
    pub fn first(self, count: u64) -> Self {
        self.window(0, count)
    }

    /// Picks `count` matching requests after letting `skip` of them through.
    pub fn window(mut self, skip: u64, count: u64) -> Self {
        self.pick = Pick::Window { skip, count };
        self
    }

    /// Picks each matching request with probability `rate` (0 to 1), drawn from the
    /// proxy's seeded generator.
    pub fn rate(mut self, rate: f64) -> Self {
        self.pick = Pick::Rate(rate.clamp(0.0, 1.0));
        self
    }

    fn matches(&self, method: &str, target: &str, headers: &[(String, String)]) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self.contains.iter().all(|t| target.contains(t.as_str()))
            && !self.lacks.iter().any(|t| target.contains(t.as_str()))
            && self
                .headers
                .iter()
                .all(|h| headers.iter().any(|(name, _)| name.eq_ignore_ascii_case(h)))
    }
}

/// One fault the proxy injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFault {
    /// The request's method.
    pub method: String,
    /// The request's target (path and query).
    pub target: String,
    /// What was done to it.
    pub kind: FaultKind,
}

/// What a proxy counted, as of [`FaultProxy::stats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultStats {
    /// Requests seen (each connection carries one).
    pub requests: u64,
    /// Faults injected, by kind.
    pub by_kind: BTreeMap<FaultKind, u64>,
    /// Response body bytes relayed to clients (after any truncation).
    pub body_bytes: u64,
    /// The most requests in flight at once.
    pub max_in_flight: u64,
    /// Every fault injected, in order.
    pub log: Vec<InjectedFault>,
}

impl FaultStats {
    /// Faults of `kind` injected.
    pub fn injected(&self, kind: FaultKind) -> u64 {
        self.by_kind.get(&kind).copied().unwrap_or(0)
    }

    /// Faults injected, of every kind.
    pub fn total_injected(&self) -> u64 {
        self.by_kind.values().sum()
    }
}

/// The rules, their counters and the generator, decided under one lock so that a
/// seeded run draws the same numbers in the same order of requests.
#[derive(Debug)]
struct Rules {
    rules: Vec<(FaultRule, u64)>,
    rng: SplitMix64,
}

impl Rules {
    fn pick(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(String, String)],
    ) -> Option<ProxyFault> {
        for (rule, seen) in &mut self.rules {
            if !rule.matches(method, target, headers) {
                continue;
            }
            let index = *seen;
            *seen += 1;
            let picked = match rule.pick {
                Pick::All => true,
                Pick::Window { skip, count } => index >= skip && index - skip < count,
                Pick::Rate(rate) => self.rng.next_f64() < rate,
            };
            if picked {
                return Some(rule.fault);
            }
        }
        None
    }
}

/// A small seeded generator (SplitMix64): deterministic, no dependency.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    rules: Mutex<Rules>,
    requests: AtomicU64,
    body_bytes: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    log: Mutex<Vec<InjectedFault>>,
}

impl Shared {
    fn record(&self, method: &str, target: &str, kind: FaultKind) {
        tracing::debug!(method, target, ?kind, "injected a fault");
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(InjectedFault {
                method: method.to_string(),
                target: target.to_string(),
                kind,
            });
    }
}

/// Builds a [`FaultProxy`]: the upstream, the seed of its generator, its rules.
#[derive(Debug)]
pub struct FaultProxyBuilder {
    upstream: String,
    seed: u64,
    rules: Vec<FaultRule>,
    port: u16,
}

impl FaultProxyBuilder {
    /// Seeds the generator that [`FaultRule::rate`] draws from (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The loopback port to listen on (default 0: any free port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Adds a rule; rules are tried in order and the first that picks a request wins.
    pub fn rule(mut self, rule: FaultRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Binds a loopback port and starts proxying.
    pub async fn start(self) -> Result<FaultProxy> {
        let upstream = parse_endpoint(&self.upstream)?;
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], self.port)))
            .await
            .map_err(|source| TestkitError::Server { source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| TestkitError::Server { source })?;
        let shared = Arc::new(Shared {
            upstream,
            rules: Mutex::new(Rules {
                rules: self.rules.into_iter().map(|r| (r, 0)).collect(),
                rng: SplitMix64(self.seed),
            }),
            requests: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        });
        let state = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    if let Err(e) = proxy_one(&state, socket).await {
                        tracing::debug!(error = %e, "proxied connection ended with an error");
                    }
                    state.in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(FaultProxy {
            addr,
            shared,
            accept,
        })
    }
}

/// A fault-injecting HTTP/1.1 proxy on loopback (see the [module docs](self)).
/// Dropping it stops accepting connections.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FaultProxy {
    /// A proxy in front of `upstream` (`http://127.0.0.1:PORT`, a path after it is
    /// ignored), with no rules yet.
    pub fn builder(upstream: &str) -> FaultProxyBuilder {
        FaultProxyBuilder {
            upstream: upstream.to_string(),
            seed: 0,
            rules: Vec::new(),
            port: 0,
        }
    }

    /// The proxy's socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: use it as the S3 endpoint or HTTP base URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of `path` through the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.endpoint(), path.trim_start_matches('/'))
    }

    /// Replaces the rules (their positions count from zero again); the generator
    /// carries on.
    pub fn set_rules(&self, rules: impl IntoIterator<Item = FaultRule>) {
        let mut guard = self.shared.rules.lock().unwrap_or_else(|e| e.into_inner());
        guard.rules = rules.into_iter().map(|r| (r, 0)).collect();
    }

    /// Removes every rule: the proxy then only relays.
    pub fn clear_rules(&self) {
        self.set_rules([]);
    }

    /// What the proxy counted so far.
    pub fn stats(&self) -> FaultStats {
        let log = self
            .shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut by_kind = BTreeMap::new();
        for fault in &log {
            *by_kind.entry(fault.kind).or_insert(0) += 1;
        }
        FaultStats {
            requests: self.shared.requests.load(Ordering::SeqCst),
            by_kind,
            body_bytes: self.shared.body_bytes.load(Ordering::SeqCst),
            max_in_flight: self.shared.max_in_flight.load(Ordering::SeqCst),
            log,
        }
    }

    /// Sets every counter back to zero and empties the log.
    pub fn reset_stats(&self) {
        self.shared.requests.store(0, Ordering::SeqCst);
        self.shared.body_bytes.store(0, Ordering::SeqCst);
        self.shared.max_in_flight.store(0, Ordering::SeqCst);
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

fn parse_endpoint(endpoint: &str) -> Result<SocketAddr> {
    let invalid = || TestkitError::Server {
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the proxy needs an upstream like http://127.0.0.1:PORT, got {endpoint}"),
        ),
    };
    let rest = endpoint.strip_prefix("http://").ok_or_else(invalid)?;
    let authority = rest.split('/').next().unwrap_or_default();
    authority.parse().map_err(|_| invalid())
}

/// A parsed message head: the start line, the header lines, and the bytes read past it.
struct Head {
    start: String,
    headers: Vec<(String, String)>,
    rest: Vec<u8>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.trim().parse().ok()
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    /// The head as bytes, with `connection: close` and, if given, a new
    /// `content-length`.
    fn encode(&self, content_length: Option<u64>) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (name, value) in &self.headers {
            if name.eq_ignore_ascii_case("connection")
                || (content_length.is_some() && name.eq_ignore_ascii_case("content-length"))
            {
                continue;
            }
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(length) = content_length {
            out.push_str(&format!("content-length: {length}\r\n"));
        }
        out.push_str("connection: close\r\n\r\n");
        out.into_bytes()
    }
}

async fn read_head<R: AsyncReadExt + Unpin>(reader: &mut R) -> std::io::Result<Option<Head>> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buffer.len() > MAX_HEAD {
            return Err(std::io::Error::other("message head too large"));
        }
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Some(Head {
        start,
        headers,
        rest: buffer[end + 4..].to_vec(),
    }))
}

/// Reads and discards a request body, so that an injected error answer reaches a
/// client that is still sending.
async fn drain_body(client: &mut TcpStream, head: &Head) -> std::io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    if head.chunked() {
        // Good enough for draining: read until the last-chunk marker arrives.
        let mut tail = head.rest.clone();
        while !tail.ends_with(b"0\r\n\r\n") {
            let n = client.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&chunk[..n]);
            let keep = tail.len().saturating_sub(8);
            tail.drain(..keep);
        }
        return Ok(());
    }
    let mut left = head
        .content_length()
        .unwrap_or(0)
        .saturating_sub(head.rest.len() as u64);
    while left > 0 {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        left = left.saturating_sub(n as u64);
    }
    Ok(())
}

fn error_answer(fault: ProxyFault, target: &str) -> Vec<u8> {
    let (status, code, message) = match fault {
        ProxyFault::InternalError => (
            "500 Internal Server Error",
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        ProxyFault::SlowDown => (
            "503 Slow Down",
            "SlowDown",
            "Please reduce your request rate.",
        ),
        _ => (
            "503 Service Unavailable",
            "ServiceUnavailable",
            "Service is unable to handle request.",
        ),
    };
    let resource = target.split('?').next().unwrap_or_default();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><Resource>{resource}</Resource>\
         <RequestId>sluice-fault-proxy</RequestId></Error>"
    );
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn reset(socket: TcpStream) {
    // A zero linger makes the close send RST instead of FIN.
    let _ = socket.set_zero_linger();
    drop(socket);
}

/// The buffer a relayed body moves through: tokio's default 8 KiB made the proxy
/// spend a quarter of a second of CPU relaying a 183 MiB upload in syscalls.
const RELAY_BUFFER: usize = 256 << 10;

/// Proxies one request (one connection).
async fn proxy_one(shared: &Shared, mut client: TcpStream) -> std::io::Result<()> {
    let Some(request) = read_head(&mut client).await? else {
        return Ok(());
    };
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let arrived = std::time::Instant::now();
    let mut start = request.start.split(' ');
    let method = start.next().unwrap_or_default().to_string();
    let target = start.next().unwrap_or_default().to_string();
    let fault = shared.rules.lock().unwrap_or_else(|e| e.into_inner()).pick(
        &method,
        &target,
        &request.headers,
    );
    match fault {
        Some(f @ (ProxyFault::InternalError | ProxyFault::Unavailable | ProxyFault::SlowDown)) => {
            shared.record(&method, &target, f.kind());
            drain_body(&mut client, &request).await?;
            client.write_all(&error_answer(f, &target)).await?;
            client.shutdown().await?;
            return Ok(());
        }
        Some(ProxyFault::Reset) => {
            shared.record(&method, &target, FaultKind::Reset);
            reset(client);
            return Ok(());
        }
        Some(ProxyFault::Latency(delay)) => {
            shared.record(&method, &target, FaultKind::Latency);
            tokio::time::sleep(delay).await;
        }
        _ => {}
    }

    let mut upstream = TcpStream::connect(shared.upstream).await?;
    let (mut up_read, mut up_write) = upstream.split();
    up_write.write_all(&request.encode(None)).await?;
    up_write.write_all(&request.rest).await?;
    // The rest of the request body, however long, flows while the answer is awaited.
    let answer = {
        let (mut client_read, _) = client.split();
        let mut client_read = BufReader::with_capacity(RELAY_BUFFER, &mut client_read);
        let body = tokio::io::copy_buf(&mut client_read, &mut up_write);
        let head = read_head(&mut up_read);
        tokio::pin!(body, head);
        let mut body_done = false;
        loop {
            tokio::select! {
                answer = &mut head => break answer,
                _ = &mut body, if !body_done => body_done = true,
            }
        }
    };
    let Some(answer) = answer? else {
        return Ok(());
    };

    let truncate = match fault {
        Some(ProxyFault::ResetAfterUpstream) => {
            shared.record(&method, &target, FaultKind::ResetAfterUpstream);
            reset(client);
            return Ok(());
        }
        Some(f @ (ProxyFault::ShortBody | ProxyFault::TruncatedRange)) => {
            match answer
                .content_length()
                .filter(|&n| n > 1 && method != "HEAD")
            {
                Some(length) => {
                    shared.record(&method, &target, f.kind());
                    Some((length / 2, f == ProxyFault::TruncatedRange))
                }
                // Nothing to cut short: relayed as it is, and not counted.
                None => None,
            }
        }
        _ => None,
    };
    let (_, mut client_write) = client.split();
    let relayed = match truncate {
        None => {
            client_write.write_all(&answer.encode(None)).await?;
            client_write.write_all(&answer.rest).await?;
            let mut up_read = BufReader::with_capacity(RELAY_BUFFER, &mut up_read);
            let copied = tokio::io::copy_buf(&mut up_read, &mut client_write).await;
            answer.rest.len() as u64 + copied.unwrap_or(0)
        }
        Some((keep, relabel)) => {
            client_write
                .write_all(&answer.encode(relabel.then_some(keep)))
                .await?;
            let mut left = keep;
            let first = answer.rest.len().min(left as usize);
            client_write.write_all(&answer.rest[..first]).await?;
            left -= first as u64;
            let copied = tokio::io::copy(&mut (&mut up_read).take(left), &mut client_write).await;
            first as u64 + copied.unwrap_or(0)
        }
    };
    shared.body_bytes.fetch_add(relayed, Ordering::SeqCst);
    tracing::debug!(
        method,
        target,
        bytes = relayed,
        ms = arrived.elapsed().as_millis() as u64,
        "relayed an answer"
    );
    client_write.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_pick_by_position_and_rates_are_seeded() {
        let mut rules = Rules {
            rules: vec![(
                FaultRule::new(ProxyFault::Reset)
                    .method("PUT")
                    .target_contains("partNumber=")
                    .nth(2),
                0,
            )],
            rng: SplitMix64(1),
        };
        let picks: Vec<_> = (0..4)
            .map(|_| rules.pick("PUT", "/b/k?partNumber=1&uploadId=x", &[]))
            .collect();
        assert_eq!(picks, [None, Some(ProxyFault::Reset), None, None]);
        assert_eq!(rules.pick("GET", "/b/k?partNumber=1", &[]), None);

        let mut copies = Rules {
            rules: vec![(
                FaultRule::new(ProxyFault::InternalError).header("x-amz-copy-source"),
                0,
            )],
            rng: SplitMix64(1),
        };
        let copy = [("X-Amz-Copy-Source".to_string(), "/b/src".to_string())];
        assert_eq!(copies.pick("PUT", "/b/k?partNumber=1", &[]), None);
        assert_eq!(
            copies.pick("PUT", "/b/k?partNumber=1", &copy),
            Some(ProxyFault::InternalError)
        );

        let draw = |seed| {
            let mut rules = Rules {
                rules: vec![(FaultRule::new(ProxyFault::SlowDown).rate(0.25), 0)],
                rng: SplitMix64(seed),
            };
            (0..1000)
                .map(|_| rules.pick("GET", "/x", &[]).is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let hits = draw(7).iter().filter(|&&hit| hit).count();
        assert!((200..300).contains(&hits), "{hits} of 1000 at 25%");
    }

    #[test]
    fn endpoints_parse_to_socket_addresses() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:9000/").unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 9000))
        );
        assert!(parse_endpoint("https://example.com").is_err());
    }
}
