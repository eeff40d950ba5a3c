//! The S3 requests object_store 0.13 lacks, signed here with its
//! [`AwsAuthorizer`](object_store::aws::AwsAuthorizer) and sent with its HTTP client: a
//! ranged `UploadPartCopy` (for [`compose`](crate::compose)) and `ListMultipartUploads`
//! (for [`abort_pending_uploads`]). The rest goes through its `MultipartStore`.

use std::ops::Range;
use std::sync::{Arc, Mutex, Weak};

use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload, UploadPart};
use percent_encoding::utf8_percent_encode;

use crate::StoreError;
use crate::compose::{ComposeOptions, Composed, MIN_PART_BYTES, Part, Piece, plan};

/// S3's most parts per upload.
const MAX_PARTS: u64 = 10_000;

/// What a store built by [`StoreBuilder`](crate::StoreBuilder) for S3 needs for the
/// requests object_store lacks: the bucket's client, its address and signing scope.
#[derive(Debug)]
pub(crate) struct S3Requests {
    s3: Arc<object_store::aws::AmazonS3>,
    client: object_store::client::HttpClient,
    bucket: String,
    /// `https://s3.region.amazonaws.com/bucket`, or the configured endpoint's.
    bucket_endpoint: String,
    region: String,
    /// The store's prefix inside the bucket, if any.
    prefix: Option<Path>,
    retries: usize,
}

/// The S3 stores the builder built, by address, with their requests: `ObjectStore` has
/// no way to ask a store what it is, and a store is shared as `Arc<dyn ObjectStore>`.
type Known = Vec<(usize, Weak<dyn ObjectStore>, Arc<S3Requests>)>;
static KNOWN: Mutex<Known> = Mutex::new(Vec::new());

fn address(store: &Arc<dyn ObjectStore>) -> usize {
    Arc::as_ptr(store) as *const () as usize
}

impl S3Requests {
    /// Builds it for the S3 store being built from `builder`; `None` where the upload
    /// would need more than this sends (customer-provided encryption keys, which every
    /// copy must repeat; part checksums).
    pub(crate) fn new(
        builder: &object_store::aws::AmazonS3Builder,
        s3: Arc<object_store::aws::AmazonS3>,
        prefix: Option<Path>,
        retries: usize,
    ) -> object_store::Result<Option<Self>> {
        use object_store::ClientConfigKey as C;
        use object_store::aws::AmazonS3ConfigKey as K;
        use object_store::client::HttpConnector;
        let value = |key: K| builder.get_config_value(&key);
        // (The encryption keys' enum is not exported: named by their string.)
        let encryption = "aws_server_side_encryption"
            .parse::<K>()
            .ok()
            .and_then(|key| builder.get_config_value(&key));
        if value(K::Checksum).is_some()
            || encryption.is_some_and(|v| v.eq_ignore_ascii_case("sse-c"))
        {
            return Ok(None);
        }
        let bucket = value(K::Bucket).unwrap_or_default();
        let region = value(K::Region).unwrap_or_else(|| "us-east-1".into());
        let virtual_hosted = value(K::VirtualHostedStyleRequest)
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
        let bucket_endpoint = match (value(K::Endpoint), virtual_hosted) {
            (Some(endpoint), true) => endpoint,
            (Some(endpoint), false) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        // The store's own client settings (plain HTTP, timeouts, proxy).
        let mut options = object_store::ClientOptions::new();
        for key in [
            C::AllowHttp,
            C::AllowInvalidCertificates,
            C::ConnectTimeout,
            C::Timeout,
            C::ProxyUrl,
            C::ProxyCaCertificate,
            C::ProxyExcludes,
        ] {
            if let Some(value) = builder.get_config_value(&K::Client(key)) {
                options = options.with_config(key, value);
            }
        }
        let client = object_store::client::ReqwestConnector::default().connect(&options)?;
        Ok(Some(S3Requests {
            s3,
            client,
            bucket,
            bucket_endpoint,
            region,
            prefix,
            retries,
        }))
    }

    /// Remembers that `store` (as built, the outermost wrapper) composes with `copy`.
    pub(crate) fn register(store: &Arc<dyn ObjectStore>, copy: S3Requests) {
        let mut known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|(_, weak, _)| weak.strong_count() > 0);
        known.push((address(store), Arc::downgrade(store), Arc::new(copy)));
    }

