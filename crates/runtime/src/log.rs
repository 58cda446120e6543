//! One tracing set-up for both binaries, with one JSON log schema.
//!
//! # JSON schema (one object per line)
//! ```text
//! {"timestamp":"2026-12-04T20:15:03.123456Z",   RFC 3339, UTC, microseconds
//!  "level":"INFO",                                TRACE | DEBUG | INFO | WARN | ERROR
//!  "service":"gait-agent",                        gait-agent | gait-aggregator
//!  "target":"gait_agent::uplink",                 the Rust module that logged
//!  "message":"bundle activated",                  may be empty
//!  "fields":{"epoch":4,"agent_id":"a1"},          present when the event has fields besides the message
//!  "spans":["session"]}                           present inside spans, outermost first
//! ```
//! Field values keep their JSON type where tracing knows it (integers, floats, booleans, strings); anything
//! recorded with `?` or `%` is a string.
//!
//! # Never panic, never block
//! Lines are handed to a bounded background writer ([`tracing_appender::non_blocking`], lossy): when stderr is a
//! pipe nobody reads, lines are dropped and counted instead of stalling a decision. A write error (a closed pipe:
//! `gait-agent run 2>&1 | head -3`) is swallowed and counted; tracing-subscriber's own error report (an
//! `eprintln!`, which panics on a closed stderr) is switched off. Rust ignores `SIGPIPE`, so the process keeps
//! running and keeps reacting to signals.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Lines the background writer may hold before it drops new ones.
const BUFFERED_LINES: usize = 64 * 1024;

/// Writes to stderr that failed (closed or broken pipe, full disk behind a redirect) since start.
static STDERR_WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable text; coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, in the schema of this module's documentation.
    Json,
}

impl FromStr for LogFormat {
    type Err = LogError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(LogError::Format(other.to_owned())),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log filter is not valid tracing `EnvFilter` syntax.
    #[error(
        "invalid log filter {filter:?}: {reason} (use a level such as `info`, or `info,gait_agent=debug`)"
    )]
    Filter {
        /// The filter as given.
        filter: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The log format is neither `text` nor `json`.
    #[error("invalid log format {0:?}: expected `text` or `json`")]
    Format(String),
    /// A global subscriber was already installed (a second call in one process).
    #[error("logging is already initialised in this process")]
    AlreadyInitialised,
}

/// Keeps the background log writer alive; dropping it flushes the lines still buffered. Hold it in `main` until
/// the process exits.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _worker: WorkerGuard,
    dropped: ErrorCounter,
}

impl LogGuard {
    /// Lines dropped because the writer's buffer was full (stderr not drained).
    pub fn dropped_lines(&self) -> usize {
        self.dropped.dropped_lines()
    }
}

impl fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogGuard")
            .field("dropped_lines", &self.dropped_lines())
            .finish()
    }
}

/// Writes to stderr that failed since the process started (a closed pipe, say). Never reset.
pub fn stderr_write_errors() -> u64 {
    STDERR_WRITE_ERRORS.load(Ordering::Relaxed)
}

/// Installs the global tracing subscriber: `filter` in `EnvFilter` syntax, lines in `format`, every JSON line
/// stamped with `service`.
pub fn init_tracing(
    service: &'static str,
    format: LogFormat,
    filter: &str,
) -> Result<LogGuard, LogError> {
    let env_filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| LogError::Filter {
            filter: filter.to_owned(),
            reason: e.to_string(),
        })?;
    let ansi = format == LogFormat::Text && io::IsTerminal::is_terminal(&io::stderr());
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("gait-log")
        .finish(QuietStderr);
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .log_internal_errors(false);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.event_format(JsonLines { service }).try_init(),
    };
    installed.map_err(|_| LogError::AlreadyInitialised)?;
    Ok(LogGuard {
        _worker: worker,
        dropped,
    })
}

