//! The S3 operations behind [`S3Server`](crate::servers::S3Server): `s3s-fs` 0.14's, and
//! those the testkit answers itself where `s3s-fs` answers unlike S3 or at a cost S3
//! does not charge its clients.
//!
//! Everything stays in `s3s-fs`'s layout under its root (objects as files in bucket
//! folders, its sidecars beside them), so that every operation left to `s3s-fs` sees
//! what the testkit's own wrote.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use s3s::crypto::{Checksum as _, Md5};
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, CompleteMultipartUploadInput,
    CompleteMultipartUploadOutput, CopyObjectInput, CopyObjectOutput, CopyPartResult, CopySource,
    CreateBucketInput, CreateBucketOutput, CreateMultipartUploadInput, CreateMultipartUploadOutput,
    DeleteBucketInput, DeleteBucketOutput, DeleteObjectInput, DeleteObjectOutput,
    DeleteObjectsInput, DeleteObjectsOutput, ETag, GetBucketLocationInput, GetBucketLocationOutput,
    GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput,
    HeadObjectOutput, ListBucketsInput, ListBucketsOutput, ListMultipartUploadsInput,
    ListMultipartUploadsOutput, ListObjectsInput, ListObjectsOutput, ListObjectsV2Input,
    ListObjectsV2Output, ListPartsInput, ListPartsOutput, MultipartUpload, PutObjectInput,
    PutObjectOutput, Range, StreamingBlob, Timestamp, UploadPartCopyInput, UploadPartCopyOutput,
    UploadPartInput, UploadPartOutput,
};
use s3s::{S3, S3Error, S3Request, S3Response, S3Result, s3_error};

/// The smallest part S3 accepts but for the last.
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// An uploaded part's body is written in blocks of this size.
const PART_BLOCK: usize = 1024 * 1024;

/// `s3s-fs` with what S3 does that `s3s-fs` 0.14 does not:
/// - a suffix range longer than its object answered as S3 answers it: the whole object
///   (RFC 9110: "the entire representation is used"). `s3s-fs` checks such a range
///   right but then seeks that far back from the end, and fails with a 500: a client
///   reading a small file's footer with one suffix request (Sluice, ...) would get
///   errors and retries here that it never gets from S3;
/// - `ListMultipartUploads` (by prefix), which `s3s-fs` does not implement: the uploads
///   started and neither completed nor aborted, from the upload records `s3s-fs` keeps
///   beside the objects (one per upload, naming its bucket and key);
/// - `CompleteMultipartUpload` at the cost of joining the parts, as S3 charges it:
///   `s3s-fs` reads every part back through a 64 KiB buffer, hashes it again and writes
///   the object after the last part arrived, while the client waits (0.5–0.75 s for
///   200 MB on two cores, the CPU shared with the engine under test). Here each part's
///   MD5 is kept from its upload or copy (in a record beside the part), the parts are
///   joined by the kernel (`copy_file_range`), and the ETags the client lists are checked
///   against the parts', as S3 checks them (`s3s-fs` does not: a wrong one is
///   `InvalidPart` here). The object's ETag is S3's multipart one: the MD5
///   of the parts' MD5s, `-` the part count;
/// - the bytes of a `GetObject`, the body of an `UploadPart` and the source range of an
///   `UploadPartCopy` moved in blocks of 256 KiB and 1 MiB, one hand-off to a blocking
///   thread per block (or per copy): `s3s-fs` moves them through `tokio::fs` 4 KiB
///   (reads) or one body chunk (writes) at a time, which cost
///   the server a core while a cache hit read 190 MiB from it. The test server shares
///   this machine's two cores with the engine it serves, so its CPU is in every remote
///   figure taken here; S3's is not.
///
/// Every other operation is `s3s-fs`'s own (its `GetObject` answers the headers; the
/// body is replaced only when it is the same file's).
pub(crate) struct FsBackend {
    inner: s3s_fs::FileSystem,
    files: Files,
}

