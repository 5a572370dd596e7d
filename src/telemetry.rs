//! Logs: one structured line per event, as JSON or text, on stderr. `RUST_LOG` refines the level (default `info`).
//!
//! Stock parts: tracing-subscriber's text format, its timer and tracing-serde's field visitor for JSON. Two pieces
//! of our own, each where the stock one measurably cost a user (docs/performance.md, "Logs"): [`JsonLine`], which
//! writes tracing-subscriber's JSON line byte for byte but straight into a byte buffer, and [`BatchedWriter`], a
//! writer thread that gathers lines for 10 ms and writes them at once, so that a slow reader of stderr never blocks
//! a request's thread and a line costs no thread switch.

use std::cell::RefCell;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serializer as _;
use serde::ser::SerializeMap;
use tracing::{Event, Subscriber};
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
pub fn init(format: LogFormat) -> LogGuard {
    // Colours only for a person at a terminal, never into a log file or a collector.
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = BatchedWriter::start(std::io::stderr(), PENDING_LIMIT, BATCH_INTERVAL, BATCH_BYTES);
    tracing::subscriber::set_global_default(subscriber(format, ansi, writer)).expect("the log subscriber is set once");
    guard
}

/// Lines not yet written past this size make the logging thread wait: back-pressure rather than lost lines (a
/// denial's line is the operator's record of it) or unbounded memory when stderr's reader stalls.
const PENDING_LIMIT: usize = 4 << 20;

/// How long the writer thread lets lines gather before it writes them: the most a line waits.
const BATCH_INTERVAL: Duration = Duration::from_millis(10);

/// A batch this large is written at once, before its interval ends. Why: the writer's `write` takes the core from
/// the requests while it copies the batch (on one core, every request in flight waits for it); 10 ms of a denial
/// storm's lines were 100 KiB and one write of them showed in the requests' p99 (docs/performance.md, "Logs").
const BATCH_BYTES: usize = 16 << 10;

/// A log sink written by a thread of its own: a line is appended to a buffer, and the thread, woken by the first
/// line of a batch, writes everything that gathered over the next interval in one `write`, or sooner once the
/// batch reaches its size.
///
/// Why not tracing-appender's non-blocking writer: it hands each line over a crossbeam channel, whose worker
/// wakes for every line and, finding the channel empty again, spins with `sched_yield` before it sleeps. On one
/// core (a pod's CPU limit, or the load test's pinning) each of those calls is a switch away from the request being
/// answered; here there is one wake-up and one write per interval or per full batch, however many lines (the
/// system calls counted both ways: docs/performance.md, "Logs").
#[derive(Clone)]
pub struct BatchedWriter(Arc<Pending>);

struct Pending {
    lines: Mutex<PendingLines>,
    /// Lines arrived (for the writer thread).
    arrived: Condvar,
    /// Lines written out (for loggers waiting at the limit).
    written: Condvar,
    limit: usize,
    /// A batch this large is written without waiting for the rest of its interval.
    batch: usize,
}

#[derive(Default)]
struct PendingLines {
    bytes: Vec<u8>,
    closed: bool,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, PendingLines> {
        // A panic while holding the lock leaves nothing half-done that matters for log lines.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Stops the writer thread once everything pending is written.
pub struct LogGuard {
    pending: Arc<Pending>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.pending.lock().closed = true;
        self.pending.arrived.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl BatchedWriter {
    /// Starts the writer thread, writing to `sink` every `interval` at most, or once `batch` bytes have gathered,
    /// and holding at most about `limit` bytes.
    pub fn start<W: Write + Send + 'static>(
        mut sink: W,
        limit: usize,
        interval: Duration,
        batch: usize,
    ) -> (BatchedWriter, LogGuard) {
        let pending = Arc::new(Pending {
            lines: Mutex::default(),
            arrived: Condvar::new(),
            written: Condvar::new(),
            limit,
            batch,
        });
        let shared = pending.clone();
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                let mut out = Vec::new();
                loop {
                    let closed = {
                        let mut lines = shared.lock();
                        while lines.bytes.is_empty() && !lines.closed {
                            lines = shared.arrived.wait(lines).unwrap_or_else(|e| e.into_inner());
                        }
                        // Let the batch gather for an interval, or until it is a batch's size: a few wake-ups
                        // and writes a second however many lines, each write short.
                        let due = Instant::now() + interval;
                        while lines.bytes.len() < shared.batch && !lines.closed {
                            let left = due.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                break;
                            }
                            lines = shared.arrived.wait_timeout(lines, left).unwrap_or_else(|e| e.into_inner()).0;
                        }
                        std::mem::swap(&mut out, &mut lines.bytes);
                        lines.closed
                    };
                    shared.written.notify_all();
                    // Errors are dropped, as tracing-subscriber's own writers drop them: there is nowhere to report.
                    let _ = sink.write_all(&out).and_then(|()| sink.flush());
                    // A storm's buffer is not kept for ever.
                    if out.capacity() > 1 << 20 {
                        out = Vec::new();
                    } else {
                        out.clear();
                    }
                    if closed && shared.lock().bytes.is_empty() {
                        return;
                    }
                }
            })
            .expect("start the log writer thread");
        (BatchedWriter(pending.clone()), LogGuard { pending, thread: Some(thread) })
    }
}

