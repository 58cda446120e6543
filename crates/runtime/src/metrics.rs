//! Serving a metrics registry rendered as OpenMetrics text (what `prometheus-client` encodes) to scrapers that
//! ask for either format.
//!
//! Prometheus negotiates OpenMetrics through `Accept`; other readers (`promtool check metrics`, `curl`, the
//! daemons' tests) read the classic text format 0.0.4. The two differ only in how a counter family is named (the
//! OpenMetrics descriptor drops `_total`, the sample keeps it), in `# UNIT` lines and in the closing `# EOF`, so
//! [`to_text_format`] rewrites those and nothing else: the sample lines are the same bytes in both.

use std::collections::HashSet;

/// Content type of the OpenMetrics text exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text exposition.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper's `Accept` header asks for OpenMetrics (Prometheus does; a bare `curl` does not).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// The body and content type for a scrape: the OpenMetrics text as is when the scraper asked for it, otherwise
/// converted with [`to_text_format`].
pub fn negotiate(openmetrics: String, accept: Option<&str>) -> (&'static str, String) {
    if wants_openmetrics(accept) {
        (OPENMETRICS_CONTENT_TYPE, openmetrics)
    } else {
        (TEXT_CONTENT_TYPE, to_text_format(&openmetrics))
    }
}

/// OpenMetrics text → Prometheus text format 0.0.4: a counter family's `# HELP`/`# TYPE` name gains `_total`
/// (the name its samples carry), `# UNIT` and `# EOF` lines are dropped. Other lines are kept verbatim.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = descriptor {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM: &str = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{route=\"/a\"} 2\n\
        # HELP x_open Open now.\n# TYPE x_open gauge\nx_open 1\n# HELP x_wait Wait.\n# TYPE x_wait histogram\n\
        # UNIT x_wait seconds\nx_wait_sum 0.5\nx_wait_count 1\nx_wait_bucket{le=\"+Inf\"} 1\n# EOF\n";

    #[test]
    fn counters_take_their_sample_name_and_eof_goes() {
        let text = to_text_format(OM);
        assert!(
            text.contains("# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\n")
        );
        assert!(text.contains("\nx_requests_total{route=\"/a\"} 2\n"));
        assert!(text.contains("# TYPE x_open gauge\nx_open 1\n"));
        assert!(text.contains("# TYPE x_wait histogram\nx_wait_sum"));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    }

    #[test]
    fn openmetrics_only_when_asked() {
        let (ct, body) = negotiate(
            OM.to_owned(),
            Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
        );
        assert_eq!((ct, body.as_str()), (OPENMETRICS_CONTENT_TYPE, OM));
        let (ct, body) = negotiate(OM.to_owned(), None);
        assert_eq!(ct, TEXT_CONTENT_TYPE);
        assert!(!body.contains("# EOF"));
    }
}