impl FsBackend {
    /// `inner` serving the directory `root`.
    pub(crate) fn new(inner: s3s_fs::FileSystem, root: &Path) -> Self {
        Self {
            inner,
            files: Files {
                root: root.to_path_buf(),
            },
        }
    }
}

/// `s3s-fs`'s files under its root, and the testkit's beside them.
#[derive(Clone)]
struct Files {
    root: PathBuf,
}

impl Files {
    /// `s3s-fs`'s file of part `part` of upload `upload_id`.
    fn part_path(&self, upload_id: &str, part: i32) -> PathBuf {
        self.root
            .join(format!(".upload_id-{upload_id}.part-{part}"))
    }

    /// The testkit's record of that part's MD5 (hex). Its name starts as `s3s-fs`'s
    /// part files do, so that `s3s-fs`'s `AbortMultipartUpload` removes it with them.
    fn part_md5_path(&self, upload_id: &str, part: i32) -> PathBuf {
        self.root
            .join(format!(".upload_id-{upload_id}.part-{part}.md5"))
    }

    /// Opens the object a `GetObject` names for reading its range; `None` where
    /// `s3s-fs` is to answer (no such object, a range it refuses, a name it refuses).
    async fn open_range(&self, input: &GetObjectInput) -> Option<OpenRange> {
        let path = object_path(&self.root, &input.bucket, &input.key).ok()?;
        let range = input.range;
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(path).ok()?;
            let meta = file.metadata().ok()?;
            let range = match range {
                Some(range) => range.check(meta.len()).ok()?,
                None => 0..meta.len(),
            };
            Some(OpenRange {
                file,
                range,
                modified: meta.modified().ok()?,
            })
        })
        .await
        .ok()
        .flatten()
    }
}

/// `Ok(id)` when `id` is an upload id `s3s-fs` can have made (a UUID): the ids name
/// files under the root, so nothing else may reach a path.
fn upload_id(id: &str) -> S3Result<&str> {
    let uuid_like = id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if uuid_like {
        Ok(id)
    } else {
        Err(s3_error!(NoSuchUpload, "no upload {id:?}"))
    }
}

/// Where `s3s-fs` keeps object `key` of `bucket`; a key that would leave the bucket is
/// refused, as `s3s-fs` refuses it.
pub(crate) fn object_path(root: &Path, bucket: &str, key: &str) -> S3Result<PathBuf> {
    let escapes = |name: &str| name.is_empty() || name.split('/').any(|part| part == "..");
    if escapes(bucket) || bucket.contains('/') || escapes(key) || key.starts_with('/') {
        return Err(s3_error!(
            InvalidArgument,
            "invalid object name {bucket}/{key}"
        ));
    }
    Ok(root.join(bucket).join(key))
}

/// `s3s-fs`'s name for a sidecar of `bucket`/`key`: `.bucket-B.object-K{rest}`.
pub(crate) fn sidecar_path(root: &Path, bucket: &str, key: &str, rest: &str) -> PathBuf {
    let encode = |s: &str| base64_simd::URL_SAFE_NO_PAD.encode_to_string(s);
    root.join(format!(
        ".bucket-{}.object-{}{rest}",
        encode(bucket),
        encode(key)
    ))
}

/// `s3s-fs`'s internal info of an object (its stored ETag and checksums), where it
/// keeps it; empty when there is none (or none readable).
fn internal_info(
    root: &Path,
    bucket: &str,
    key: &str,
) -> serde_json::Map<String, serde_json::Value> {
    std::fs::read(sidecar_path(root, bucket, key, ".internal.json"))
        .ok()
        .and_then(|info| serde_json::from_slice(&info).ok())
        .unwrap_or_default()
}

/// Writes `bytes` to `to` aside (in `root`) and renames it there, so that a reader sees
/// the old file or the new, never half of one.
pub(crate) fn write_aside(root: &Path, to: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = tempfile::NamedTempFile::new_in(root)?;
    file.write_all(bytes)?;
    file.persist(to).map_err(|e| e.error)?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The MD5 of a file, hex.
fn file_md5(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut md5 = Md5::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(hex(&md5.finalize())),
            n => md5.update(&buf[..n]),
        }
    }
}

