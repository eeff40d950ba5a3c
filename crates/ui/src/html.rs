//! HTML building blocks: escaping, the page layout, small formatters.

use chrono::{DateTime, Utc};

/// `text` safe inside an element or a quoted attribute: `&`, `<`, `>`, `"` and `'`
/// escaped. Every string from a record, a manifest or a request goes through it.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as one component of a URL path or query value.
pub(crate) fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A whole page: `title` (escaped here), the navigation, `main` (already HTML).
/// `live` marks a page that refreshes itself while its run is running.
pub(crate) fn layout(title: &str, main: &str, live: bool) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Sluice</title><link rel=\"stylesheet\" href=\"/assets/app.css\">\
         <script src=\"/assets/app.js\" defer></script></head>\
         <body><header><a class=\"brand\" href=\"/runs\">Sluice</a>\
         <nav><a href=\"/runs\">Runs</a><a href=\"/checkpoints\">Checkpoints</a></nav></header>\
         <main id=\"main\" data-live=\"{live}\">{main}</main></body></html>\n",
        title = esc(title),
    )
}

/// A state as a badge.
pub(crate) fn badge(state: &str) -> String {
    let class: String = state
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("<span class=\"badge state-{class}\">{}</span>", esc(state))
}

/// A time, to the second, in UTC.
pub(crate) fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Milliseconds as `850 ms`, `12.3 s`, `4m 05s`.
pub(crate) fn duration(ms: Option<f64>) -> String {
    match ms {
        None => "–".into(),
        Some(ms) if ms < 1_000.0 => format!("{ms:.0} ms"),
        Some(ms) if ms < 60_000.0 => format!("{:.1} s", ms / 1e3),
        Some(ms) => {
            let s = (ms / 1e3).round() as u64;
            format!("{}m {:02}s", s / 60, s % 60)
        }
    }
}

/// Bytes as `512 B`, `3.2 MiB`.
pub(crate) fn bytes(n: Option<u64>) -> String {
    match n {
        None => "–".into(),
        Some(n) if n < 1024 => format!("{n} B"),
        Some(n) => {
            let mut value = n as f64;
            let mut unit = "B";
            for next in ["KiB", "MiB", "GiB", "TiB"] {
                if value < 1024.0 {
                    break;
                }
                value /= 1024.0;
                unit = next;
            }
            format!("{value:.1} {unit}")
        }
    }
}

/// A count with thousands separators.
pub(crate) fn count(n: Option<u64>) -> String {
    let Some(n) = n else { return "–".into() };
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped_in_text_and_attributes() {
        let hostile = "<img src=x onerror=\"alert('x')\">&";
        let escaped = esc(hostile);
        assert!(!escaped.contains('<') && !escaped.contains('"') && !escaped.contains('\''));
        assert_eq!(
            escaped,
            "&lt;img src=x onerror=&quot;alert(&#39;x&#39;)&quot;&gt;&amp;"
        );
        assert!(!layout(hostile, "", false).contains("<img"));
        assert!(!badge(hostile).contains("<img"));
        assert_eq!(url_part("a b/<c>"), "a%20b%2F%3Cc%3E");
    }

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(count(Some(12_000_000)), "12,000,000");
        assert_eq!(bytes(Some(3 * 1024 * 1024)), "3.0 MiB");
        assert_eq!(duration(Some(245_000.0)), "4m 05s");
        assert_eq!(duration(Some(850.0)), "850 ms");
    }
}
