//! Live progress of a flow run: a bar per task on a terminal, a plain line every few
//! seconds otherwise.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::Error;
use crate::record::TaskState;
use crate::runtime::flow::FlowRunShared;
use crate::runtime::run::LiveTask;

/// How a flow run shows its progress: for each task, rows and bytes out so far,
/// rows per second, and a percentage where the rows of its Parquet sources are known
/// from their footers.
///
/// ```
/// use std::time::Duration;
/// use sluice_core::Progress;
/// assert_eq!("lines:2s".parse::<Progress>().unwrap(), Progress::Lines(Duration::from_secs(2)));
/// assert_eq!("auto".parse::<Progress>().unwrap(), Progress::Auto);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// Nothing (the default).
    #[default]
    Off,
    /// Bars when standard error is a terminal, else a line every 5 s.
    Auto,
    /// A bar per task on standard error, redrawn 10 times a second. Print logs
    /// through [`ProgressWriter`] so that they do not garble the bars.
    Bars,
    /// One line on standard error at this interval, and one at the end (none for a
    /// run shorter than the interval).
    Lines(Duration),
}

impl std::str::FromStr for Progress {
    type Err = Error;

    /// `off`, `auto`, `bars`, `lines` (every 5 s) or `lines:<duration>` (`lines:2s`).
    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidOption {
            option: "progress",
            reason,
        };
        match s {
            "off" => Ok(Progress::Off),
            "auto" => Ok(Progress::Auto),
            "bars" => Ok(Progress::Bars),
            "lines" => Ok(Progress::Lines(DEFAULT_INTERVAL)),
            other => match other.strip_prefix("lines:") {
                Some(every) => humantime::parse_duration(every)
                    .map(Progress::Lines)
                    .map_err(|e| {
                        invalid(format!(
                            "{every:?} is not a duration such as 2s or 500ms: {e}"
                        ))
                    }),
                None => Err(invalid(format!(
                    "{other:?} is not a progress mode; use off, auto, bars, lines or lines:2s"
                ))),
            },
        }
    }
}

const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// The bars of every flow run in the process, drawn on standard error.
fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// A writer to standard error that hides the progress bars while it writes, so that
/// log lines and bars do not garble each other. Give it to `tracing_subscriber`:
/// `tracing_subscriber::fmt().with_writer(ProgressWriter)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgressWriter;

impl Write for ProgressWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        multi().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ProgressWriter {
    type Writer = ProgressWriter;

    fn make_writer(&'a self) -> Self::Writer {
        ProgressWriter
    }
}

/// The progress display of one flow run, from its start to its end.
#[derive(Debug)]
pub(crate) struct Reporter {
    task: tokio::task::JoinHandle<()>,
    display: Arc<std::sync::Mutex<Display>>,
    shared: Arc<FlowRunShared>,
}

impl Reporter {
    /// Starts showing `shared`'s progress, unless `mode` is off.
    pub(crate) fn start(shared: &Arc<FlowRunShared>, mode: Progress) -> Option<Reporter> {
        let mode = match mode {
            Progress::Off => return None,
            Progress::Auto if std::io::stderr().is_terminal() => Progress::Bars,
            Progress::Auto => Progress::Lines(DEFAULT_INTERVAL),
            other => other,
        };
        let (display, every) = match mode {
            Progress::Bars => (Display::Bars(HashMap::new()), Duration::from_millis(100)),
            Progress::Lines(every) => (Display::Lines { printed: false }, every),
            _ => return None,
        };
        let display = Arc::new(std::sync::Mutex::new(display));
        let task = tokio::spawn({
            let (shared, display) = (Arc::clone(shared), Arc::clone(&display));
            async move {
                let mut ticks = tokio::time::interval(every);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    draw(&shared, &display, false);
                }
            }
        });
        Some(Reporter {
            task,
            display,
            shared: Arc::clone(shared),
        })
    }

    /// Stops the display, drawing the final state.
    pub(crate) fn finish(self) {
        self.task.abort();
        draw(&self.shared, &self.display, true);
    }
}

#[derive(Debug)]
enum Display {
    Bars(HashMap<u64, ProgressBar>),
    /// Whether a line was printed: a run shorter than one interval prints none.
    Lines {
        printed: bool,
    },
}

fn draw(shared: &FlowRunShared, display: &std::sync::Mutex<Display>, last: bool) {
    let tasks = shared.live_tasks();
    let mut display = display.lock().unwrap_or_else(|p| p.into_inner());
    match &mut *display {
        Display::Bars(bars) => {
            for task in &tasks {
                let bar = bars.entry(task.id).or_insert_with(|| new_bar(task));
                if let Some(expected) = task.expected_rows {
                    bar.set_length(expected);
                }
                bar.set_position(task.rows);
                bar.set_message(figures(task));
                if last || task.state.is_final() {
                    bar.finish();
                }
            }
        }
        Display::Lines { printed } => {
            if last && !*printed {
                return;
            }
            *printed = true;
            let line = tasks
                .iter()
                .map(|t| format!("{} {}", t.name, figures(t)))
                .collect::<Vec<_>>()
                .join("; ");
            let when = if last { "done" } else { "running" };
            let _ = writeln!(
                std::io::stderr(),
                "progress {} {} ({when}, {:.1} s): {line}",
                shared.name,
                &shared.run_id[..8],
                shared.elapsed().as_secs_f64(),
            );
        }
    }
}

fn new_bar(task: &LiveTask) -> ProgressBar {
    let style = match task.expected_rows {
        Some(_) => ProgressStyle::with_template("{prefix:>12} [{bar:30}] {percent:>3}% {msg}"),
        None => ProgressStyle::with_template("{prefix:>12} {spinner} {msg}"),
    }
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bar = multi().add(ProgressBar::new(task.expected_rows.unwrap_or(0)).with_style(style));
    bar.set_prefix(task.name.clone());
    bar
}

/// `1.2M rows (41%), 120.3 MiB, 2.1M rows/s, Running`.
fn figures(task: &LiveTask) -> String {
    let mut out = format!("{} rows", count(task.rows));
    if let Some(expected) = task.expected_rows.filter(|e| *e > 0) {
        out.push_str(&format!(
            " of {} ({:.0}%)",
            count(expected),
            100.0 * task.rows as f64 / expected as f64
        ));
    }
    out.push_str(&format!(
        ", {:.1} MiB",
        task.bytes as f64 / (1 << 20) as f64
    ));
    let seconds = task.elapsed.as_secs_f64();
    if task.rows > 0 && seconds > 0.0 && !matches!(task.state, TaskState::Cached) {
        out.push_str(&format!(
            ", {} rows/s",
            count((task.rows as f64 / seconds) as u64)
        ));
    }
    out.push_str(&format!(", {:?}", task.state));
    out
}

/// `950`, `12.3k`, `4.5M`, `1.2G`.
fn count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}