    /// The server-side copy of `store`, if it was built with one.
    pub(crate) fn of(store: &Arc<dyn ObjectStore>) -> Option<Arc<S3Requests>> {
        let known = KNOWN.lock().unwrap_or_else(|p| p.into_inner());
        known
            .iter()
            .find(|(at, weak, _)| {
                *at == address(store) && weak.upgrade().is_some_and(|s| Arc::ptr_eq(&s, store))
            })
            .map(|(_, _, copy)| Arc::clone(copy))
    }

    /// `path` in the bucket.
    fn full(&self, path: &Path) -> Path {
        match &self.prefix {
            Some(prefix) => prefix.parts().chain(path.parts()).collect(),
            None => path.clone(),
        }
    }

    /// Composes `pieces` into a new multipart upload at `dest` (relative to the store),
    /// every part acknowledged; the upload is returned uncompleted.
    pub(crate) async fn compose(
        self: &Arc<Self>,
        dest: &Path,
        pieces: Vec<Piece>,
        options: ComposeOptions,
    ) -> object_store::Result<(ComposedUpload, Composed)> {
        let size: u64 = pieces.iter().map(Piece::len).sum();
        // Within S3's 10,000 parts whatever the size.
        let copy_part = options
            .copy_part_bytes
            .max(MIN_PART_BYTES as u64)
            .max(size.div_ceil(MAX_PARTS / 2));
        let parts = plan(pieces, MIN_PART_BYTES as u64, copy_part);
        let mut composed = Composed {
            size,
            parts: parts.len(),
            ..Composed::default()
        };
        for part in &parts {
            match part {
                Part::Copy { range, .. } => composed.copied_bytes += range.end - range.start,
                Part::Send(pieces) => {
                    for piece in pieces {
                        composed.sent_bytes += piece.len();
                        if matches!(piece, Piece::Range { .. }) {
                            composed.read_bytes += piece.len();
                        }
                    }
                }
            }
        }
        let dest = self.full(dest);
        let id = self.s3.create_multipart(&dest).await?;
        let mut upload = ComposedUpload {
            copy: Arc::clone(self),
            dest,
            id,
            parts: Vec::new(),
            done: false,
        };
        let sent = futures::stream::iter(parts.into_iter().enumerate())
            .map(|(n, part)| {
                let copy = Arc::clone(self);
                let (dest, id) = (upload.dest.clone(), upload.id.clone());
                async move {
                    match part {
                        Part::Copy { path, range } => {
                            copy.copy_part(&dest, &id, n, &copy.full(&path), range)
                                .await
                        }
                        Part::Send(pieces) => {
                            let payload = copy.read(pieces).await?;
                            copy.s3.put_part(&dest, &id, n, payload).await
                        }
                    }
                }
            })
            .buffered(options.in_flight.max(1))
            .try_collect::<Vec<PartId>>()
            .await;
        match sent {
            Ok(parts) => {
                upload.parts = parts;
                Ok((upload, composed))
            }
            // Dropped: aborted.
            Err(e) => Err(e),
        }
    }

    /// The bytes of `pieces`, read from the store where they are ranges.
    async fn read(&self, pieces: Vec<Piece>) -> object_store::Result<PutPayload> {
        let mut bytes = BytesMut::new();
        for piece in pieces {
            match piece {
                Piece::Bytes(b) => bytes.extend_from_slice(&b),
                Piece::Range { path, range } => {
                    let read = self.s3.get_range(&self.full(&path), range).await?;
                    bytes.extend_from_slice(&read);
                }
            }
        }
        Ok(PutPayload::from(bytes.freeze()))
    }

