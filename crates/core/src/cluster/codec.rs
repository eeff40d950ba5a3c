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
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use crate::boundary::{TaskBoundary, TaskBoundaryExec};
use crate::run::TaskRunState;

/// What prefixes every Sluice node's bytes.
const MAGIC: &[u8] = b"SLUICE-NODE\0";

/// A task boundary as it crosses processes.
#[derive(Debug, Serialize, Deserialize)]
struct WireBoundary {
    /// The Sluice version that encoded it.
    version: String,
    task: String,
    timeout_ms: Option<u64>,
    sources: Vec<String>,
}

impl WireBoundary {
    fn of(run: &TaskRunState, sources: &[String]) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_string(),
            task: run.name.clone(),
            timeout_ms: run.timeout.map(|t| t.as_millis() as u64),
            sources: sources.to_vec(),
        }
    }

    fn encode(&self, buf: &mut Vec<u8>) -> DfResult<()> {
        buf.extend_from_slice(MAGIC);
        serde_json::to_writer(buf, self).map_err(|e| DataFusionError::External(Box::new(e)))
    }

    /// `Ok(None)` when the bytes are not a Sluice node (they are Ballista's).
    fn decode(buf: &[u8]) -> DfResult<Option<Self>> {
        let Some(body) = buf.strip_prefix(MAGIC) else {
            return Ok(None);
        };
        let node: Self = serde_json::from_slice(body).map_err(|e| {
            DataFusionError::Plan(format!(
                "this cluster cannot decode a Sluice plan node ({e}); the client and the \
                 cluster must run the same Sluice version (this cluster runs {})",
                env!("CARGO_PKG_VERSION")
            ))
        })?;
        if node.version != env!("CARGO_PKG_VERSION") {
            return Err(DataFusionError::Plan(format!(
                "the plan was built by Sluice {} but this cluster runs Sluice {}; run the \
                 client and the cluster on the same version",
                node.version,
                env!("CARGO_PKG_VERSION")
            )));
        }
        Ok(Some(node))
    }

    fn run(&self) -> Arc<TaskRunState> {
        TaskRunState::detached(
            &self.task,
            self.timeout_ms.map(std::time::Duration::from_millis),
        )
    }
}

fn refuse_checkpoint(task: &str) -> DataFusionError {
    DataFusionError::NotImplemented(format!(
        "task {task:?} reads or writes a checkpoint, which a cluster does not run yet"
    ))
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
        let Some(wire) = WireBoundary::decode(buf)? else {
            return self.inner.try_decode(buf, inputs, ctx);
        };
        let [input] = inputs else {
            return Err(DataFusionError::Internal(
                "a task boundary has exactly one input".into(),
            ));
        };
        Ok(Extension {
            node: Arc::new(TaskBoundary {
                run: wire.run(),
                sources: wire.sources.into(),
                checkpoint: None,
                input: input.clone(),
            }),
        })
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DfResult<()> {
        if let Some(boundary) = node.node.as_any().downcast_ref::<TaskBoundary>() {
            if boundary.checkpoint.is_some() {
                return Err(refuse_checkpoint(&boundary.run.name));
            }
            return WireBoundary::of(&boundary.run, &boundary.sources).encode(buf);
        }
        if let Some(tee) = node
            .node
            .as_any()
            .downcast_ref::<crate::checkpoint::CheckpointTee>()
        {
            return Err(refuse_checkpoint(&tee.target.task));
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
        self.inner
            .try_decode_table_provider(buf, table_ref, schema, ctx)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
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
        let Some(wire) = WireBoundary::decode(buf)? else {
            return self.inner.try_decode(buf, inputs, ctx, proto_converter);
        };
        let [input] = inputs else {
            return Err(DataFusionError::Internal(
                "a task boundary has exactly one input".into(),
            ));
        };
        // Every scan inside a task is under its boundary: cap its column chunks here,
        // since the reader that does so locally does not travel.
        Ok(Arc::new(TaskBoundaryExec::new(
            super::cap_scans(Arc::clone(input))?,
            wire.run(),
            wire.sources.into(),
            None,
        )))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        if let Some(boundary) = node.downcast_ref::<TaskBoundaryExec>() {
            if boundary.reads_checkpoint() {
                return Err(refuse_checkpoint(boundary.task_name()));
            }
            return WireBoundary::of(boundary.run(), boundary.sources()).encode(buf);
        }
        self.inner.try_encode(node, buf, proto_converter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_from_another_version_is_refused_by_name() {
        let mut buf = Vec::new();
        let mut wire = WireBoundary::of(&TaskRunState::detached("clean", None), &[]);
        wire.version = "0.0.1".into();
        wire.encode(&mut buf).unwrap();
        let err = WireBoundary::decode(&buf).unwrap_err().to_string();
        assert!(err.contains("built by Sluice 0.0.1"), "{err}");
        assert!(WireBoundary::decode(b"\x0a\x02ballista").unwrap().is_none());
        let err = WireBoundary::decode(b"SLUICE-NODE\0{not json").unwrap_err();
        assert!(err.to_string().contains("same Sluice version"), "{err}");
    }
}
