//! How Sluice's plan nodes cross to a Ballista scheduler and its executors.
//!
//! A task boundary carries the task's run state, which lives in the client's process.
//! What crosses is what the node needs to run elsewhere: the task's name (errors name
//! it), its timeout and its sources (errors name them). Its figures come back as the
//! node's DataFusion metrics, which the executors report to the scheduler.
//!
//! Every other node is Ballista's, and its codecs encode it. Sluice's nodes are
//! framed with a magic prefix and Sluice's version, so that a cluster built from
//! another Sluice version says so instead of misreading them.

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use super::parts::PartsWrite;
use super::wire::WireError;
use crate::checkpoint::tee::CheckpointExec;
use crate::checkpoint::{
    CheckpointFormat, CheckpointRead, CheckpointStore, CheckpointTee, Manifest, Tee,
};
use crate::plan::boundary::{CheckpointSource, TaskBoundary, TaskBoundaryExec};
use crate::seam::{TaskHandle, TaskRecorder};

/// What prefixes every Sluice node's bytes.
const MAGIC: &[u8] = b"SLUICE-NODE\0";

/// A Sluice node as it crosses processes.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    /// The Sluice version that encoded it.
    version: String,
    node: WireNode,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WireNode {
    Boundary(WireBoundary),
    Tee(WireTee),
    /// A scan of a checkpoint's parts (a table provider).
    Scan(WireRead),
    /// A Parquet sink writing a part per partition: the hex of DataFusion's protobuf
    /// of its sink (see `sink::encode`).
    PartSink {
        sink: String,
    },
}

/// A task boundary: the task's name (errors name it), its timeout, its sources (errors
/// name them), and the checkpoint it reads on a cache hit.
#[derive(Debug, Serialize, Deserialize)]
struct WireBoundary {
    task: String,
    timeout_ms: Option<u64>,
    sources: Vec<String>,
    checkpoint: Option<WireRead>,
}

impl WireBoundary {
    fn of(
        run: &TaskHandle,
        sources: &[String],
        checkpoint: Option<&Arc<dyn CheckpointSource>>,
    ) -> Self {
        Self {
            task: run.name().to_string(),
            timeout_ms: run.timeout().map(|t| t.as_millis() as u64),
            sources: sources.to_vec(),
            checkpoint: checkpoint
                .and_then(|read| {
                    (read.as_ref() as &dyn std::any::Any).downcast_ref::<CheckpointRead>()
                })
                .map(WireRead::of),
        }
    }

    /// The boundary's run state off the client (it records nowhere), its sources, and
    /// the checkpoint it reads.
    #[allow(clippy::type_complexity)]
    fn decode(
        self,
        stores: &sluice_store::StoreRegistry,
    ) -> DfResult<(TaskHandle, Arc<[String]>, Option<Arc<CheckpointRead>>)> {
        let run = detached(
            &self.task,
            self.timeout_ms.map(std::time::Duration::from_millis),
        );
        let checkpoint = self.checkpoint.map(|read| read.read(stores)).transpose()?;
        Ok((run, self.sources.into(), checkpoint))
    }
}

/// A task boundary's handle on a cluster's scheduler or executor, where the task run
/// does not live: it records nowhere. The boundary's figures travel back as its
/// metrics, and the client records them (`Cluster::record`); its errors leave as
/// Sluice's one-line text, which the client reads back (`Cluster::job_error`).
fn detached(name: &str, timeout: Option<std::time::Duration>) -> TaskHandle {
    TaskHandle::new(0, name, timeout, Arc::new(Detached))
}

#[derive(Debug)]
struct Detached;

impl TaskRecorder for Detached {
    /// Ballista carries a failed task's error as text (formatted with `Debug`): Sluice's
    /// one-line message, with the structured payload the client decodes (see
    /// [`WireError`]). An error that an upstream task's boundary already sent this way
    /// keeps the payload of where it arose.
    fn outgoing(&self, error: DataFusionError) -> DataFusionError {
        let DataFusionError::External(boxed) = error else {
            return error;
        };
        let Some(ours) = boxed.downcast_ref::<crate::Error>() else {
            return DataFusionError::External(boxed);
        };
        let text = crate::one_line(ours);
        if WireError::find(&text).is_some() {
            return DataFusionError::Execution(text);
        }
        DataFusionError::Execution(WireError::of(ours).attach(&text))
    }
}