    /// Part `n` (numbered `n + 1`) of upload `id` at `dest`: bytes `range` of `source`,
    /// copied by the server (`UploadPartCopy`). Both paths are the bucket's.
    async fn copy_part(
        &self,
        dest: &Path,
        id: &str,
        n: usize,
        source: &Path,
        range: Range<u64>,
    ) -> object_store::Result<PartId> {
        let url = format!(
            "{}/{}?partNumber={}&uploadId={}",
            self.bucket_endpoint,
            utf8_percent_encode(dest.as_ref(), &PATH),
            n + 1,
            utf8_percent_encode(id, &STRICT),
        );
        let copy_source = format!(
            "{}/{}",
            self.bucket,
            utf8_percent_encode(source.as_ref(), &PATH)
        );
        let copy_range = format!("bytes={}-{}", range.start, range.end.saturating_sub(1));
        let what = format!("UploadPartCopy of {source} {copy_range} into {dest}");
        let headers = [
            ("x-amz-copy-source", copy_source.as_str()),
            ("x-amz-copy-source-range", copy_range.as_str()),
        ];
        self.send(http::Method::PUT, &url, &headers, &what, |text| {
            copied_etag(text).map(|e_tag| PartId { content_id: e_tag })
        })
        .await
    }

    /// The multipart uploads open under `prefix` (a folder of the store): each one's key
    /// in the bucket and upload id (`ListMultipartUploads`, every page).
    async fn open_uploads(&self, prefix: &Path) -> object_store::Result<Vec<(Path, String)>> {
        let prefix = format!("{}/", self.full(prefix));
        let mut uploads = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut url = format!(
                "{}?uploads=&prefix={}",
                self.bucket_endpoint,
                utf8_percent_encode(&prefix, &STRICT)
            );
            if let Some((key, id)) = &markers {
                url.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    utf8_percent_encode(key, &STRICT),
                    utf8_percent_encode(id, &STRICT)
                ));
            }
            let what = format!("ListMultipartUploads under {prefix}");
            let page = self
                .send(http::Method::GET, &url, &[], &what, |text| {
                    text.contains("<ListMultipartUploadsResult")
                        .then(|| text.to_string())
                })
                .await?;
            for upload in elements(&page, "Upload") {
                if let (Some(key), Some(id)) = (element(upload, "Key"), element(upload, "UploadId"))
                {
                    uploads.push((Path::from(key), id));
                }
            }
            match (
                element(&page, "IsTruncated").as_deref(),
                element(&page, "NextKeyMarker"),
                element(&page, "NextUploadIdMarker"),
            ) {
                (Some("true"), Some(key), Some(id)) => markers = Some((key, id)),
                _ => return Ok(uploads),
            }
        }
    }

    /// Sends a signed request with an empty body to `url` (`what` names it in errors),
    /// again after transport errors, 5xx answers, and S3's `InternalError` or
    /// `SlowDown` in a 200's body (as `UploadPartCopy` may answer), up to the store's
    /// retry count. `accept` takes a successful answer's body, or `None` when it is not
    /// the answer expected.
    async fn send<T>(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        what: &str,
        accept: impl Fn(&str) -> Option<T>,
    ) -> object_store::Result<T> {
        use object_store::client::HttpRequestBody;
        let failed = |message: String| object_store::Error::Generic {
            store: "S3",
            source: format!("{what}: {message}").into(),
        };
        let mut attempt = 0;
        loop {
            let credential = self.s3.credentials().get_credential().await?;
            let mut request = http::Request::builder().method(method.clone()).uri(url);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let mut request = request
                .body(HttpRequestBody::empty())
                .map_err(|e| failed(e.to_string()))?;
            object_store::aws::AwsAuthorizer::new(&credential, "s3", &self.region)
                .authorize(&mut request, None);
            // Whether another attempt may succeed, and what went wrong.
            let (retryable, message) = match self.client.execute(request).await {
                Ok(response) => {
                    let status = response.status();
                    match response.into_body().bytes().await {
                        Ok(body) => {
                            let text = String::from_utf8_lossy(&body);
                            if status.is_success()
                                && !text.contains("<Error>")
                                && let Some(accepted) = accept(&text)
                            {
                                return Ok(accepted);
                            }
                            (
                                status.is_server_error()
                                    || text.contains("<Code>InternalError</Code>")
                                    || text.contains("<Code>SlowDown</Code>"),
                                format!("{status}: {}", text.trim()),
                            )
                        }
                        Err(e) => (true, e.to_string()),
                    }
                }
                Err(e) => (true, e.to_string()),
            };
            attempt += 1;
            if !retryable || attempt > self.retries {
                return Err(failed(message));
            }
            tracing::debug!(what, attempt, %message, "retrying an S3 request");
            tokio::time::sleep(std::time::Duration::from_millis(50 << attempt.min(6))).await;
        }
    }
}

