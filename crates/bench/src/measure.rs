//! Wall time and peak RSS of one command, as its own process.
//!
//! `getrusage(RUSAGE_CHILDREN)` reports the largest peak RSS among the children a
//! process has waited for, so the runner never measures a case itself: it starts
//! `sluice-bench measure -- CMD...`, a small process whose only child is the case, and
//! reads the JSON that process prints.
//!
//! Linux's `ru_maxrss` of a process is its `VmHWM`: the most resident memory it ever
//! held, in KiB, sampled by the kernel, so a short spike between two samples of a
//! poller is never missed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// One run of one command.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Wall time from spawn to exit, in seconds.
    pub wall_s: f64,
    /// The child's peak resident set size, in MiB (`ru_maxrss`).
    pub peak_rss_mib: f64,
}

/// What `sluice-bench measure` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    /// The figures.
    #[serde(flatten)]
    pub sample: Sample,
    /// The exit code, `None` if killed by a signal.
    pub exit_code: Option<i32>,
    /// The end of the child's stderr, when it failed.
    pub stderr_tail: Option<String>,
}

/// Runs `command` as this process's only child and measures it. The body of
/// `sluice-bench measure`.
pub fn measure_here(command: &[String]) -> anyhow::Result<Measured> {
    let (program, args) = command.split_first().context("no command to measure")?;
    let started = Instant::now();
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot start {program}"))?;
    let wall_s = started.elapsed().as_secs_f64();
    let peak_rss_mib = children_max_rss_kib()? as f64 / 1024.0;
    let stderr_tail = (!output.status.success()).then(|| {
        let text = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    });
    Ok(Measured {
        sample: Sample {
            wall_s,
            peak_rss_mib,
        },
        exit_code: output.status.code(),
        stderr_tail,
    })
}

/// The largest `ru_maxrss` among the children this process has waited for, in KiB.
#[allow(unsafe_code)]
fn children_max_rss_kib() -> anyhow::Result<i64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable `rusage`; getrusage writes only into it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    anyhow::ensure!(
        rc == 0,
        "getrusage failed: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: getrusage returned 0, so it filled the struct (zeroed before anyway).
    let usage = unsafe { usage.assume_init() };
    Ok(usage.ru_maxrss)
}

/// Measures `command` through a `measure` process of the binary at `exe`; fails when
/// the command does.
pub fn measure_child(
    exe: &Path,
    command: &[String],
    env: &[(&str, String)],
) -> anyhow::Result<Sample> {
    let output = Command::new(exe)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .arg("measure")
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "`{} measure` failed ({})",
        exe.display(),
        output.status
    );
    let measured: Measured = serde_json::from_slice(&output.stdout)
        .context("cannot parse what `sluice-bench measure` printed")?;
    match measured.exit_code {
        Some(0) => Ok(measured.sample),
        code => anyhow::bail!(
            "`{}` failed (exit code {code:?}): {}",
            command.join(" "),
            measured.stderr_tail.unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figure is the child's peak: a Python process that touches 200 MiB peaks
    /// above that. (A small child measured in this test process would report the
    /// largest child so far: that is why the runner measures through `measure`.)
    #[test]
    fn measures_the_child_peak_rss() -> anyhow::Result<()> {
        let python = |code: &str| vec!["python3".to_string(), "-c".to_string(), code.to_string()];
        let big = measure_here(&python(
            "b = bytearray(200 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1",
        ))?;
        assert_eq!(big.exit_code, Some(0));
        assert!(big.sample.peak_rss_mib > 200.0, "{big:?}");
        assert!(big.sample.wall_s > 0.0);
        Ok(())
    }

    #[test]
    fn a_failing_command_keeps_its_stderr() -> anyhow::Result<()> {
        let failed = measure_here(&[
            "sh".to_string(),
            "-c".to_string(),
            "echo boom >&2; exit 3".to_string(),
        ])?;
        assert_eq!(failed.exit_code, Some(3));
        assert_eq!(failed.stderr_tail.as_deref(), Some("boom"));
        Ok(())
    }
}