/// A persisted task's tee: where the executors write its parts (see [`PartsWrite`]).
#[derive(Debug, Serialize, Deserialize)]
struct WireTee {
    store: String,
    task: String,
    key: String,
    write: String,
    format: CheckpointFormat,
    committed: Option<Manifest>,
}

impl WireTee {
    fn of(parts: &PartsWrite) -> Self {
        Self {
            store: parts.store.url().to_string(),
            task: parts.task.clone(),
            key: parts.key.clone(),
            write: parts.write.clone(),
            format: parts.format,
            committed: parts.committed.clone(),
        }
    }

    fn decode(self, stores: &sluice_store::StoreRegistry) -> DfResult<Tee> {
        Ok(Arc::new(PartsWrite {
            store: open_store(stores, &self.store)?,
            task: self.task,
            key: self.key,
            write: self.write,
            format: self.format,
            committed: self.committed,
        }))
    }
}

/// A checkpoint a cache hit reads: its store, its manifest (the parts, their sizes and
/// checksums), and whether to verify them.
#[derive(Debug, Serialize, Deserialize)]
struct WireRead {
    store: String,
    manifest: Manifest,
    verify: bool,
}

impl WireRead {
    fn of(read: &CheckpointRead) -> Self {
        Self {
            store: read.store.url().to_string(),
            manifest: read.manifest.clone(),
            verify: read.parts.verify,
        }
    }

    /// The checkpoint as the executor reads it: a corrupt part is reported to the
    /// client, which invalidates the checkpoint.
    fn read(self, stores: &sluice_store::StoreRegistry) -> DfResult<Arc<CheckpointRead>> {
        let mut read =
            CheckpointRead::unshared(open_store(stores, &self.store)?, self.manifest, self.verify);
        read.on_executor = true;
        Ok(Arc::new(read))
    }
}

/// The checkpoint store at `url`, from the task's stores.
fn open_store(stores: &sluice_store::StoreRegistry, url: &str) -> DfResult<CheckpointStore> {
    CheckpointStore::in_registry(stores, url).map_err(|e| DataFusionError::External(Box::new(e)))
}

impl Wire {
    fn new(node: WireNode) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_string(),
            node,
        }
    }

    fn boundary(
        run: &TaskHandle,
        sources: &[String],
        checkpoint: Option<&Arc<dyn CheckpointSource>>,
    ) -> Self {
        Self::new(WireNode::Boundary(WireBoundary::of(
            run, sources, checkpoint,
        )))
    }

    fn tee(parts: &PartsWrite) -> Self {
        Self::new(WireNode::Tee(WireTee::of(parts)))
    }

    fn scan(read: &CheckpointRead) -> Self {
        Self::new(WireNode::Scan(WireRead::of(read)))
    }

    fn encode(&self, buf: &mut Vec<u8>) -> DfResult<()> {
        buf.extend_from_slice(MAGIC);
        serde_json::to_writer(buf, self).map_err(|e| DataFusionError::External(Box::new(e)))
    }

    /// `Ok(None)` when the bytes are not a Sluice node (they are Ballista's).
    fn decode(buf: &[u8]) -> DfResult<Option<WireNode>> {
        let Some(body) = buf.strip_prefix(MAGIC) else {
            return Ok(None);
        };
        // The version first: a node of another version may not parse as this one's.
        #[derive(Deserialize)]
        struct Version {
            version: String,
        }
        let version = serde_json::from_slice::<Version>(body).map(|v| v.version);
        if let Ok(version) = &version
            && version != env!("CARGO_PKG_VERSION")
        {
            return Err(DataFusionError::Plan(format!(
                "the plan was built by Sluice {version} but this cluster runs Sluice {}; run \
                 the client and the cluster on the same version",
                env!("CARGO_PKG_VERSION")
            )));
        }
        let wire: Self = serde_json::from_slice(body).map_err(|e| {
            DataFusionError::Plan(format!(
                "this cluster cannot decode a Sluice plan node ({e}); the client and the \
                 cluster must run the same Sluice version (this cluster runs {})",
                env!("CARGO_PKG_VERSION")
            ))
        })?;
        Ok(Some(wire.node))
    }
}