/// [`abort_pending_uploads`](crate::abort_pending_uploads) on S3.
pub(crate) async fn abort_open_uploads(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
) -> crate::Result<usize> {
    let Some(requests) = S3Requests::of(store) else {
        return Ok(0);
    };
    let failed = |source| StoreError::ObjectStore {
        operation: "abort the uploads under",
        url: prefix.to_string(),
        source,
    };
    let uploads = requests.open_uploads(prefix).await.map_err(failed)?;
    for (key, id) in &uploads {
        tracing::info!(%key, "aborting a multipart upload left open");
        match requests.s3.abort_multipart(key, id).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(failed(e)),
        }
    }
    Ok(uploads.len())
}

/// The text of every `<name>...</name>` element of `xml`, in order.
fn elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let from = start + open.len();
        let Some(len) = rest[from..].find(&close) else {
            break;
        };
        found.push(&rest[from..from + len]);
        rest = &rest[from + len + close.len()..];
    }
    found
}

/// The first `<name>` element's text of `xml`, its entities unescaped.
fn element(xml: &str, name: &str) -> Option<String> {
    elements(xml, name).first().map(|text| {
        text.replace("&quot;", "\"")
            .replace("&#34;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    })
}

/// Characters object_store percent-encodes in a key (`/` kept) and in a query value.
const STRICT: percent_encoding::AsciiSet = percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
const PATH: percent_encoding::AsciiSet = STRICT.remove(b'/');

/// The `ETag` of a `CopyPartResult`, unescaped.
fn copied_etag(text: &str) -> Option<String> {
    element(text, "ETag")
}

/// A composed multipart upload, every part acknowledged, waiting to be completed (the
/// object appears) or aborted (nothing does). Aborted when dropped unfinished.
#[derive(Debug)]
pub(crate) struct ComposedUpload {
    copy: Arc<S3Requests>,
    dest: Path,
    id: String,
    parts: Vec<PartId>,
    done: bool,
}

#[async_trait::async_trait]
impl MultipartUpload for ComposedUpload {
    fn put_part(&mut self, _data: PutPayload) -> UploadPart {
        Box::pin(futures::future::ready(Err(
            object_store::Error::NotSupported {
                source: "a composed upload takes no more parts".into(),
            },
        )))
    }

    async fn complete(&mut self) -> object_store::Result<object_store::PutResult> {
        let parts = self.parts.clone();
        let done = self
            .copy
            .s3
            .complete_multipart(&self.dest, &self.id, parts)
            .await;
        self.done = done.is_ok();
        done
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.done = true;
        self.copy.s3.abort_multipart(&self.dest, &self.id).await
    }
}

impl Drop for ComposedUpload {
    fn drop(&mut self) {
        if !self.done {
            let (copy, dest, id) = (Arc::clone(&self.copy), self.dest.clone(), self.id.clone());
            crate::cleanup::spawn("abort a composed upload", async move {
                if let Err(error) = copy.s3.abort_multipart(&dest, &id).await {
                    tracing::warn!(%dest, %error, "could not abort a composed upload");
                }
            });
        }
    }
}

/// Turns an object_store error of composing `url` into the crate's.
pub(crate) fn error(url: &str, source: object_store::Error) -> StoreError {
    StoreError::ObjectStore {
        operation: "compose",
        url: url.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_is_read_from_a_copy_result() {
        let body = "<?xml version=\"1.0\"?><CopyPartResult><LastModified>x</LastModified>\
                    <ETag>&quot;abc&quot;</ETag></CopyPartResult>";
        assert_eq!(copied_etag(body).as_deref(), Some("\"abc\""));
        assert_eq!(copied_etag("<Error><Code>NoSuchKey</Code></Error>"), None);
    }
}