impl Write for BatchedWriter {
    /// Takes the whole line (tracing-subscriber writes each event with one `write_all`).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut lines = self.0.lock();
        if lines.closed {
            // After the guard: straight through.
            drop(lines);
            return std::io::stderr().write(buf);
        }
        while !lines.bytes.is_empty() && lines.bytes.len() + buf.len() > self.0.limit {
            lines = self.0.written.wait(lines).unwrap_or_else(|e| e.into_inner());
        }
        let before = lines.bytes.len();
        lines.bytes.extend_from_slice(buf);
        // The writer waits for the first line of a batch, then for the batch's size.
        let wake = before == 0 || (before < self.0.batch && lines.bytes.len() >= self.0.batch);
        drop(lines);
        if wake {
            self.0.arrived.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for BatchedWriter {
    type Writer = BatchedWriter;
    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
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

    /// A sink that holds what it was given, and can be made to stall.
    #[derive(Clone, Default)]
    struct Stalling {
        written: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }
    impl std::io::Write for Stalling {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Lines from many threads come out whole, each once, in each thread's order, and all of them by the time
    /// the guard is dropped.
    #[test]
    fn batched_lines_come_out_whole_and_in_order() {
        let sink = Stalling::default();
        let (writer, guard) = BatchedWriter::start(sink.clone(), 1 << 20, Duration::from_millis(2), 4096);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        w.write_all(format!("thread {t} line {i} {}\n", "x".repeat(i % 200)).as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.written.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            let (t, i): (usize, usize) = (words[1].parse().unwrap(), words[3].parse().unwrap());
            assert_eq!(i, next[t], "thread {t}'s lines in order, none lost or doubled");
            assert_eq!(words.get(4).copied().unwrap_or(""), "x".repeat(i % 200), "the line whole");
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4]);
    }

    /// A batch that reaches its size is written at once, not at the end of its interval; a smaller rest waits for
    /// its interval (here: for the guard, which writes out what is left).
    #[test]
    fn a_full_batch_is_written_before_its_interval() {
        let sink = Stalling::default();
        let (writer, guard) = BatchedWriter::start(sink.clone(), 1 << 20, Duration::from_secs(3600), 1000);
        let mut w = writer.clone();
        for i in 0..10 {
            w.write_all(format!("line {i} {}\n", "z".repeat(92)).as_bytes()).unwrap();
        }
        let started = std::time::Instant::now();
        while sink.written.lock().unwrap().len() < 1000 && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.written.lock().unwrap().len(), 1000, "the full batch, within seconds of an hour's interval");
        w.write_all(b"the rest\n").unwrap();
        drop(guard);
        assert_eq!(sink.written.lock().unwrap().len(), 1009);
    }

    /// While the sink stalls, what is pending stays within the limit: loggers wait instead, and go on once the
    /// sink takes lines again.
    #[test]
    fn a_stalled_sink_holds_loggers_at_the_limit() {
        let sink = Stalling::default();
        let limit = 10_000;
        let (writer, guard) = BatchedWriter::start(sink.clone(), limit, Duration::from_millis(1), 4096);
        let stall = sink.gate.lock().unwrap();
        let logger = {
            let mut w = writer.clone();
            std::thread::spawn(move || {
                for i in 0..1_000 {
                    w.write_all(format!("line {i:04} {}\n", "y".repeat(90)).as_bytes()).unwrap();
                }
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        // The writer thread holds one batch (in the stalled write) and at most `limit` bytes are pending.
        let pending = writer.0.lock().bytes.len();
        assert!(pending <= limit, "{pending} bytes pending");
        assert!(!logger.is_finished(), "the logger waits at the limit");
        drop(stall);
        logger.join().unwrap();
        drop(guard);
        assert_eq!(sink.written.lock().unwrap().len(), 1_000 * 101, "every line written once");
    }

    /// Every kind of field our code logs, written by `JsonLine` and by tracing-subscriber's own JSON format
    /// configured as we would configure it, comes out as the same bytes.
    #[test]
    fn json_line_is_the_stock_line() {
        let ours = Stalling::default();
        let stock = Stalling::default();
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
        let (ours, stock) = (ours.written.lock().unwrap().clone(), stock.written.lock().unwrap().clone());
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