fn unprepared(task: &str) -> DataFusionError {
    DataFusionError::Internal(format!(
        "task {task:?}'s checkpoint tee reached the cluster codec without being prepared \
         for the cluster"
    ))
}

/// A tee as it crosses: only one the cluster prepared (its executors write parts) can.
fn encode_tee(tee: &Tee, buf: &mut Vec<u8>) -> DfResult<()> {
    match (tee.as_ref() as &dyn std::any::Any).downcast_ref::<PartsWrite>() {
        Some(parts) => Wire::tee(parts).encode(buf),
        None => Err(unprepared(tee.task())),
    }
}

fn misplaced() -> DataFusionError {
    DataFusionError::Internal("a Sluice plan node was decoded where it does not belong".into())
}

fn one_input<T: Clone>(inputs: &[T]) -> DfResult<T> {
    crate::plan::only_one("a Sluice plan node", inputs.to_vec())
}

/// Ballista's logical codec plus Sluice's task boundaries. The client and the
/// scheduler need it.
///
/// ```
/// use std::sync::Arc;
/// use ballista_core::extension::SessionConfigExt;
/// use datafusion::prelude::SessionConfig;
/// let config = SessionConfig::new_with_ballista()
///     .with_ballista_logical_extension_codec(Arc::new(sluice_core::cluster::LogicalCodec::default()));
/// # let _ = config;
/// ```
#[derive(Debug, Default)]
pub struct LogicalCodec {
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> DfResult<Extension> {
        let Some(wire) = Wire::decode(buf)? else {
            return self.inner.try_decode(buf, inputs, ctx);
        };
        let input = one_input(inputs)?;
        let stores = super::stores_for(ctx.session_config())?;
        let node: Arc<dyn UserDefinedLogicalNode> = match wire {
            WireNode::Boundary(boundary) => {
                let (run, sources, checkpoint) = boundary.decode(&stores)?;
                Arc::new(TaskBoundary {
                    task: run,
                    sources,
                    checkpoint: checkpoint.map(|read| read as Arc<dyn CheckpointSource>),
                    input,
                })
            }
            WireNode::Tee(tee) => Arc::new(CheckpointTee {
                tee: tee.decode(&stores)?,
                input,
            }),
            WireNode::Scan(_) | WireNode::PartSink { .. } => return Err(misplaced()),
        };
        Ok(Extension { node })
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DfResult<()> {
        let any = node.node.as_any();
        if let Some(boundary) = any.downcast_ref::<TaskBoundary>() {
            return Wire::boundary(
                &boundary.task,
                &boundary.sources,
                boundary.checkpoint.as_ref(),
            )
            .encode(buf);
        }
        if let Some(node) = any.downcast_ref::<CheckpointTee>() {
            return encode_tee(&node.tee, buf);
        }
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn TableProvider>> {
        match Wire::decode(buf)? {
            Some(WireNode::Scan(read)) => read
                .read(super::stores_for(ctx.session_config())?.as_ref())?
                .table()
                .map_err(DataFusionError::from),
            Some(_) => Err(misplaced()),
            None => self
                .inner
                .try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        if let Some(read) = super::checkpoint_of(node.as_ref()) {
            return Wire::scan(read).encode(buf);
        }
        self.inner.try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> DfResult<()> {
        self.inner.try_encode_file_format(buf, node)
    }
}

/// Ballista's physical codec plus Sluice's task boundaries. The scheduler and the
/// executors need it.
///
/// ```
/// use std::sync::Arc;
/// use ballista_core::extension::SessionConfigExt;
/// use datafusion::prelude::SessionConfig;
/// let config = SessionConfig::new_with_ballista()
///     .with_ballista_physical_extension_codec(Arc::new(sluice_core::cluster::PhysicalCodec::default()));
/// # let _ = config;
/// ```
#[derive(Debug, Default)]
pub struct PhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let Some(wire) = Wire::decode(buf)? else {
            return self.inner.try_decode(buf, inputs, ctx, proto_converter);
        };
        let input = one_input(inputs)?;
        let stores = super::stores_for(ctx.session_config())?;
        Ok(match wire {
            // Every scan inside a task is under its boundary: cap its column chunks
            // here, since the reader that does so locally does not travel; a cache
            // hit's scan of a checkpoint reads through the checkpoint's verifying store.
            WireNode::Boundary(boundary) => {
                let (run, sources, checkpoint) = boundary.decode(&stores)?;
                let input = match &checkpoint {
                    Some(read) => super::read_checkpoint_scans(input, read)?,
                    None => super::cap_scans(input, &stores)?,
                };
                let checkpoint = checkpoint.map(|read| read as Arc<dyn CheckpointSource>);
                Arc::new(TaskBoundaryExec::new(input, run, sources, checkpoint))
            }
            WireNode::Tee(tee) => Arc::new(CheckpointExec::new(input, tee.decode(&stores)?)),
            WireNode::PartSink { sink } => {
                let bytes = crate::hex::decode(&sink)
                    .map_err(|_| DataFusionError::Plan("a part sink's bytes are not hex".into()))?;
                Arc::new(super::sink::decode(&bytes, input)?)
            }
            WireNode::Scan(_) => return Err(misplaced()),
        })
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        if let Some(boundary) = node.downcast_ref::<TaskBoundaryExec>() {
            return Wire::boundary(
                &boundary.task,
                &boundary.sources,
                boundary.checkpoint.as_ref(),
            )
            .encode(buf);
        }
        if let Some(exec) = node.downcast_ref::<CheckpointExec>() {
            return encode_tee(&exec.tee, buf);
        }
        if let Some(exec) = node.downcast_ref::<super::sink::PartSinkExec>() {
            let sink = crate::hex::encode(&super::sink::encode(exec)?);
            return Wire::new(WireNode::PartSink { sink }).encode(buf);
        }
        self.inner.try_encode(node, buf, proto_converter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_boundary_sends_errors_as_text_with_the_payload_of_their_origin() {
        let inner = detached("extract", None);
        let error = inner.attribute(
            &["s3://b/in.parquet".into()],
            DataFusionError::Execution("boom".into()),
        );
        let DataFusionError::Execution(text) = &error else {
            panic!("expected text, got {error:?}");
        };
        assert!(text.starts_with("task \"extract\" failed"), "{text}");
        let wire = WireError::find(text).unwrap();
        assert_eq!(wire.task.as_deref(), Some("extract"));
        // The next task's boundary passes it on with the payload of where it arose.
        let outer = detached("transform", None);
        let DataFusionError::Execution(passed) = outer.attribute(&[], error) else {
            panic!("expected text");
        };
        assert_eq!(WireError::find(&passed), Some(wire));
    }

    #[test]
    fn a_node_from_another_version_is_refused_by_name() {
        let mut buf = Vec::new();
        let mut wire = Wire::boundary(&detached("clean", None), &[], None);
        wire.version = "0.0.1".into();
        wire.encode(&mut buf).unwrap();
        let err = Wire::decode(&buf).unwrap_err().to_string();
        assert!(err.contains("built by Sluice 0.0.1"), "{err}");
        // A node of another version whose shape changed too: still the version error.
        let newer = [MAGIC, br#"{"version":"0.0.1","node":{"kind":"new"}}"#].concat();
        let err = Wire::decode(&newer).unwrap_err().to_string();
        assert!(err.contains("built by Sluice 0.0.1"), "{err}");
        assert!(Wire::decode(b"\x0a\x02ballista").unwrap().is_none());
        let err = Wire::decode(b"SLUICE-NODE\0{not json").unwrap_err();
        assert!(err.to_string().contains("same Sluice version"), "{err}");
    }
}
