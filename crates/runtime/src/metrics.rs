//! Serving a metrics registry rendered as OpenMetrics text (what `prometheus-client` encodes) to scrapers that
//! ask for either format.
//!
//! Prometheus negotiates OpenMetrics through `Accept`; other readers (`promtool check metrics`, `curl`, the
//! daemons' tests) read the classic text format 0.0.4. The two differ only in how a counter family is named (the
//! OpenMetrics descriptor drops `_total`, the sample keeps it), in `# UNIT` lines and in the closing `# EOF`, so
//! [`to_text_format`] rewrites those and nothing else: the sample lines are the same bytes in both.
//!
//! [`ProcessCollector`] adds the standard `process_*` series (memory, CPU, open files, start time), read from
//! `/proc/self` at each scrape on Linux and absent elsewhere.

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

/// Registers `metric` under the name it is exposed with (a counter's `…_total`: the registry appends the suffix
/// itself, so it is taken off here) and its help sentence (the registry appends the final period itself).
pub fn register(
    registry: &mut prometheus_client::registry::Registry,
    exposed_name: &str,
    help: &str,
    metric: impl prometheus_client::registry::Metric,
) {
    let name = match metric.metric_type() {
        prometheus_client::metrics::MetricType::Counter => {
            exposed_name.strip_suffix("_total").unwrap_or(exposed_name)
        }
        _ => exposed_name,
    };
    registry.register(name, help.strip_suffix('.').unwrap_or(help), metric);
}

/// The standard process series, read from `/proc/self` at each scrape (Linux; nothing elsewhere). A value that
/// cannot be read is left out of that scrape rather than reported as 0.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessCollector;

/// Linux's `USER_HZ`, the unit of the CPU times in `/proc/self/stat` (100 on every architecture Linux
/// exports to user space).
#[cfg(target_os = "linux")]
const USER_HZ: f64 = 100.0;

/// One reading of `/proc/self`.
#[derive(Debug, Default, PartialEq)]
struct ProcessSample {
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
    resident_bytes: Option<i64>,
    open_fds: Option<i64>,
}

/// `utime + stime` and `starttime` (both in clock ticks) from the text of `/proc/<pid>/stat`. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field n of proc(5) is fields[n - 3]: utime 14, stime 15, starttime 22.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some((utime + stime, start))
}

/// A `key:   value kB` line of `/proc/self/status` (e.g. `VmRSS`), in bytes.
fn parse_status_kb(status: &str, key: &str) -> Option<i64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    let kb: i64 = line.split_whitespace().next()?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Boot time (`btime`, Unix seconds) from `/proc/stat`.
fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

impl ProcessSample {
    #[cfg(target_os = "linux")]
    fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let ticks = stat.as_deref().and_then(parse_stat);
        let btime = std::fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(parse_btime);
        Self {
            cpu_seconds: ticks.map(|(cpu, _)| cpu as f64 / USER_HZ),
            start_time_seconds: ticks
                .zip(btime)
                .map(|((_, start), boot)| boot as f64 + start as f64 / USER_HZ),
            resident_bytes: std::fs::read_to_string("/proc/self/status")
                .ok()
                .as_deref()
                .and_then(|s| parse_status_kb(s, "VmRSS")),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| i64::try_from(d.count()).unwrap_or(i64::MAX)),
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn read() -> Self {
        Self::default()
    }
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        let sample = ProcessSample::read();
        if let Some(v) = sample.cpu_seconds {
            let m = ConstCounter::new(v);
            m.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                m.metric_type(),
            )?)?;
        }
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                sample.resident_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                sample.open_fds,
            ),
        ] {
            if let Some(v) = value {
                let m = ConstGauge::new(v);
                m.encode(encoder.encode_descriptor(name, help, None, m.metric_type())?)?;
            }
        }
        if let Some(v) = sample.start_time_seconds {
            let m = ConstGauge::new(v);
            m.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                m.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis must not shift the fields.
        let stat = "4242 (gait (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 123456 1000 200";
        assert_eq!(parse_stat(stat), Some((300, 123_456)));
        assert_eq!(parse_stat("4242 (short"), None);
        assert_eq!(
            parse_status_kb("Name:\tx\nVmRSS:\t  2048 kB\n", "VmRSS"),
            Some(2048 * 1024)
        );
        assert_eq!(
            parse_btime("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_series_are_read_from_proc_and_pass_the_text_format() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, &registry).expect("encode");
        let text = to_text_format(&om);
        assert!(!text.contains(".."), "{text}");
        for series in [
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total ",
            "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes ",
            "# TYPE process_open_fds gauge\nprocess_open_fds ",
            "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds ",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
        let sample = ProcessSample::read();
        assert!(sample.resident_bytes.is_some_and(|b| b > 0));
        assert!(sample.open_fds.is_some_and(|n| n > 0));
        assert!(
            sample
                .start_time_seconds
                .is_some_and(|t| t > 1_600_000_000.0)
        );
    }

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