/// stderr that reports every write as done: a failed write is counted, never returned, so nothing above it can
/// turn a closed pipe into a panic or a retry loop.
struct QuietStderr;

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if io::stderr().write_all(buf).is_err() {
            STDERR_WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if io::stderr().flush().is_err() {
            STDERR_WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The JSON event formatter of the schema above.
pub struct JsonLines {
    /// Value of the `service` key on every line.
    pub service: &'static str,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let line = json_line(
            self.service,
            event,
            ctx.event_scope().map(|scope| {
                scope
                    .from_root()
                    .map(|span| Value::String(span.name().to_owned()))
                    .collect::<Vec<_>>()
            }),
        );
        writeln!(writer, "{line}")
    }
}

/// Builds one log line's JSON object.
fn json_line(service: &str, event: &Event<'_>, spans: Option<Vec<Value>>) -> Value {
    let meta = event.metadata();
    let mut fields = FieldMap::default();
    event.record(&mut fields);
    let mut line = Map::new();
    line.insert("timestamp".into(), Value::String(timestamp()));
    line.insert(
        "level".into(),
        Value::String(meta.level().as_str().to_owned()),
    );
    line.insert("service".into(), Value::String(service.to_owned()));
    line.insert("target".into(), Value::String(meta.target().to_owned()));
    line.insert(
        "message".into(),
        Value::String(fields.message.unwrap_or_default()),
    );
    if !fields.fields.is_empty() {
        line.insert("fields".into(), Value::Object(fields.fields));
    }
    if let Some(spans) = spans.filter(|s| !s.is_empty()) {
        line.insert("spans".into(), Value::Array(spans));
    }
    Value::Object(line)
}

#[allow(clippy::disallowed_methods)] // a log line's timestamp is the wall clock by definition
fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    now.format(&format)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// Collects an event's fields with their JSON types.
#[derive(Default)]
struct FieldMap {
    message: Option<String>,
    fields: Map<String, Value>,
}

impl FieldMap {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else if !name.starts_with("log.") {
            self.fields.insert(name.to_owned(), value);
        }
    }
}

impl Visit for FieldMap {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.put(field, v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn capture(f: impl FnOnce()) -> Vec<Value> {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || sink.clone())
            .event_format(JsonLines {
                service: "gait-test",
            });
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().expect("buffer").clone();
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is one JSON object"))
            .collect()
    }

    #[test]
    fn a_json_line_carries_the_schema_keys_with_typed_fields() {
        let lines = capture(|| {
            let span = tracing::info_span!("session", peer = "x");
            let _entered = span.enter();
            tracing::warn!(epoch = 4u64, delta = -2i64, ok = true, ratio = 0.5, name = "a1", why = ?"dbg", "bundle refused");
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["service"], "gait-test");
        assert_eq!(line["message"], "bundle refused");
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["fields"]["epoch"], 4);
        assert_eq!(line["fields"]["delta"], -2);
        assert_eq!(line["fields"]["ok"], true);
        assert_eq!(line["fields"]["ratio"], 0.5);
        assert_eq!(line["fields"]["name"], "a1");
        assert_eq!(line["fields"]["why"], "\"dbg\"");
        assert_eq!(line["spans"], serde_json::json!(["session"]));
        let ts = line["timestamp"].as_str().expect("timestamp");
        assert!(
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok(),
            "timestamp {ts} is RFC 3339"
        );
    }

    #[test]
    fn a_line_without_fields_or_spans_omits_those_keys() {
        let lines = capture(|| tracing::info!("started"));
        let line = lines[0].as_object().expect("object");
        assert!(!line.contains_key("fields"));
        assert!(!line.contains_key("spans"));
        assert_eq!(line["message"], "started");
    }

    #[test]
    fn log_format_parses_its_two_names_only() {
        assert_eq!("json".parse::<LogFormat>().ok(), Some(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>().ok(), Some(LogFormat::Text));
        assert!("JSON".parse::<LogFormat>().is_err());
    }
}