fn internal(error: std::io::Error) -> S3Error {
    S3Error::internal_error(error)
}

/// `work` on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> S3Result<T> + Send + 'static,
) -> S3Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| s3_error!(InternalError, "a blocking task failed: {e}"))?
}

/// The bytes of an object a `GetObject` asks for, read in blocks of this size: one
/// hand-off to a blocking thread per request rather than `s3s-fs`'s one per 4 KiB read
/// (1.2 s of the server's CPU for the 190 MiB a cache hit reads, a core's worth).
const GET_BLOCK: usize = 256 * 1024;

/// An object opened for a `GetObject`: the file, the byte range asked for (checked
/// as S3 checks it) and the modification time.
struct OpenRange {
    file: std::fs::File,
    range: std::ops::Range<u64>,
    modified: std::time::SystemTime,
}

impl OpenRange {
    /// The range's bytes, read on a blocking thread ahead of the client by a few blocks.
    fn into_stream(
        self,
    ) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Sync + 'static {
        let (send, receive) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt as _;
            let OpenRange { file, range, .. } = self;
            let mut at = range.start;
            while at < range.end {
                let len = usize::try_from(range.end - at).map_or(GET_BLOCK, |n| n.min(GET_BLOCK));
                let mut block = vec![0; len];
                let read = file.read_exact_at(&mut block, at).map(|()| block.into());
                let failed = read.is_err();
                // The client went away: stop reading.
                if send.blocking_send(read).is_err() || failed {
                    return;
                }
                at += len as u64;
            }
        });
        futures::stream::unfold(receive, |mut receive| async move {
            receive.recv().await.map(|block| (block, receive))
        })
    }
}

/// A part being written: a temporary file beside the parts, renamed onto the part
/// when whole, its MD5 (the part's ETag, as S3's) computed as it is written and recorded
/// beside it for the completion. Dropped unfinished, it leaves nothing.
struct NewPart {
    files: Files,
    id: String,
    part: i32,
    file: tempfile::NamedTempFile,
    md5: Md5,
}

