//! `sluice ui`: a web view of flow runs and checkpoints, read from the same stores the
//! CLI reads (`sluice runs`, `sluice cache`), with no database and no build step: pages
//! are rendered on the server as HTML, with one small embedded script (table sorting, a
//! running run's updates) and one stylesheet.
//!
//! ```text
//! /                            → /runs
//! /runs?flow=&state=&since=&after=     runs, newest first, a page at a time
//! /runs/ID[?timeline=1]        one run: header, counts by state, task table, timeline, errors
//! /runs/ID/logs?task=N&page=P  its log lines, paged;  /runs/ID/logs.txt  all of them
//! /runs/ID/trace.json          the run as a Chrome trace (Perfetto)
//! /checkpoints[?task=]         checkpoints: rows, size, created, expires, last hit
//! /checkpoints/TASK/KEY        one checkpoint: its key's inputs and its plan
//! ```
//!
//! Safe by default: every string from a record or a manifest is HTML-escaped; requests
//! whose `Host` is not the bound address are refused (DNS rebinding); a bind address other
//! than loopback is refused unless [`UiOptions::allow_remote`] is set; the view is
//! read-only.
//!
//! ```no_run
//! # async fn example() -> Result<(), sluice_ui::UiError> {
//! let options = sluice_ui::UiOptions::new(".sluice/", ".sluice/");
//! let server = sluice_ui::UiServer::start(sluice_core::Session::new(), options).await?;
//! println!("http://{}/", server.addr());
//! server.wait().await;
//! # Ok(())
//! # }
//! ```

mod html;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_DISPOSITION, CONTENT_TYPE, HOST, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use sluice_core::{CheckpointStore, RunStore, Session};

/// What can stop the view from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UiError {
    /// The bind address is not loopback and remote access was not allowed.
    #[error(
        "refusing to serve on {addr}: the view has no authentication, so it listens on \
         loopback (127.0.0.1, ::1) only; pass --allow-remote to serve {addr} anyway"
    )]
    NotLoopback {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The address cannot be bound.
    #[error("cannot listen at {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A store cannot be opened.
    #[error("cannot open the {what} {location}: {source}")]
    Store {
        /// `run store` or `result store`.
        what: &'static str,
        /// The location, without credentials.
        location: String,
        /// Why.
        #[source]
        source: sluice_core::Error,
    },
}

/// Where the view reads from and where it listens.
///
/// ```
/// let options = sluice_ui::UiOptions::new(".sluice/", "s3://bucket/sluice/")
///     .with_bind("127.0.0.1:4000".parse().unwrap());
/// assert_eq!(options.bind.port(), 4000);
/// ```
#[derive(Debug, Clone)]
pub struct UiOptions {
    /// The run store (a path or store URL).
    pub runs: String,
    /// The result store, whose checkpoints are listed.
    pub cache: String,
    /// The address to listen at (`127.0.0.1:4040` by default; port 0 picks one).
    pub bind: SocketAddr,
    /// Whether an address other than loopback may be bound.
    pub allow_remote: bool,
    /// Runs per page of the run list.
    pub page_size: usize,
}

impl UiOptions {
    /// The view of these stores on `127.0.0.1:4040`.
    pub fn new(runs: impl Into<String>, cache: impl Into<String>) -> Self {
        Self {
            runs: runs.into(),
            cache: cache.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 4040)),
            allow_remote: false,
            page_size: 50,
        }
    }

    /// Listens at `bind`.
    pub fn with_bind(mut self, bind: SocketAddr) -> Self {
        self.bind = bind;
        self
    }

    /// Allows an address other than loopback.
    pub fn with_allow_remote(mut self, allow: bool) -> Self {
        self.allow_remote = allow;
        self
    }

    /// Runs per page.
    pub fn with_page_size(mut self, runs: usize) -> Self {
        self.page_size = runs.max(1);
        self
    }
}

/// What the pages read.
pub(crate) struct Ui {
    pub(crate) runs: RunStore,
    pub(crate) cache: CheckpointStore,
    pub(crate) page_size: usize,
    /// `Host` values a request may carry.
    hosts: Vec<String>,
}

/// A running view; dropping it stops the server.
#[derive(Debug)]
pub struct UiServer {
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for UiServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl UiServer {
    /// Opens the stores and starts serving.
    pub async fn start(session: Session, options: UiOptions) -> Result<Self, UiError> {
        if !options.bind.ip().is_loopback() && !options.allow_remote {
            return Err(UiError::NotLoopback { addr: options.bind });
        }
        let runs = RunStore::open(&session, &options.runs).map_err(|source| UiError::Store {
            what: "run store",
            location: sluice_store::redact_location(&options.runs),
            source,
        })?;
        let cache =
            CheckpointStore::open(&session, &options.cache).map_err(|source| UiError::Store {
                what: "result store",
                location: sluice_store::redact_location(&options.cache),
                source,
            })?;
        let listener = tokio::net::TcpListener::bind(options.bind)
            .await
            .map_err(|source| UiError::Bind {
                addr: options.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| UiError::Bind {
            addr: options.bind,
            source,
        })?;
        let port = addr.port();
        let mut hosts = vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
            addr.to_string(),
        ];
        hosts.dedup();
        let ui = Arc::new(Ui {
            runs,
            cache,
            page_size: options.page_size,
            hosts,
        });
        let accept = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let ui = Arc::clone(&ui);
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let ui = Arc::clone(&ui);
                    async move { Ok::<_, std::convert::Infallible>(ui.answer(request).await) }
                });
                tokio::spawn(async move {
                    let _ = ConnBuilder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        tracing::info!(%addr, "sluice ui listening");
        Ok(Self { addr, accept })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the task is aborted (the process is interrupted).
    pub async fn wait(mut self) {
        let _ = (&mut self.accept).await;
    }
}

/// A response: status, content type, body, and headers.
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) content_type: &'static str,
    pub(crate) body: Bytes,
    pub(crate) headers: Vec<(hyper::header::HeaderName, String)>,
}

