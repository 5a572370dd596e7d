//! Logs: one structured line per event, as JSON or text, on stderr. `RUST_LOG` refines the level (default `info`).
//!
//! Stock parts: tracing-subscriber's text format, its timer and tracing-serde's field visitor for JSON, and
//! tracing-appender's non-blocking writer, so that a slow reader of stderr never blocks a request's thread. The one
//! piece of our own is [`JsonLine`], which writes tracing-subscriber's JSON line byte for byte but straight into a
//! byte buffer (why, and by how much: docs/performance.md, "Logs").

use std::cell::RefCell;
use std::fmt;
use std::io::{BufWriter, IsTerminal};

use serde::Serializer as _;
use serde::ser::SerializeMap;
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_serde::{AsSerde, SerdeMapVisitor};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line: the event's fields flattened beside `timestamp`, `level` and `target`.
    Json,
    /// `LEVEL message key=value ...`, for a person.
    Text,
}

/// Installs the log subscriber. Keep the guard until the end of `main`: dropping it writes out what is left.
pub fn init(format: LogFormat) -> WorkerGuard {
    // Colours only for a person at a terminal, never into a log file or a collector.
    let ansi = std::io::stderr().is_terminal();
    // Not lossy: at the limit a logging thread waits rather than a line being dropped, since a denial's line is the
    // operator's record of it. The channel's slots are allocated up front: the default 128,000 lines cost 3.7 MiB of
    // RSS at idle (release, 9.0 -> 12.7 MiB); 4,096 lines (~2 MiB of denial lines in flight) cost next to nothing.
    // The worker writes every line it finds queued and then flushes: buffered, a burst of lines is one write(2).
    let (writer, guard) =
        NonBlockingBuilder::default().lossy(false).buffered_lines_limit(4096).finish(BufWriter::new(std::io::stderr()));
    tracing::subscriber::set_global_default(subscriber(format, ansi, writer)).expect("the log subscriber is set once");
    guard
}

/// The subscriber `init` installs, writing to `writer` (tests and the benchmark of the log line give their own).
pub fn subscriber<W>(format: LogFormat, ansi: bool, writer: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Json => Box::new(builder.event_format(JsonLine::<SystemTime>::default()).finish()),
        LogFormat::Text => Box::new(builder.finish()),
    }
}

/// tracing-subscriber's JSON line as `fmt().json().flatten_event(true).with_current_span(false)
/// .with_span_list(false)` writes it (`timestamp`, `level`, the event's fields, `target`), with the same serializer
/// (serde_json) and field visitor (tracing-serde), but into a byte buffer handed over once. The stock format
/// passes each of serde_json's small writes, about 120 for a decision line, through an adaptor from `io::Write` to
/// `fmt::Write` that checks each one for UTF-8. `tests::json_line_is_the_stock_line` holds the two to the same bytes.
#[derive(Debug, Default)]
pub struct JsonLine<T = SystemTime> {
    timer: T,
}

impl<S, N, T> FormatEvent<S, N> for JsonLine<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        thread_local! {
            static LINE: RefCell<(String, Vec<u8>)> = const { RefCell::new((String::new(), Vec::new())) };
        }
        let mut write = |(timestamp, line): &mut (String, Vec<u8>)| {
            timestamp.clear();
            line.clear();
            self.timer.format_time(&mut Writer::new(timestamp))?;
            let meta = event.metadata();
            let mut serializer = serde_json::Serializer::new(&mut *line);
            let mut map = serializer.serialize_map(None).map_err(|_| fmt::Error)?;
            map.serialize_entry("timestamp", timestamp).map_err(|_| fmt::Error)?;
            map.serialize_entry("level", &meta.level().as_serde()).map_err(|_| fmt::Error)?;
            let mut visitor = SerdeMapVisitor::new(map);
            event.record(&mut visitor);
            let mut map = visitor.take_serializer().map_err(|_| fmt::Error)?;
            map.serialize_entry("target", meta.target()).map_err(|_| fmt::Error)?;
            map.end().map_err(|_| fmt::Error)?;
            // serde_json writes UTF-8 only; checked once here rather than per write.
            writer.write_str(std::str::from_utf8(line).map_err(|_| fmt::Error)?)?;
            writeln!(writer)
        };
        // A field whose Debug logs in turn finds the buffers taken: it gets buffers of its own.
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buffers) => write(&mut buffers),
            Err(_) => write(&mut Default::default()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A fixed clock, so that two formats' lines can be compared byte for byte.
    struct Fixed;
    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-12-02T03:04:05.123456Z")
        }
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn emit_all() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Thing {
            a: &'static str,
        }
        tracing::info!(
            uid = "705ab4f5-6393-11e8-b7cc-42010a800002",
            webhook = "validate",
            namespace = "prod\"uction\"",
            name = "default-deny-all",
            dry_run = false,
            latency_us = 12u64,
            signed = -3i64,
            ratio = 0.5f64,
            reason = "line\nbreak, tab\t, quote \", backslash \\, control \u{1}, é, 雪, 🦀",
            "admission decision"
        );
        tracing::warn!(status = 400u16, detail = %"a \"display\" value", thing = ?Thing { a: "x" }, "request rejected");
        tracing::error!("no fields at all: {}", 42);
        tracing::info!(target: "other::target", empty = "", "");
    }

    /// Every kind of field our code logs, written by `JsonLine` and by tracing-subscriber's own JSON format
    /// configured as we would configure it, comes out as the same bytes.
    #[test]
    fn json_line_is_the_stock_line() {
        let ours = Lines::default();
        let stock = Lines::default();
        let writer = ours.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(JsonLine { timer: Fixed })
            .finish();
        tracing::subscriber::with_default(subscriber, emit_all);
        let writer = stock.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_timer(Fixed)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .finish();
        tracing::subscriber::with_default(subscriber, emit_all);
        let (ours, stock) = (ours.0.lock().unwrap().clone(), stock.0.lock().unwrap().clone());
        let ours = String::from_utf8(ours).unwrap();
        assert_eq!(ours, String::from_utf8(stock).unwrap());
        assert_eq!(ours.lines().count(), 4);
        for line in ours.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["timestamp"], "2026-12-02T03:04:05.123456Z");
        }
        assert!(ours.contains(r#""reason":"line\nbreak, tab\t, quote \", backslash \\, control \u0001, é, 雪, 🦀""#));
    }
}
