//! Lineage: how a frame was made, as a tree of reads, operations and tasks. Cache keys
//! are computed from it.
//!
//! A cache key cannot come from hashing a DataFusion plan: plans hold per-process
//! things (task runs, table providers behind pointers, in-memory tables in eager
//! mode), and `TableScan`'s equality ignores what it scans. A lineage records only what
//! decides a frame's content, in a text form that is the same in every process and on
//! every machine:
//!
//! - a read: format, URL, read options, and the identity of every object listed
//!   (URL, size, ETag, last-modified);
//! - an operation: its name and its arguments in the canonical encoding of
//!   [`crate::checkpoint::key`] (never DataFusion's display text, which is ambiguous);
//! - a SQL query: its text and the lineage of each frame it names;
//! - batches from memory: a digest of their data;
//! - a task's output: the task's name, code version and cache key (which covers the
//!   lineage of the task's own input), so that a cached and a computed upstream task
//!   give the same key downstream, and the id of the checkpoint it is read from or
//!   writes, so that a refreshed or recomputed upstream checkpoint changes the keys
//!   downstream.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use datafusion::arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The identity of one source object, taken from the listing done when the frame was
/// built: if any of it changes, a key over it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SourceObject {
    /// Where it is.
    pub url: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag, when the store gives one.
    pub e_tag: Option<String>,
    /// When it was last modified.
    pub last_modified: DateTime<Utc>,
}

/// An upstream task a key depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UpstreamTask {
    /// Its name.
    pub task: String,
    /// Its code version.
    pub version: Option<String>,
    /// Its own cache key.
    pub key: String,
    /// The id of the checkpoint it was read from or wrote in this run, when it is
    /// persisted: a refresh or a recomputation changes it.
    pub checkpoint: Option<String>,
}

/// How a frame was made. Cloning is O(1).
#[derive(Debug, Clone)]
pub(crate) struct Lineage(Arc<Node>);

#[derive(Debug)]
enum Node {
    Read {
        format: &'static str,
        url: String,
        options: String,
        objects: Vec<SourceObject>,
    },
    Batches {
        /// The batches (Arc'd arrays: the frame holds them anyway), digested only when
        /// a key is needed.
        batches: Vec<RecordBatch>,
        digest: OnceLock<String>,
    },
    Op {
        input: Lineage,
        op: &'static str,
        args: Value,
    },
    Combine {
        left: Lineage,
        right: Lineage,
        op: &'static str,
        args: Value,
    },
    Sql {
        query: String,
        inputs: Vec<(String, Lineage)>,
    },
    Task(TaskOutput),
}

/// A task's output: its key is computed when first needed (a persisted task sets it
/// at once), from the task's identity and its input's lineage.
#[derive(Debug)]
struct TaskOutput {
    task: String,
    version: Option<String>,
    parameters: serde_json::Value,
    input: Lineage,
    key: OnceLock<String>,
    checkpoint: Option<String>,
}

impl TaskOutput {
    fn key(&self) -> &str {
        self.key.get_or_init(|| {
            // The settings and functions of the session enter the key of the task
            // downstream that needs this one: they are the same for both.
            crate::checkpoint::CachePolicy::inputs().key(&self.input.key_inputs(
                &self.task,
                self.version.clone(),
                self.parameters.clone(),
                Default::default(),
                Default::default(),
            ))
        })
    }

    fn upstream(&self) -> UpstreamTask {
        UpstreamTask {
            task: self.task.clone(),
            version: self.version.clone(),
            key: self.key().to_string(),
            checkpoint: self.checkpoint.clone(),
        }
    }
}

impl Lineage {
    /// A read of `url` in `format`, with its options and the objects listed.
    pub(crate) fn read(
        format: &'static str,
        url: &str,
        options: String,
        mut objects: Vec<SourceObject>,
    ) -> Self {
        objects.sort_by(|a, b| a.url.cmp(&b.url));
        Self(Arc::new(Node::Read {
            format,
            url: url.to_string(),
            options,
            objects,
        }))
    }