impl NewPart {
    /// Part `part` of upload `id`, once checked that `access_key` may add to it.
    fn start(files: Files, id: &str, part: i32, access_key: Option<&str>) -> S3Result<Self> {
        if !(1..=10_000).contains(&part) {
            return Err(s3_error!(
                InvalidArgument,
                "part number must be an integer between 1 and 10000, inclusive"
            ));
        }
        let id = upload_id(id)?.to_owned();
        files.upload_record(&id, access_key)?;
        let file = tempfile::NamedTempFile::new_in(&files.root).map_err(internal)?;
        Ok(Self {
            files,
            id,
            part,
            file,
            md5: Md5::new(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> S3Result<()> {
        self.md5.update(bytes);
        self.file.write_all(bytes).map_err(internal)
    }

    /// The part in place; its ETag.
    fn finish(self) -> S3Result<String> {
        let md5 = hex(&self.md5.finalize());
        self.file
            .persist(self.files.part_path(&self.id, self.part))
            .map_err(|e| internal(e.error))?;
        // A record that fails to be written costs a hash at completion, nothing else.
        if let Err(error) = std::fs::write(self.files.part_md5_path(&self.id, self.part), &md5) {
            tracing::warn!(%error, upload = self.id, part = self.part, "could not record a part's MD5");
        }
        Ok(md5)
    }
}

/// The bytes an `x-amz-copy-source-range` (`bytes=FIRST-LAST`) names in an object of
/// `size` bytes, refused as S3 refuses them.
fn copy_range(range: &str, size: u64) -> S3Result<std::ops::Range<u64>> {
    let invalid = || s3_error!(InvalidArgument, "invalid copy source range {range:?}");
    let (first, last) = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(invalid)?;
    let first: u64 = first.parse().map_err(|_| invalid())?;
    let last: u64 = match last {
        "" => size.saturating_sub(1),
        last => last.parse().map_err(|_| invalid())?,
    };
    if first > last || last >= size {
        return Err(s3_error!(
            InvalidRange,
            "{range} is not within the {size}-byte source"
        ));
    }
    Ok(first..last + 1)
}

/// One listed part, checked: its file, and its MD5.
struct CheckedPart {
    path: PathBuf,
    md5: [u8; 16],
}

impl Files {
    /// Checks the parts a `CompleteMultipartUpload` lists, as S3 does: in ascending order
    /// of part number, each uploaded, each ETag the part's, each but the last ≥ 5 MiB.
    fn check_parts(
        &self,
        upload_id: &str,
        listed: &[s3s::dto::CompletedPart],
    ) -> S3Result<Vec<CheckedPart>> {
        let mut checked = Vec::with_capacity(listed.len());
        let mut previous = 0;
        for (index, part) in listed.iter().enumerate() {
            let number = part
                .part_number
                .ok_or_else(|| s3_error!(InvalidPart, "a part without its number"))?;
            if number <= previous {
                return Err(s3_error!(
                    InvalidPartOrder,
                    "part {number} listed after part {previous}"
                ));
            }
            previous = number;
            let path = self.part_path(upload_id, number);
            let size = std::fs::metadata(&path)
                .map_err(|_| s3_error!(InvalidPart, "part {number} was not uploaded"))?
                .len();
            if index + 1 < listed.len() && size < MIN_PART_SIZE {
                return Err(s3_error!(
                    EntityTooSmall,
                    "part {number} is {size} bytes, under the 5 MiB of all but the last"
                ));
            }
            let listed_md5 = part.e_tag.as_ref().map(ETag::value).unwrap_or_default();
            let recorded = std::fs::read_to_string(self.part_md5_path(upload_id, number)).ok();
            // A missing or stale record (a part uploaded again) costs a hash of the part.
            let md5 = match recorded {
                Some(recorded) if recorded == listed_md5 => recorded,
                _ => file_md5(&path).map_err(internal)?,
            };
            if md5 != listed_md5 {
                return Err(s3_error!(
                    InvalidPart,
                    "the ETag listed for part {number} is not the part's"
                ));
            }
            let mut bytes = [0; 16];
            for (byte, pair) in bytes.iter_mut().zip(md5.as_bytes().chunks(2)) {
                let pair = std::str::from_utf8(pair).unwrap_or("");
                *byte = u8::from_str_radix(pair, 16)
                    .map_err(|_| s3_error!(InvalidPart, "part {number}'s ETag is not an MD5"))?;
            }
            checked.push(CheckedPart { path, md5: bytes });
        }
        Ok(checked)
    }

    /// The record `s3s-fs` keeps of open upload `id` (naming the access key that
    /// started it), once checked that `access_key` may add to it.
    fn upload_record(&self, id: &str, access_key: Option<&str>) -> S3Result<PathBuf> {
        let record = self.root.join(format!(".upload-{id}.json"));
        let owner: Option<String> = match std::fs::read(&record) {
            Ok(owner) => serde_json::from_slice(&owner)
                .map_err(|_| s3_error!(InternalError, "upload record {id} is unreadable"))?,
            Err(_) => return Err(s3_error!(NoSuchUpload, "no upload {id}")),
        };
        if owner.as_deref() != access_key {
            return Err(s3_error!(AccessDenied));
        }
        Ok(record)
    }

    /// `UploadPart`: the body written in blocks of [`PART_BLOCK`] (see [`NewPart`]).
    /// `s3s-fs` writes each chunk of the body as it comes (tens of KiB) through
    /// `tokio::fs`, one hand-off to a blocking thread per chunk.
    async fn upload_part(
        &self,
        input: UploadPartInput,
        access_key: Option<String>,
    ) -> S3Result<String> {
        use futures::StreamExt as _;
        let files = self.clone();
        let (id, part) = (input.upload_id.clone(), input.part_number);
        let mut new =
            blocking(move || NewPart::start(files, &id, part, access_key.as_deref())).await?;
        let mut body = input.body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let mut block = Vec::with_capacity(PART_BLOCK);
        while let Some(chunk) = body
            .next()
            .await
            .transpose()
            .map_err(|e| s3_error!(IncompleteBody, "the part's body ended early: {e}"))?
        {
            block.extend_from_slice(&chunk);
            if block.len() >= PART_BLOCK {
                let full = std::mem::replace(&mut block, Vec::with_capacity(PART_BLOCK));
                new = blocking(move || new.write(&full).map(|()| new)).await?;
            }
        }
        blocking(move || {
            new.write(&block)?;
            new.finish()
        })
        .await
    }

    /// `UploadPartCopy` (a range of an object of this server), read and written in
    /// blocks of [`PART_BLOCK`]: `s3s-fs` reads the source 4 KiB at a time.
    fn upload_part_copy(
        &self,
        input: &UploadPartCopyInput,
        access_key: Option<&str>,
    ) -> S3Result<String> {
        use std::io::{Read as _, Seek as _};
        let mut new = NewPart::start(
            self.clone(),
            &input.upload_id,
            input.part_number,
            access_key,
        )?;
        let CopySource::Bucket { bucket, key, .. } = &input.copy_source else {
            return Err(s3_error!(NotImplemented, "copies from access points"));
        };
        let mut source = std::fs::File::open(object_path(&self.root, bucket, key)?)
            .map_err(|e| s3_error!(e, NoSuchKey))?;
        let size = source.metadata().map_err(internal)?.len();
        let range = match &input.copy_source_range {
            None => 0..size,
            Some(range) => copy_range(range, size)?,
        };
        source
            .seek(std::io::SeekFrom::Start(range.start))
            .map_err(internal)?;
        let mut source = source.take(range.end - range.start);
        let mut block = vec![0; PART_BLOCK];
        loop {
            match source.read(&mut block).map_err(internal)? {
                0 => break,
                n => new.write(&block[..n])?,
            }
        }
        new.finish()
    }

    /// `CompleteMultipartUpload`: see [`FsBackend`].
    fn complete(
        &self,
        input: &CompleteMultipartUploadInput,
        access_key: Option<&str>,
    ) -> S3Result<String> {
        let id = upload_id(&input.upload_id)?;
        let record = self.upload_record(id, access_key)?;
        let (bucket, key) = (input.bucket.as_str(), input.key.as_str());
        let object = object_path(&self.root, bucket, key)?;
        if input.if_none_match.as_ref().is_some_and(|c| c.is_any()) && object.exists() {
            return Err(s3_error!(PreconditionFailed, "object already exists"));
        }
        if let Some(condition) = &input.if_match {
            let current = object
                .exists()
                .then(|| {
                    let info = internal_info(&self.root, bucket, key);
                    match info.get("e_tag").and_then(|e| e.as_str()) {
                        Some(e_tag) => Ok(e_tag.to_owned()),
                        None => file_md5(&object).map_err(internal),
                    }
                })
                .transpose()?;
            let matches = match current {
                None => false,
                Some(_) if condition.is_any() => true,
                Some(current) => condition
                    .as_etag()
                    .is_some_and(|wanted| wanted.strong_cmp(&ETag::Strong(current))),
            };
            if !matches {
                return Err(s3_error!(PreconditionFailed, "ETag does not match"));
            }
        }
        let listed = input
            .multipart_upload
            .as_ref()
            .and_then(|upload| upload.parts.as_deref())
            .unwrap_or_default();
        if listed.is_empty() {
            return Err(s3_error!(InvalidPart, "you must specify at least one part"));
        }
        let parts = self.check_parts(id, listed)?;

        // Joined aside by the kernel and renamed: a reader sees the old object or the new.
        let mut joined = tempfile::NamedTempFile::new_in(&self.root).map_err(internal)?;
        for part in &parts {
            let mut from = std::fs::File::open(&part.path).map_err(internal)?;
            std::io::copy(&mut from, joined.as_file_mut()).map_err(internal)?;
        }
        if let Some(dir) = object.parent() {
            std::fs::create_dir_all(dir).map_err(internal)?;
        }
        joined.persist(&object).map_err(|e| internal(e.error))?;

        let mut md5 = Md5::new();
        for part in &parts {
            md5.update(&part.md5);
        }
        let e_tag = format!("{}-{}", hex(&md5.finalize()), parts.len());
        let mut info = internal_info(&self.root, bucket, key);
        info.insert("e_tag".into(), e_tag.clone().into());
        write_aside(
            &self.root,
            &sidecar_path(&self.root, bucket, key, ".internal.json"),
            &serde_json::to_vec(&info).unwrap_or_default(),
        )
        .map_err(internal)?;

        // The attributes given when the upload started become the object's.
        let attributes = sidecar_path(
            &self.root,
            bucket,
            key,
            &format!(".upload-{id}.metadata.json"),
        );
        if attributes.exists() {
            std::fs::rename(
                &attributes,
                sidecar_path(&self.root, bucket, key, ".metadata.json"),
            )
            .map_err(internal)?;
        }
        for part in listed.iter().filter_map(|part| part.part_number) {
            let _ = std::fs::remove_file(self.part_path(id, part));
            let _ = std::fs::remove_file(self.part_md5_path(id, part));
        }
        std::fs::remove_file(&record).map_err(internal)?;
        Ok(e_tag)
    }
}

/// The S3 operations of [`FsBackend`]: those above its own, the others `s3s-fs`'s.
macro_rules! fs_backend {
    ($($op:ident: $input:ident => $output:ident),* $(,)?) => {
        #[async_trait::async_trait]
        impl S3 for FsBackend {
            async fn get_object(
                &self,
                mut req: S3Request<GetObjectInput>,
            ) -> S3Result<S3Response<GetObjectOutput>> {
                if let Some(Range::Suffix { length }) = req.input.range {
                    if let Ok(path) = object_path(&self.files.root, &req.input.bucket, &req.input.key)
                        && let Ok(meta) = tokio::fs::metadata(&path).await
                        && length > meta.len()
                    {
                        req.input.range = Some(Range::Int {
                            first: 0,
                            last: None,
                        });
                    }
                }
                let ours = self.files.open_range(&req.input).await;
                let mut answer = self.inner.get_object(req).await?;
                let output = &mut answer.output;
                // Only if `s3s-fs` answered for the file this one opened (not one
                // replaced in between): the same length and modification time.
                if let Some(ours) = ours
                    && output.content_length == i64::try_from(ours.range.end - ours.range.start).ok()
                    && output.last_modified == Some(Timestamp::from(ours.modified))
                {
                    output.body = Some(StreamingBlob::wrap(ours.into_stream()));
                }
                Ok(answer)
            }

            async fn list_multipart_uploads(
                &self,
                req: S3Request<ListMultipartUploadsInput>,
            ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
                let input = req.input;
                let uploads = pending_uploads(&self.files.root, &input.bucket)
                    .into_iter()
                    .filter(|(key, _)| {
                        input.prefix.as_ref().is_none_or(|p| key.starts_with(p.as_str()))
                    })
                    .map(|(key, id)| MultipartUpload {
                        key: Some(key),
                        upload_id: Some(id),
                        ..Default::default()
                    })
                    .collect();
                Ok(S3Response::new(ListMultipartUploadsOutput {
                    bucket: Some(input.bucket),
                    prefix: input.prefix,
                    is_truncated: Some(false),
                    uploads: Some(uploads),
                    ..Default::default()
                }))
            }

            async fn upload_part(
                &self,
                req: S3Request<UploadPartInput>,
            ) -> S3Result<S3Response<UploadPartOutput>> {
                let access_key = req.credentials.map(|c| c.access_key);
                let e_tag = self.files.upload_part(req.input, access_key).await?;
                Ok(S3Response::new(UploadPartOutput {
                    e_tag: Some(ETag::Strong(e_tag)),
                    ..Default::default()
                }))
            }

            async fn upload_part_copy(
                &self,
                req: S3Request<UploadPartCopyInput>,
            ) -> S3Result<S3Response<UploadPartCopyOutput>> {
                let access_key = req.credentials.map(|c| c.access_key);
                let input = req.input;
                let files = self.files.clone();
                let e_tag =
                    blocking(move || files.upload_part_copy(&input, access_key.as_deref()))
                        .await?;
                Ok(S3Response::new(UploadPartCopyOutput {
                    copy_part_result: Some(CopyPartResult {
                        e_tag: Some(ETag::Strong(e_tag)),
                        ..Default::default()
                    }),
                    ..Default::default()
                }))
            }

            async fn complete_multipart_upload(
                &self,
                req: S3Request<CompleteMultipartUploadInput>,
            ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
                let access_key = req.credentials.map(|c| c.access_key);
                let input = req.input;
                let files = self.files.clone();
                let (input, e_tag) = blocking(move || {
                    let e_tag = files.complete(&input, access_key.as_deref())?;
                    Ok((input, e_tag))
                })
                .await?;
                Ok(S3Response::new(CompleteMultipartUploadOutput {
                    bucket: Some(input.bucket),
                    key: Some(input.key),
                    e_tag: Some(ETag::Strong(e_tag)),
                    ..Default::default()
                }))
            }

            $(
                async fn $op(
                    &self,
                    req: S3Request<$input>,
                ) -> S3Result<S3Response<$output>> {
                    self.inner.$op(req).await
                }
            )*
        }
    };
}

fs_backend! {
    create_bucket: CreateBucketInput => CreateBucketOutput,
    copy_object: CopyObjectInput => CopyObjectOutput,
    delete_bucket: DeleteBucketInput => DeleteBucketOutput,
    delete_object: DeleteObjectInput => DeleteObjectOutput,
    delete_objects: DeleteObjectsInput => DeleteObjectsOutput,
    get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput,
    head_bucket: HeadBucketInput => HeadBucketOutput,
    head_object: HeadObjectInput => HeadObjectOutput,
    list_buckets: ListBucketsInput => ListBucketsOutput,
    list_objects: ListObjectsInput => ListObjectsOutput,
    list_objects_v2: ListObjectsV2Input => ListObjectsV2Output,
    put_object: PutObjectInput => PutObjectOutput,
    create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput,
    list_parts: ListPartsInput => ListPartsOutput,
    abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput,
}

/// The pending multipart uploads of `bucket` under `s3s-fs`'s `root`: (key, upload id)
/// from its upload records (`.bucket-B.object-K.upload-ID.metadata.json`, bucket and
/// key base64url), those whose upload is still open (`.upload-ID.json`), by key.
pub(crate) fn pending_uploads(root: &Path, bucket: &str) -> Vec<(String, String)> {
    use base64_simd::URL_SAFE_NO_PAD as B64;
    let bucket = format!(".bucket-{}.object-", B64.encode_to_string(bucket));
    let mut uploads: Vec<(String, String)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix(&bucket)?.strip_suffix(".metadata.json")?;
            let (key, id) = rest.split_once(".upload-")?;
            let key = String::from_utf8(B64.decode_to_vec(key).ok()?).ok()?;
            root.join(format!(".upload-{id}.json"))
                .exists()
                .then(|| (key, id.to_string()))
        })
        .collect();
    uploads.sort();
    uploads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_ranges_are_read_as_s3_reads_them() {
        assert_eq!(copy_range("bytes=0-9", 100).unwrap(), 0..10);
        assert_eq!(copy_range("bytes=90-99", 100).unwrap(), 90..100);
        assert_eq!(copy_range("bytes=90-", 100).unwrap(), 90..100);
        // Past the end, backwards, or not a byte range: refused, never clamped.
        for refused in [
            "bytes=90-100",
            "bytes=10-9",
            "bytes=100-",
            "0-9",
            "bytes=a-9",
            "bytes=5",
        ] {
            assert!(copy_range(refused, 100).is_err(), "{refused}");
        }
    }
}
