//! Log lines emitted inside a task run, kept in its record: the analogue of Prefect's
//! `log_prints`. Add [`RunLogLayer`] to your `tracing` subscriber.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::record::LogLine;

/// A `tracing` layer that keeps the events emitted inside a task's body (by the task's
/// own code, or by Sluice while it runs the task) in the task run's record, as
/// `logs` (the first [`MAX_LOG_LINES`](crate::MAX_LOG_LINES) lines). The same
/// events printed by a formatting layer carry the flow-run and task-run ids, from the
/// `task.run` span.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use sluice_core::{Flow, RunLogLayer, Task};
/// use tracing_subscriber::layer::SubscriberExt;
///
/// let subscriber = tracing_subscriber::registry().with(RunLogLayer::default());
/// let _guard = tracing::subscriber::set_default(subscriber);
/// let run = Flow::new("logged")
///     .with_run_history(false)
///     .run(serde_json::json!({}), async {
///         Task::new("greet")
///             .run(|_cx| async {
///                 tracing::info!(who = "world", "hello");
///                 Ok(())
///             })
///             .await
///     })
///     .await;
/// let logs = &run.record.tasks[0].logs;
/// assert!(logs.iter().any(|l| l.message == "hello who=world" && l.level == "INFO"));
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RunLogLayer {
    level: tracing::Level,
}

impl Default for RunLogLayer {
    /// Keeps `INFO` and more severe events.
    fn default() -> Self {
        Self {
            level: tracing::Level::INFO,
        }
    }
}

impl RunLogLayer {
    /// Keeps events at `level` and more severe.
    pub fn with_level(level: tracing::Level) -> Self {
        Self { level }
    }
}

impl<S: Subscriber> Layer<S> for RunLogLayer {
    fn on_event(&self, event: &Event<'_>, _cx: Context<'_, S>) {
        let metadata = event.metadata();
        if *metadata.level() > self.level {
            return;
        }
        if let Some(task) = crate::seam::current() {
            let mut message = Message::default();
            event.record(&mut message);
            task.log(LogLine {
                time: chrono::Utc::now(),
                level: metadata.level().to_string(),
                target: metadata.target().to_string(),
                message: message.0,
            });
        }
    }
}

/// An event's message, then its other fields as `key=value`.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}