    /// Batches from memory, by a digest of their content (Arrow IPC bytes), computed
    /// when a key is first needed.
    pub(crate) fn batches(batches: &[RecordBatch]) -> Self {
        Self(Arc::new(Node::Batches {
            batches: batches.to_vec(),
            digest: OnceLock::new(),
        }))
    }

    /// `op(args)` applied to this lineage.
    pub(crate) fn op(&self, op: &'static str, args: Value) -> Self {
        Self(Arc::new(Node::Op {
            input: self.clone(),
            op,
            args,
        }))
    }

    /// `op(args)` combining this lineage with `right`'s.
    pub(crate) fn combine(&self, right: &Lineage, op: &'static str, args: Value) -> Self {
        Self(Arc::new(Node::Combine {
            left: self.clone(),
            right: right.clone(),
            op,
            args,
        }))
    }

    /// A SQL query over named frames.
    pub(crate) fn sql(query: &str, inputs: Vec<(String, Lineage)>) -> Self {
        Self(Arc::new(Node::Sql {
            query: query.to_string(),
            inputs,
        }))
    }

    /// The output of a task run over `input`; its key is `key` when known (a
    /// persisted task's checkpoint key), computed from the rest when first needed;
    /// `checkpoint` is the id of the checkpoint it is read from or writes.
    pub(crate) fn task(
        task: &str,
        version: Option<String>,
        parameters: serde_json::Value,
        input: &Lineage,
        key: Option<String>,
        checkpoint: Option<String>,
    ) -> Self {
        let cell = OnceLock::new();
        if let Some(key) = key {
            let _ = cell.set(key);
        }
        Self(Arc::new(Node::Task(TaskOutput {
            task: task.to_string(),
            version,
            parameters,
            input: input.clone(),
            key: cell,
            checkpoint,
        })))
    }

    /// What a task's cache key over this lineage is computed from, with the session's
    /// result settings and the user-defined functions it calls (name → version).
    pub(crate) fn key_inputs(
        &self,
        task: &str,
        version: Option<String>,
        parameters: serde_json::Value,
        settings: std::collections::BTreeMap<String, String>,
        functions: std::collections::BTreeMap<String, String>,
    ) -> crate::checkpoint::CacheKeyInputs {
        crate::checkpoint::CacheKeyInputs {
            key_format: crate::checkpoint::key::KEY_FORMAT,
            engine: crate::checkpoint::key::engine(),
            semantics: crate::checkpoint::key::SEMANTICS_VERSION,
            task: task.to_string(),
            version,
            parameters,
            lineage: self.canonical(),
            sources: self.sources(),
            upstream: self.upstream(),
            settings,
            functions,
        }
    }

    /// The lineage in the canonical encoding of [`crate::checkpoint::key`]: what keys hash.
    /// Source objects are not in it (see [`sources`](Self::sources)); each read's URL,
    /// options and object count are.
    pub(crate) fn canonical(&self) -> Value {
        match self.0.as_ref() {
            Node::Read {
                format,
                url,
                options,
                objects,
            } => json!({
                "read": format,
                "url": url,
                "options": options,
                "objects": objects.iter().map(|o| o.url.as_str()).collect::<Vec<_>>(),
            }),
            Node::Batches { batches, digest } => {
                json!({ "batches": digest.get_or_init(|| digest_batches(batches)) })
            }
            Node::Op { input, op, args } => json!({
                "op": op,
                "args": args,
                "input": input.canonical(),
            }),
            Node::Combine {
                left,
                right,
                op,
                args,
            } => json!({
                "op": op,
                "args": args,
                "left": left.canonical(),
                "right": right.canonical(),
            }),
            Node::Sql { query, inputs } => json!({
                "sql": query,
                "inputs": inputs
                    .iter()
                    .map(|(name, input)| json!([name, input.canonical()]))
                    .collect::<Vec<_>>(),
            }),
            Node::Task(task) => json!({
                "task": task.task,
                "version": task.version,
                "key": task.key(),
                "checkpoint": task.checkpoint,
            }),
        }
    }