impl Page {
    pub(crate) fn html(body: String) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "text/html; charset=utf-8",
            body: Bytes::from(body),
            headers: Vec::new(),
        }
    }

    pub(crate) fn text(status: StatusCode, content_type: &'static str, body: String) -> Self {
        Self {
            status,
            content_type,
            body: Bytes::from(body),
            headers: Vec::new(),
        }
    }

    pub(crate) fn download(mut self, name: &str) -> Self {
        self.headers.push((
            CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ));
        self
    }

    fn redirect(to: &str) -> Self {
        let mut page = Self::text(
            StatusCode::FOUND,
            "text/plain; charset=utf-8",
            String::new(),
        );
        page.headers.push((LOCATION, to.to_string()));
        page
    }
}

impl Ui {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let page = self.route(&request).await;
        let mut response = Response::new(Full::new(page.body));
        *response.status_mut() = page.status;
        let headers = response.headers_mut();
        if let Ok(value) = page.content_type.parse() {
            headers.insert(CONTENT_TYPE, value);
        }
        for (name, value) in page.headers {
            if let Ok(value) = value.parse() {
                headers.insert(name, value);
            }
        }
        // No page may be framed, sniffed or load anything from elsewhere.
        for (name, value) in [
            ("x-frame-options", "DENY"),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            (
                "content-security-policy",
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
            ),
        ] {
            if let (Ok(name), Ok(value)) = (
                hyper::header::HeaderName::from_bytes(name.as_bytes()),
                value.parse(),
            ) {
                headers.insert(name, value);
            }
        }
        response
    }

    async fn route(&self, request: &Request<Incoming>) -> Page {
        let host = request
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !self.hosts.iter().any(|allowed| allowed == host) {
            tracing::warn!(host, "refused a request for another host");
            return Page::text(
                StatusCode::FORBIDDEN,
                "text/plain; charset=utf-8",
                format!(
                    "this view answers requests for {} only",
                    self.hosts.join(", ")
                ),
            );
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Page::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "the view is read-only".into(),
            );
        }
        let query = pages::Query::parse(request.uri().query().unwrap_or_default());
        match Route::of(request.uri().path()) {
            Route::Home => Page::redirect("/runs"),
            Route::Css => Page::text(
                StatusCode::OK,
                "text/css; charset=utf-8",
                include_str!("../assets/app.css").into(),
            ),
            Route::Js => Page::text(
                StatusCode::OK,
                "text/javascript; charset=utf-8",
                include_str!("../assets/app.js").into(),
            ),
            Route::Runs => pages::runs(self, &query).await,
            Route::Run(id) => pages::run(self, &id, &query).await,
            Route::Logs(id) => pages::logs(self, &id, &query).await,
            Route::LogsText(id) => pages::logs_text(self, &id).await,
            Route::Trace(id) => pages::trace(self, &id).await,
            Route::Checkpoints => pages::checkpoints(self, &query).await,
            Route::Checkpoint(task, key) => pages::checkpoint(self, &task, &key).await,
            Route::NotFound(path) => pages::not_found(&path),
        }
    }
}

/// What a path asks for.
enum Route {
    Home,
    Css,
    Js,
    Runs,
    Run(String),
    Logs(String),
    LogsText(String),
    Trace(String),
    Checkpoints,
    Checkpoint(String, String),
    NotFound(String),
}

impl Route {
    fn of(path: &str) -> Self {
        let segments: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(pages::decode)
            .collect();
        let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
        match parts.as_slice() {
            [] => Self::Home,
            ["assets", "app.css"] => Self::Css,
            ["assets", "app.js"] => Self::Js,
            ["runs"] => Self::Runs,
            ["runs", id] => Self::Run(id.to_string()),
            ["runs", id, "logs"] => Self::Logs(id.to_string()),
            ["runs", id, "logs.txt"] => Self::LogsText(id.to_string()),
            ["runs", id, "trace.json"] => Self::Trace(id.to_string()),
            ["checkpoints"] => Self::Checkpoints,
            ["checkpoints", task, key] => Self::Checkpoint(task.to_string(), key.to_string()),
            _ => Self::NotFound(path.to_string()),
        }
    }
}
