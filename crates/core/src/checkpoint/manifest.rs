//! The checkpoint manifest: what a checkpoint holds, committed after its data.

use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::CacheKeyInputs;
use crate::names::validate_name;
use crate::{Error, Result};

/// The manifest format this build writes and reads. A manifest of another format is a
/// cache miss (with a warning), never an error: a newer one is left in place for the
/// build that wrote it, an older one (format 1 had no per-block checksums, so its parts
/// cannot be verified on the read path) is left for `sluice cache gc`.
pub const MANIFEST_FORMAT_VERSION: u32 = 2;

/// Bytes per checksummed block of a checkpoint part (the last block of a part may be
/// shorter): a read of any byte range fetches and checks the whole blocks around it.
pub const BLOCK_SIZE: u64 = 256 << 10;

/// A checkpoint's manifest (`_manifest.json`): written last, with a create-if-absent
/// put, only when every part is durable. Its presence is what makes a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Manifest {
    /// [`MANIFEST_FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// The checkpoint's identity: new for every write, so that a refreshed or
    /// recomputed checkpoint under the same key is another checkpoint. Downstream cache
    /// keys name it.
    pub id: String,
    /// The task.
    pub task: String,
    /// The cache key (the checkpoint's directory name).
    pub key: String,
    /// The task's code version.
    pub code_version: Option<String>,
    /// What the key was computed from.
    pub key_inputs: CacheKeyInputs,
    /// `inputs`, `key_fn` or `none`.
    pub policy: String,
    /// The flow run that wrote it.
    pub flow_run: String,
    /// When it was committed.
    pub created: DateTime<Utc>,
    /// When it stops being valid.
    pub expires: Option<DateTime<Utc>>,
    /// Rows in all parts.
    pub rows: u64,
    /// The output schema, as an Arrow IPC schema message in hex (exact types,
    /// nullability and metadata).
    pub schema_ipc: String,
    /// The output schema in readable form: `name: type` per column.
    pub columns: Vec<String>,
    /// Bytes per checksummed block of the parts ([`BLOCK_SIZE`] when written).
    pub block_size: u64,
    /// The Parquet parts, with sizes and checksums.
    pub files: Vec<ManifestFile>,
    /// The logical plan that computed it, as `EXPLAIN` shows it (for people).
    pub plan: String,
    /// Codec of the parts.
    pub compression: String,
    /// Whether a Parquet sink over this checkpoint encodes its rows again instead of
    /// copying its row groups (see the column copy). Set when a task's tee wrote it
    /// beside the sink that consumed the task's output in the same plan: that sink
    /// encoded its own row groups (DataFusion's writer, with its `row_group_rows`), so a
    /// hit gives its output, row groups and statistics, only by encoding again. Unset
    /// when the column copy wrote it (its row groups are the output's) or a barrier did
    /// (the run that writes it copies its sinks out of it too). Absent (older
    /// manifests): unset.
    #[serde(default)]
    pub reencode: bool,
}

/// One Parquet part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ManifestFile {
    /// Its path relative to the checkpoint's directory (`data-<id>/part-<n>.parquet`).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Rows in it.
    pub rows: u64,
    /// The BLAKE3 of its block checksums, in order (one digest for the whole part), in
    /// hex.
    pub blake3: String,
    /// The BLAKE3 of each block of [`Manifest::block_size`] bytes, truncated to 128 bits,
    /// in hex: a reader checks every block it fetches before decoding a byte of it.
    pub blocks: Vec<String>,
}

impl ManifestFile {
    /// The number of blocks a part of `size` bytes has.
    pub(crate) fn block_count(size: u64, block_size: u64) -> u64 {
        size.div_ceil(block_size.max(1))
    }
}

/// Hashes bytes as they are written into [`BLOCK_SIZE`] blocks: what a checkpoint's
/// writer records of each part.
#[derive(Debug)]
pub(crate) struct BlockHasher {
    block_size: u64,
    current: blake3::Hasher,
    in_block: u64,
    size: u64,
    blocks: Vec<String>,
}

impl Default for BlockHasher {
    fn default() -> Self {
        Self::new(BLOCK_SIZE)
    }
}

