//! The pages: each reads what it shows from the stores and renders it as HTML, every
//! string escaped on its way in ([`esc`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use hyper::StatusCode;
use sluice_core::{FlowRunRecord, FlowState, RunFilter, TaskRunRecord, WriteMethod};

use crate::html::{badge, bytes, count, duration, esc, layout, time, url_part};
use crate::{Page, Ui};

/// Above this many task runs, the timeline is drawn only on request (`?timeline=1`).
pub(crate) const TIMELINE_LIMIT: usize = 500;
/// Log lines per page.
const LOG_PAGE: usize = 100;

/// A request's query parameters, decoded.
#[derive(Debug, Default)]
pub(crate) struct Query(BTreeMap<String, String>);

impl Query {
    pub(crate) fn parse(query: &str) -> Self {
        Self(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(&k.replace('+', " ")), decode(&v.replace('+', " ")))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// A percent-decoded URL component (invalid UTF-8 replaced).
pub(crate) fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first `n` characters of an id, as lists show it.
fn short(id: &str, n: usize) -> String {
    id.chars().take(n).collect()
}

fn error_page(status: StatusCode, title: &str, message: &str) -> Page {
    let mut page = Page::html(layout(
        title,
        &format!(
            "<h1>{}</h1><p class=\"error\">{}</p>",
            esc(title),
            esc(message)
        ),
        false,
    ));
    page.status = status;
    page
}

pub(crate) fn not_found(path: &str) -> Page {
    error_page(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("nothing at {path}"),
    )
}

/// Rows a run wrote (its sinks'), or its last task's rows when it wrote nothing.
fn run_rows(record: &FlowRunRecord) -> Option<u64> {
    let sinks: Vec<u64> = record
        .tasks
        .iter()
        .flat_map(|t| t.sinks.iter().map(|s| s.rows))
        .collect();
    if sinks.is_empty() {
        record.tasks.iter().rev().find_map(|t| t.rows)
    } else {
        Some(sinks.iter().sum())
    }
}

/// Task runs served from a checkpoint.
fn cache_hits(record: &FlowRunRecord) -> u64 {
    record
        .tasks
        .iter()
        .filter(|t| t.cache.as_ref().is_some_and(|c| c.lookup == "hit"))
        .count() as u64
}

fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(text)
        .map_err(|e| format!("since: expected 1h, 2d or an RFC 3339 time: {e}"))?;
    Ok(Utc::now() - chrono::Duration::from_std(ago).map_err(|e| e.to_string())?)
}

/// The run list's filter form, filled with the request's values.
fn filter_form(query: &Query) -> String {
    let selected = |state: &str| {
        if query.get("state") == Some(state) {
            " selected"
        } else {
            ""
        }
    };
    format!(
        "<form class=\"filters\" method=\"get\" action=\"/runs\">\
         <label>Flow <input name=\"flow\" value=\"{}\"></label>\
         <label>State <select name=\"state\"><option value=\"\">any</option>\
         <option{}>Running</option><option{}>Completed</option><option{}>Failed</option>\
         <option{}>Cancelled</option></select></label>\
         <label>Since <input name=\"since\" placeholder=\"1h, 2d or 2026-12-01T00:00:00Z\" value=\"{}\"></label>\
         <button type=\"submit\">Filter</button></form>",
        esc(query.get("flow").unwrap_or_default()),
        selected("Running"),
        selected("Completed"),
        selected("Failed"),
        selected("Cancelled"),
        esc(query.get("since").unwrap_or_default()),
    )
}

/// `/runs`: newest first, a page at a time, filtered by flow, state and start.
pub(crate) async fn runs(ui: &Ui, query: &Query) -> Page {
    let mut filter = RunFilter::default();
    let mut problems = Vec::new();
    if let Some(flow) = query.get("flow") {
        filter = filter.with_flow(flow);
    }
    if let Some(state) = query.get("state") {
        match state.parse::<FlowState>() {
            Ok(state) => filter = filter.with_state(state),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if let Some(since) = query.get("since") {
        match parse_since(since) {
            Ok(since) => filter = filter.with_since(since),
            Err(e) => problems.push(e),
        }
    }
    let mut main = String::from("<h1>Runs</h1>");
    main.push_str(&filter_form(query));
    for problem in &problems {
        let _ = write!(main, "<p class=\"error\">{}</p>", esc(problem));
    }
    let page = match ui
        .runs
        .page(&filter, query.get("after"), ui.page_size)
        .await
    {
        Ok(page) => page,
        Err(e) => {
            let _ = write!(main, "<p class=\"error\">{}</p>", esc(&e.to_string()));
            return Page::html(layout("Runs", &main, false));
        }
    };
    if page.runs.is_empty() {
        main.push_str("<p class=\"empty\">No runs.</p>");
    } else {
        main.push_str(
            "<table class=\"sortable runs\"><thead><tr><th>Run</th><th>Flow</th><th>State</th>\
             <th>Start</th><th class=\"num\">Duration</th><th class=\"num\">Rows</th>\
             <th class=\"num\">Cache hits</th></tr></thead><tbody>",
        );
        for run in &page.runs {
            let _ = write!(
                main,
                "<tr><td><a class=\"run\" href=\"/runs/{}\">{}</a></td><td>{}</td><td>{}</td>\
                 <td data-value=\"{}\">{}</td><td class=\"num\" data-value=\"{}\">{}</td>\
                 <td class=\"num\" data-value=\"{}\">{}</td><td class=\"num\">{}</td></tr>",
                url_part(&run.run_id),
                esc(&short(&run.run_id, 8)),
                esc(&run.flow),
                badge(&run.state.to_string()),
                run.start.timestamp_millis(),
                time(run.start),
                run.duration_ms.unwrap_or(-1.0),
                duration(run.duration_ms),
                run_rows(run).unwrap_or(0),
                count(run_rows(run)),
                cache_hits(run),
            );
        }
        main.push_str("</tbody></table>");
    }
    if let Some(next) = &page.next {
        let mut link = format!("/runs?after={}", url_part(next));
        for key in ["flow", "state", "since"] {
            if let Some(value) = query.get(key) {
                let _ = write!(link, "&{key}={}", url_part(value));
            }
        }
        let _ = write!(
            main,
            "<p class=\"pager\"><a class=\"next\" href=\"{}\">Older runs →</a></p>",
            esc(&link)
        );
    }
    Page::html(layout("Runs", &main, false))
}

async fn record_of(ui: &Ui, id: &str) -> Result<FlowRunRecord, Page> {
    ui.runs
        .get(id)
        .await
        .map_err(|e| error_page(StatusCode::NOT_FOUND, "Run not found", &e.to_string()))
}

/// What a sink's write path says, in a cell.
fn write_path(task: &TaskRunRecord) -> String {
    task.sinks
        .iter()
        .map(|s| match &s.method {
            WriteMethod::ColumnCopy { .. } => "column copy".to_string(),
            WriteMethod::Rewrite { reason } => format!("rewrite ({reason})"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn task_row(record: &FlowRunRecord, task: &TaskRunRecord, member: Option<usize>) -> String {
    let (class, hidden) = match member {
        Some(group) => (
            format!(" class=\"member\" data-group=\"{group}\""),
            " hidden",
        ),
        None => (String::new(), ""),
    };
    let cache = match (&task.cache, &task.cache_key) {
        (Some(cache), Some(key)) => format!(
            "<a class=\"checkpoint\" href=\"/checkpoints/{}/{}\">{}</a>{}",
            url_part(&task.name),
            url_part(key),
            esc(&cache.lookup),
            cache
                .reason
                .as_ref()
                .map(|r| format!(" <span class=\"reason\">{}</span>", esc(r)))
                .unwrap_or_default()
        ),
        (Some(cache), None) => esc(&cache.lookup),
        _ => "–".into(),
    };
    let logs = if task.logs.is_empty() {
        "–".to_string()
    } else {
        format!(
            "<a href=\"/runs/{}/logs?task={}\">{}</a>",
            url_part(&record.run_id),
            task.id,
            task.logs.len() as u64 + task.logs_dropped
        )
    };
    format!(
        "<tr{class}{hidden}><td class=\"name\">{}</td><td class=\"num\">{}</td><td>{}</td>\
         <td class=\"num\" data-value=\"{}\">{}</td><td class=\"num\" data-value=\"{}\">{}</td>\
         <td class=\"num\" data-value=\"{}\">{}</td><td class=\"num\" data-value=\"{}\">{}</td>\
         <td class=\"num\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
        esc(&task.name),
        task.id,
        badge(&format!("{:?}", task.state)),
        task.rows.unwrap_or(0),
        count(task.rows),
        task.bytes.unwrap_or(0),
        bytes(task.bytes),
        task.duration_ms.unwrap_or(-1.0),
        duration(task.duration_ms),
        task.busy_ms,
        duration(Some(task.busy_ms)),
        task.attempts.len().max(1),
        esc(&write_path(task)),
        cache,
        logs,
    )
}

/// Counts of task runs by state, as badges.
fn state_counts<'a>(tasks: impl Iterator<Item = &'a TaskRunRecord>) -> String {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        *counts.entry(format!("{:?}", task.state)).or_default() += 1;
    }
    counts
        .iter()
        .map(|(state, n)| format!("<span class=\"count\">{} {}</span>", badge(state), n))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The timeline: one bar per task run on the first row free at its start, its busy time
/// darker inside it.
fn timeline(record: &FlowRunRecord) -> String {
    let end = record.end.unwrap_or_else(Utc::now);
    let total = ((end - record.start).num_milliseconds().max(1)) as f64;
    let x = |t: DateTime<Utc>| (t - record.start).num_milliseconds().max(0) as f64 / total * 1000.0;
    let mut rows = 0;
    let mut bars = String::new();
    for (row, task) in record.timeline() {
        rows = rows.max(row + 1);
        let start = x(task.start);
        let stop = x(task.end.unwrap_or(end)).max(start + 1.0);
        let busy = (task.busy_ms / total * 1000.0).min(stop - start);
        let y = row * 14;
        let _ = write!(
            bars,
            "<g class=\"bar state-{}\"><title>{} #{}: {:?}, {} (busy {})</title>\
             <rect x=\"{start:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"12\" class=\"span\"/>\
             <rect x=\"{start:.1}\" y=\"{y}\" width=\"{busy:.1}\" height=\"12\" class=\"busy\"/></g>",
            format!("{:?}", task.state).to_ascii_lowercase(),
            esc(&task.name),
            task.id,
            task.state,
            duration(task.duration_ms),
            duration(Some(task.busy_ms)),
            stop - start,
        );
    }
    format!(
        "<svg class=\"timeline\" viewBox=\"0 0 1000 {}\" preserveAspectRatio=\"none\" \
         role=\"img\" aria-label=\"timeline\">{bars}</svg>\
         <p class=\"legend\">Each bar is a task run from its call to its end; the darker part \
         is the time it spent producing batches (busy), the rest waiting on what it reads \
         and on its sinks.</p>",
        (rows.max(1) * 14)
    )
}

/// `/runs/ID`: header, counts, task table (mapped tasks grouped), timeline, errors.
pub(crate) async fn run(ui: &Ui, id: &str, query: &Query) -> Page {
    let record = match record_of(ui, id).await {
        Ok(record) => record,
        Err(page) => return page,
    };
    let run = url_part(&record.run_id);
    let mut main = String::new();
    let _ = write!(
        main,
        "<h1>{} {}</h1><dl class=\"header\">\
         <dt>Run</dt><dd class=\"mono\">{}</dd><dt>State</dt><dd>{}</dd>\
         <dt>Start</dt><dd>{}</dd><dt>End</dt><dd>{}</dd><dt>Duration</dt><dd>{}</dd>\
         <dt>Mode</dt><dd>{:?}</dd><dt>Version</dt><dd class=\"mono\">{}</dd>\
         <dt>Runner</dt><dd>{}</dd></dl>\
         <h2>Parameters</h2><pre class=\"parameters\">{}</pre>",
        esc(&record.flow),
        badge(&record.state.to_string()),
        esc(&record.run_id),
        badge(&record.state.to_string()),
        time(record.start),
        record.end.map(time).unwrap_or_else(|| "–".into()),
        duration(record.duration_ms),
        record.mode,
        esc(record.version.as_deref().unwrap_or("–")),
        esc(record.runner.as_deref().unwrap_or("–")),
        esc(&serde_json::to_string_pretty(&record.parameters).unwrap_or_default()),
    );
    let _ = write!(
        main,
        "<p class=\"links\"><a href=\"/runs/{run}/logs\">Logs</a> · \
         <a href=\"/runs/{run}/logs.txt\" download>Download all logs</a> · \
         <a href=\"/runs/{run}/trace.json\" download>Chrome trace (Perfetto)</a></p>"
    );
    if let Some(error) = &record.error {
        let _ = write!(
            main,
            "<h2>Error</h2><pre class=\"error\">{}</pre>",
            esc(error)
        );
    }
    let _ = write!(
        main,
        "<h2>Task runs <span class=\"total\">{}</span></h2><p class=\"counts\">{}</p>",
        record.tasks.len(),
        state_counts(record.tasks.iter())
    );
    // Calls of the same task (a mapped task) are one group, collapsed.
    let mut groups: Vec<(&str, Vec<&TaskRunRecord>)> = Vec::new();
    for task in &record.tasks {
        match groups.iter_mut().find(|(name, _)| *name == task.name) {
            Some((_, calls)) => calls.push(task),
            None => groups.push((&task.name, vec![task])),
        }
    }
    main.push_str(
        "<table class=\"sortable tasks\"><thead><tr><th>Task</th><th class=\"num\">Id</th>\
         <th>State</th><th class=\"num\">Rows</th><th class=\"num\">Bytes</th>\
         <th class=\"num\">Duration</th><th class=\"num\">Busy</th><th class=\"num\">Attempts</th>\
         <th>Write path</th><th>Cache</th><th class=\"num\">Logs</th></tr></thead><tbody>",
    );
    for (group, (name, calls)) in groups.iter().enumerate() {
        if calls.len() == 1 {
            main.push_str(&task_row(&record, calls[0], None));
            continue;
        }
        let rows: u64 = calls.iter().filter_map(|t| t.rows).sum();
        let busy: f64 = calls.iter().map(|t| t.busy_ms).sum();
        let _ = write!(
            main,
            "<tr class=\"group\" data-group=\"{group}\"><td class=\"name\">\
             <button type=\"button\" class=\"toggle\" data-group=\"{group}\">▸</button> {} \
             <span class=\"calls\">× {}</span></td><td></td><td>{}</td>\
             <td class=\"num\" data-value=\"{rows}\">{}</td><td></td><td></td>\
             <td class=\"num\" data-value=\"{busy}\">{}</td><td></td><td></td><td></td><td></td></tr>",
            esc(name),
            calls.len(),
            state_counts(calls.iter().copied()),
            count(Some(rows)),
            duration(Some(busy)),
        );
        for task in calls {
            main.push_str(&task_row(&record, task, Some(group)));
        }
    }
    main.push_str("</tbody></table>");
    let failed: Vec<&TaskRunRecord> = record.tasks.iter().filter(|t| t.error.is_some()).collect();
    if !failed.is_empty() {
        main.push_str("<h2>Task errors</h2>");
        for task in failed.iter().take(50) {
            let _ = write!(
                main,
                "<h3>{} #{}</h3><pre class=\"error\">{}</pre>",
                esc(&task.name),
                task.id,
                esc(task.error.as_deref().unwrap_or_default())
            );
        }
        if failed.len() > 50 {
            let _ = write!(
                main,
                "<p>{} more failed task runs: see the task table and the logs.</p>",
                failed.len() - 50
            );
        }
    }
    main.push_str("<h2>Timeline</h2>");
    if record.tasks.len() <= TIMELINE_LIMIT || query.get("timeline").is_some() {
        main.push_str(&timeline(&record));
    } else {
        let _ = write!(
            main,
            "<p class=\"deferred\">{} task runs: the timeline is drawn on request. \
             <a href=\"/runs/{run}?timeline=1\">Draw it</a>, or open the \
             <a href=\"/runs/{run}/trace.json\" download>Chrome trace</a> in Perfetto.</p>",
            record.tasks.len()
        );
    }
    Page::html(layout(
        &format!("{} {}", record.flow, short(&record.run_id, 8)),
        &main,
        record.state == FlowState::Running,
    ))
}

/// Every log line of a run, oldest first: time, level, task, id, message.
fn log_lines(
    record: &FlowRunRecord,
    task: Option<u64>,
) -> Vec<(DateTime<Utc>, String, String, u64, String)> {
    let mut lines: Vec<_> = record
        .tasks
        .iter()
        .filter(|t| task.is_none_or(|id| t.id == id))
        .flat_map(|t| {
            t.logs.iter().map(|l| {
                (
                    l.time,
                    l.level.clone(),
                    t.name.clone(),
                    t.id,
                    l.message.clone(),
                )
            })
        })
        .collect();
    lines.sort_by_key(|l| l.0);
    lines
}

/// `/runs/ID/logs`: the run's log lines (or one task run's), a page at a time.
pub(crate) async fn logs(ui: &Ui, id: &str, query: &Query) -> Page {
    let record = match record_of(ui, id).await {
        Ok(record) => record,
        Err(page) => return page,
    };
    let task = query.get("task").and_then(|t| t.parse::<u64>().ok());
    let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let lines = log_lines(&record, task);
    let pages = lines.len().div_ceil(LOG_PAGE).max(1);
    let run = url_part(&record.run_id);
    let mut main = format!(
        "<h1>Logs of <a href=\"/runs/{run}\">{} {}</a></h1>\
         <p class=\"links\"><a href=\"/runs/{run}/logs.txt\" download>Download all logs</a></p>",
        esc(&record.flow),
        esc(&short(&record.run_id, 8)),
    );
    let dropped: u64 = record
        .tasks
        .iter()
        .filter(|t| task.is_none_or(|id| t.id == id))
        .map(|t| t.logs_dropped)
        .sum();
    if dropped > 0 {
        let _ = write!(
            main,
            "<p class=\"note\">{dropped} more lines were emitted than a record keeps \
             ({} per task run).</p>",
            sluice_core::MAX_LOG_LINES
        );
    }
    main.push_str(
        "<table class=\"logs\"><thead><tr><th>Time</th><th>Level</th><th>Task</th>\
         <th>Message</th></tr></thead><tbody>",
    );
    for (at, level, name, task_id, message) in lines.iter().skip(page * LOG_PAGE).take(LOG_PAGE) {
        let _ = write!(
            main,
            "<tr><td class=\"mono\">{}</td><td>{}</td><td>{} #{}</td><td class=\"message\">{}</td></tr>",
            at.format("%H:%M:%S%.3f"),
            esc(level),
            esc(name),
            task_id,
            esc(message)
        );
    }
    main.push_str("</tbody></table>");
    let base = match task {
        Some(t) => format!("/runs/{run}/logs?task={t}&"),
        None => format!("/runs/{run}/logs?"),
    };
    let _ = write!(main, "<p class=\"pager\">Page {} of {pages}", page + 1);
    if page > 0 {
        let _ = write!(main, " · <a href=\"{base}page={}\">newer ←</a>", page - 1);
    }
    if page + 1 < pages {
        let _ = write!(
            main,
            " · <a class=\"next\" href=\"{base}page={}\">→ later</a>",
            page + 1
        );
    }
    main.push_str("</p>");
    Page::html(layout("Logs", &main, record.state == FlowState::Running))
}

/// `/runs/ID/logs.txt`: every log line of the run, as text.
pub(crate) async fn logs_text(ui: &Ui, id: &str) -> Page {
    let record = match record_of(ui, id).await {
        Ok(record) => record,
        Err(page) => return page,
    };
    let mut text = String::new();
    for (at, level, name, task_id, message) in log_lines(&record, None) {
        let _ = writeln!(
            text,
            "{} {level:>5} {name}#{task_id} {message}",
            at.to_rfc3339()
        );
    }
    Page::text(StatusCode::OK, "text/plain; charset=utf-8", text)
        .download(&format!("sluice-run-{}.log", record.run_id))
}

/// `/runs/ID/trace.json`: the run as a Chrome trace.
pub(crate) async fn trace(ui: &Ui, id: &str) -> Page {
    match record_of(ui, id).await {
        Ok(record) => Page::text(
            StatusCode::OK,
            "application/json",
            record.chrome_trace().to_string(),
        )
        .download(&format!("sluice-run-{}.json", record.run_id)),
        Err(page) => page,
    }
}

/// `/checkpoints`: every checkpoint of the result store (or one task's).
pub(crate) async fn checkpoints(ui: &Ui, query: &Query) -> Page {
    let mut main = format!(
        "<h1>Checkpoints</h1><p class=\"store mono\">{}</p>",
        esc(&sluice_store::redact(ui.cache.url()))
    );
    let entries = match ui.cache.list().await {
        Ok(entries) => entries,
        Err(e) => {
            let _ = write!(main, "<p class=\"error\">{}</p>", esc(&e.to_string()));
            return Page::html(layout("Checkpoints", &main, false));
        }
    };
    let task = query.get("task");
    let entries: Vec<_> = entries
        .into_iter()
        .filter(|e| task.is_none_or(|t| e.task == t))
        .collect();
    if entries.is_empty() {
        main.push_str("<p class=\"empty\">No checkpoints.</p>");
        return Page::html(layout("Checkpoints", &main, false));
    }
    main.push_str(
        "<table class=\"sortable checkpoints\"><thead><tr><th>Task</th><th>Key</th><th>State</th>\
         <th class=\"num\">Rows</th><th class=\"num\">Size</th><th>Created</th><th>Expires</th>\
         <th>Last hit</th></tr></thead><tbody>",
    );
    let when = |t: Option<DateTime<Utc>>| t.map(time).unwrap_or_else(|| "–".into());
    for entry in &entries {
        let _ = write!(
            main,
            "<tr><td>{}</td><td class=\"mono\"><a class=\"checkpoint\" href=\"/checkpoints/{}/{}\">{}</a></td>\
             <td>{}</td><td class=\"num\" data-value=\"{}\">{}</td><td class=\"num\" data-value=\"{}\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&entry.task),
            url_part(&entry.task),
            url_part(&entry.key),
            esc(&short(&entry.key, 12)),
            badge(&entry.state),
            entry.rows.unwrap_or(0),
            count(entry.rows),
            entry.bytes,
            bytes(Some(entry.bytes)),
            when(entry.created),
            when(entry.expires),
            when(entry.last_hit),
        );
    }
    main.push_str("</tbody></table>");
    Page::html(layout("Checkpoints", &main, false))
}

/// `/checkpoints/TASK/KEY`: one checkpoint's manifest: its key's inputs and plan.
pub(crate) async fn checkpoint(ui: &Ui, task: &str, key: &str) -> Page {
    let manifest = match ui.cache.show(task, key).await {
        Ok(manifest) => manifest,
        Err(e) => {
            return error_page(
                StatusCode::NOT_FOUND,
                "Checkpoint not found",
                &e.to_string(),
            );
        }
    };
    let inputs = &manifest.key_inputs;
    let mut main = format!(
        "<h1>{} <span class=\"mono\">{}</span></h1><dl class=\"header\">\
         <dt>Rows</dt><dd>{}</dd><dt>Size</dt><dd>{}</dd><dt>Files</dt><dd>{}</dd>\
         <dt>Created</dt><dd>{}</dd><dt>Expires</dt><dd>{}</dd><dt>Policy</dt><dd>{}</dd>\
         <dt>Compression</dt><dd>{}</dd><dt>Code version</dt><dd class=\"mono\">{}</dd>\
         <dt>Written by</dt><dd><a class=\"run\" href=\"/runs/{}\">run {}</a></dd></dl>",
        esc(&manifest.task),
        esc(&manifest.key),
        count(Some(manifest.rows)),
        bytes(Some(manifest.files.iter().map(|f| f.size).sum())),
        manifest.files.len(),
        time(manifest.created),
        manifest.expires.map(time).unwrap_or_else(|| "never".into()),
        esc(&manifest.policy),
        esc(&manifest.compression),
        esc(manifest.code_version.as_deref().unwrap_or("–")),
        url_part(&manifest.flow_run),
        esc(&short(&manifest.flow_run, 8)),
    );
    main.push_str("<h2>What the key covers</h2>");
    let _ = write!(
        main,
        "<dl class=\"header\"><dt>Task</dt><dd>{}</dd><dt>Version</dt><dd class=\"mono\">{}</dd>\
         <dt>Engine</dt><dd>{}</dd><dt>Key format</dt><dd>{}</dd></dl>",
        esc(&inputs.task),
        esc(inputs.version.as_deref().unwrap_or("–")),
        esc(&inputs.engine),
        inputs.key_format,
    );
    if !inputs.sources.is_empty() {
        main.push_str(
            "<h3>Source objects</h3><table class=\"sources\"><thead><tr><th>Object</th>\
             <th class=\"num\">Size</th><th>ETag</th><th>Modified</th></tr></thead><tbody>",
        );
        for source in &inputs.sources {
            let _ = write!(
                main,
                "<tr><td class=\"mono\">{}</td><td class=\"num\">{}</td><td class=\"mono\">{}</td><td>{}</td></tr>",
                esc(&source.url),
                bytes(Some(source.size)),
                esc(source.e_tag.as_deref().unwrap_or("–")),
                time(source.last_modified),
            );
        }
        main.push_str("</tbody></table>");
    }
    if !inputs.upstream.is_empty() {
        main.push_str("<h3>Upstream checkpoints</h3><ul>");
        for upstream in &inputs.upstream {
            let _ = write!(
                main,
                "<li><a class=\"checkpoint\" href=\"/checkpoints/{}/{}\">{} {}</a></li>",
                url_part(&upstream.task),
                url_part(&upstream.key),
                esc(&upstream.task),
                esc(&upstream.key),
            );
        }
        main.push_str("</ul>");
    }
    for (title, map) in [
        ("Settings", &inputs.settings),
        ("Functions", &inputs.functions),
    ] {
        if map.is_empty() {
            continue;
        }
        let _ = write!(main, "<h3>{title}</h3><table class=\"kv\"><tbody>");
        for (k, v) in map {
            let _ = write!(
                main,
                "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td></tr>",
                esc(k),
                esc(v)
            );
        }
        main.push_str("</tbody></table>");
    }
    let _ = write!(
        main,
        "<h3>Parameters</h3><pre>{}</pre><h3>Lineage</h3><pre>{}</pre><h2>Plan</h2><pre class=\"plan\">{}</pre>",
        esc(&serde_json::to_string_pretty(&inputs.parameters).unwrap_or_default()),
        esc(&serde_json::to_string_pretty(&inputs.lineage).unwrap_or_default()),
        esc(&manifest.plan),
    );
    Page::html(layout(
        &format!("{} checkpoint", manifest.task),
        &main,
        false,
    ))
}