    /// Every source object read under this lineage (upstream tasks excluded: they
    /// enter by their key), sorted and without duplicates.
    pub(crate) fn sources(&self) -> Vec<SourceObject> {
        let mut out = Vec::new();
        self.walk(&mut |node| {
            if let Node::Read { objects, .. } = node {
                out.extend(objects.iter().cloned());
            }
        });
        out.sort_by(|a, b| a.url.cmp(&b.url));
        out.dedup();
        out
    }

    /// The upstream tasks this lineage reads, in order of appearance, without
    /// duplicates.
    pub(crate) fn upstream(&self) -> Vec<UpstreamTask> {
        let mut out: Vec<UpstreamTask> = Vec::new();
        self.walk(&mut |node| {
            if let Node::Task(task) = node {
                let task = task.upstream();
                if !out.contains(&task) {
                    out.push(task);
                }
            }
        });
        out
    }

    fn walk(&self, f: &mut dyn FnMut(&Node)) {
        f(&self.0);
        match self.0.as_ref() {
            Node::Op { input, .. } => input.walk(f),
            Node::Combine { left, right, .. } => {
                left.walk(f);
                right.walk(f);
            }
            Node::Sql { inputs, .. } => {
                for (_, input) in inputs {
                    input.walk(f);
                }
            }
            Node::Read { .. } | Node::Batches { .. } | Node::Task(_) => {}
        }
    }
}

/// A digest of batches' content, through their Arrow IPC encoding.
fn digest_batches(batches: &[RecordBatch]) -> String {
    let mut hasher = blake3::Hasher::new();
    if let Some(first) = batches.first() {
        // Writing to a hasher cannot fail but through a schema/batch mismatch, which
        // MemTable rejects before this point.
        if let Ok(mut writer) =
            datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut hasher, first.schema_ref())
        {
            for batch in batches {
                let _ = writer.write(batch);
            }
            let _ = writer.finish();
        }
    }
    hasher.finalize().to_hex()[..32].to_string()
}

/// A short, path-safe hex digest of `bytes`.
pub(crate) fn digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..32].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(url: &str, size: u64) -> SourceObject {
        SourceObject {
            url: url.into(),
            size,
            e_tag: Some("e1".into()),
            last_modified: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn canonical_lineages_name_operations_and_upstream_tasks() {
        let read = Lineage::read(
            "parquet",
            "file:///d/",
            String::new(),
            vec![object("file:///d/b", 2), object("file:///d/a", 1)],
        );
        let derived = read.op("with_column", json!(["x", {"column": "a"}]));
        assert_eq!(
            derived.canonical(),
            json!({
                "op": "with_column",
                "args": ["x", {"column": "a"}],
                "input": {
                    "read": "parquet",
                    "url": "file:///d/",
                    "options": "",
                    "objects": ["file:///d/a", "file:///d/b"],
                },
            })
        );
        // Sources come out sorted whatever the listing order.
        let urls: Vec<_> = derived.sources().into_iter().map(|o| o.url).collect();
        assert_eq!(urls, ["file:///d/a", "file:///d/b"]);
        let task = Lineage::task(
            "extract",
            Some("v1".into()),
            serde_json::Value::Null,
            &read,
            Some("k".into()),
            Some("c1".into()),
        );
        let joined = task.combine(&derived, "union", json!([]));
        assert_eq!(joined.upstream().len(), 1);
        assert_eq!(joined.upstream()[0].checkpoint.as_deref(), Some("c1"));
        assert_eq!(
            joined.canonical()["left"],
            json!({"task": "extract", "version": "v1", "key": "k", "checkpoint": "c1"})
        );
    }

    #[test]
    fn batch_digests_follow_the_data() {
        use datafusion::arrow::array::Int64Array;
        let batch = |v: i64| {
            RecordBatch::try_from_iter([(
                "n",
                Arc::new(Int64Array::from(vec![v])) as datafusion::arrow::array::ArrayRef,
            )])
            .unwrap()
        };
        assert_eq!(
            Lineage::batches(&[batch(1)]).canonical(),
            Lineage::batches(&[batch(1)]).canonical()
        );
        assert_ne!(
            Lineage::batches(&[batch(1)]).canonical(),
            Lineage::batches(&[batch(2)]).canonical()
        );
    }
}