impl BlockHasher {
    pub(crate) fn new(block_size: u64) -> Self {
        Self {
            block_size: block_size.max(1),
            current: blake3::Hasher::new(),
            in_block: 0,
            size: 0,
            blocks: Vec::new(),
        }
    }

    pub(crate) fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = (self.block_size - self.in_block) as usize;
            let take = room.min(bytes.len());
            self.current.update(&bytes[..take]);
            self.in_block += take as u64;
            self.size += take as u64;
            bytes = &bytes[take..];
            if self.in_block == self.block_size {
                self.blocks.push(block_digest_of(&self.current));
                self.current = blake3::Hasher::new();
                self.in_block = 0;
            }
        }
    }

    /// The size, the whole part's digest and the blocks' digests.
    pub(crate) fn finish(mut self) -> (u64, String, Vec<String>) {
        if self.in_block > 0 {
            self.blocks.push(block_digest_of(&self.current));
        }
        let root = root_digest(&self.blocks);
        (self.size, root, self.blocks)
    }
}

fn block_digest_of(hasher: &blake3::Hasher) -> String {
    hasher.finalize().to_hex()[..32].to_string()
}

/// A block's checksum as the manifest records it.
pub(crate) fn block_digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..32].to_string()
}

/// The digest of a part: the BLAKE3 of its blocks' digests, in order.
pub(crate) fn root_digest(blocks: &[String]) -> String {
    let mut hasher = blake3::Hasher::new();
    for block in blocks {
        hasher.update(block.as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

impl Manifest {
    /// Total size of the parts.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The output schema.
    pub fn schema(&self) -> Result<SchemaRef> {
        decode_schema(&self.schema_ipc).map_err(|reason| Error::Internal {
            message: format!(
                "the manifest of {} holds an unreadable schema: {reason}",
                self.key
            ),
        })
    }

    /// Parses a manifest; the error says what is wrong with it.
    ///
    /// Beyond the JSON, a manifest must be of a known format version, hold a schema
    /// that decodes, name a valid task and key (see [`validate_name`]), list each
    /// part once under a relative path inside the checkpoint's directory (no `..`,
    /// no absolute path, no backslash), and have rows and sizes that add up (the
    /// rows of the parts are the manifest's rows). Anything else is refused, so that
    /// a manifest damaged in storage or written by hand is a miss, never a read
    /// outside the checkpoint.
    ///
    /// ```
    /// use sluice_core::Manifest;
    /// assert!(Manifest::parse(b"{}").unwrap_err().contains("does not parse"));
    /// ```
    pub fn parse(bytes: &[u8]) -> std::result::Result<Manifest, String> {
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version = serde_json::from_slice(bytes)
            .map_err(|e| format!("the manifest does not parse: {e}"))?;
        if version.format_version > MANIFEST_FORMAT_VERSION {
            return Err(format!(
                "the manifest has format version {}, newer than this build's {}",
                version.format_version, MANIFEST_FORMAT_VERSION
            ));
        }
        if version.format_version < MANIFEST_FORMAT_VERSION {
            return Err(format!(
                "the manifest has format version {}, older than this build's {} (its parts \
                 carry no block checksums)",
                version.format_version, MANIFEST_FORMAT_VERSION
            ));
        }
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| format!("the manifest does not parse: {e}"))?;
        let schema = decode_schema(&manifest.schema_ipc)?;
        // The readable columns are written from the same schema: a schema damaged in
        // storage that still decodes (to no columns, or to another name or type) would
        // otherwise be a hit that reads the parts as something they are not.
        let columns: Vec<String> = schema.fields().iter().map(|f| column_line(f)).collect();
        if columns != manifest.columns {
            return Err(format!(
                "the manifest's schema ({}) does not match its columns ({})",
                columns.join(", "),
                manifest.columns.join(", ")
            ));
        }
        manifest.check_names()?;
        Ok(manifest)
    }

    /// The names and figures [`parse`](Self::parse) checks beyond the JSON.
    fn check_names(&self) -> std::result::Result<(), String> {
        let invalid = |e: Error| format!("the manifest is invalid: {e}");
        validate_name("task name", &self.task).map_err(invalid)?;
        validate_name("cache key", &self.key).map_err(invalid)?;
        validate_name("checkpoint id", &self.id).map_err(invalid)?;
        if self.block_size == 0 {
            return Err("the manifest's block size is 0".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        let (mut rows, mut size) = (0u64, 0u64);
        for file in &self.files {
            if file.path.is_empty() {
                return Err("the manifest lists a part with an empty path".into());
            }
            for component in file.path.split('/') {
                validate_name("part path component", component).map_err(|e| {
                    format!(
                        "the manifest lists a part outside its directory or with an \
                         invalid name, {:?}: {e}",
                        file.path
                    )
                })?;
            }
            if !seen.insert(file.path.as_str()) {
                return Err(format!("the manifest lists part {:?} twice", file.path));
            }
            let blocks = ManifestFile::block_count(file.size, self.block_size);
            if file.blocks.len() as u64 != blocks
                || file.blocks.iter().any(|b| b.len() != 32)
                || root_digest(&file.blocks) != file.blake3
            {
                return Err(format!(
                    "the manifest's checksums of part {:?} do not add up ({} blocks listed for \
                     {} bytes)",
                    file.path,
                    file.blocks.len(),
                    file.size
                ));
            }
            rows = rows
                .checked_add(file.rows)
                .ok_or("the parts' rows overflow")?;
            size = size
                .checked_add(file.size)
                .ok_or("the parts' sizes overflow")?;
        }
        if rows != self.rows {
            return Err(format!(
                "the manifest says {} rows but its parts hold {rows}",
                self.rows
            ));
        }
        Ok(())
    }
}

/// A column as the manifest's `columns` show it: `name: type`.
pub(crate) fn column_line(field: &datafusion::arrow::datatypes::Field) -> String {
    format!("{}: {}", field.name(), field.data_type())
}

/// A schema as a hex IPC message.
pub(crate) fn encode_schema(schema: &Schema) -> Result<String> {
    let mut bytes = Vec::new();
    {
        let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut bytes, schema)?;
        writer.finish()?;
    }
    Ok(crate::hex::encode(&bytes))
}

pub(crate) fn decode_schema(hex: &str) -> std::result::Result<SchemaRef, String> {
    if !hex.len().is_multiple_of(2) || !hex.is_ascii() {
        return Err("the schema is not hex".into());
    }
    let bytes = crate::hex::decode(hex).map_err(|e| format!("the schema is not hex: {e}"))?;
    // arrow-ipc 59 panics, instead of failing, on schema messages that its flatbuffer
    // verifier accepts but it cannot convert (an integer 80 bits wide, a list without
    // a child: apache/arrow-rs#10437, fixed after 59): a damaged manifest or cached
    // schema must be a miss, not a crash. Found by `fuzz::` in the integration tests.
    let decoded = std::panic::catch_unwind(move || {
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map(|reader| reader.schema())
    });
    match decoded {
        Ok(Ok(schema)) => Ok(schema),
        Ok(Err(e)) => Err(format!("the schema does not decode: {e}")),
        Err(panic) => Err(format!(
            "the schema does not decode: {}",
            crate::error::panic_message(panic.as_ref())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field};

    #[test]
    fn schemas_round_trip_through_hex_ipc() {
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Utf8View, true),
        ]);
        let hex = encode_schema(&schema).unwrap();
        assert_eq!(decode_schema(&hex).unwrap().as_ref(), &schema);
        assert!(decode_schema("zz").is_err());
    }

    #[test]
    fn newer_and_broken_manifests_are_rejected_with_a_reason() {
        let newer = format!("{{\"format_version\": {}}}", MANIFEST_FORMAT_VERSION + 1);
        assert!(
            Manifest::parse(newer.as_bytes())
                .unwrap_err()
                .contains("newer")
        );
        assert!(
            Manifest::parse(b"{\"format_version\": 1")
                .unwrap_err()
                .contains("parse")
        );
        assert!(Manifest::parse(b"").is_err());
    }
}
