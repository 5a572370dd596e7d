//! Logs: one structured line per event, as JSON or text, on stderr. `RUST_LOG` refines the level (default `info`).

use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write as _};
use std::sync::{Arc, Condvar, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// `LEVEL message key=value ...`, for a person.
    Text,
}

/// Installs the log subscriber. Keep the guard until the end of `main`: dropping it writes out what is left.
pub fn init(format: LogFormat) -> LogGuard {
    // Colours only for a person at a terminal, never into a log file or a collector.
    let ansi = std::io::stderr().is_terminal();
    // MEASUREMENT ONLY (issue 14): DDG_LOG_IMPL=stock|stock-format picks tracing-subscriber's JSON format and
    // tracing-appender's non-blocking writer, or the stock format with our writer.
    match std::env::var("DDG_LOG_IMPL").as_deref() {
        Ok("stock") => {
            let (writer, worker) =
                tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(false).finish(std::io::stderr());
            tracing::subscriber::set_global_default(stock_subscriber(format, ansi, writer)).unwrap();
            let (_, mut guard) = BatchedStderr::start();
            guard.worker = Some(worker);
            guard
        }
        Ok("stock-format") => {
            let (writer, guard) = BatchedStderr::start();
            tracing::subscriber::set_global_default(stock_subscriber(format, ansi, writer)).unwrap();
            guard
        }
        _ => {
            let (writer, guard) = BatchedStderr::start();
            tracing::subscriber::set_global_default(subscriber(format, ansi, writer))
                .expect("the log subscriber is set once");
            guard
        }
    }
}

/// MEASUREMENT ONLY: tracing-subscriber's own JSON lines, in the shape `JsonLines` writes.
pub fn stock_subscriber<W>(format: LogFormat, ansi: bool, writer: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Json => {
            Box::new(builder.json().flatten_event(true).with_current_span(false).with_span_list(false).finish())
        }
        LogFormat::Text => Box::new(builder.finish()),
    }
}

/// Lines still waiting for the writer thread past this size make the logging thread wait: back-pressure rather
/// than lost lines or unbounded memory when stderr's reader stalls.
const PENDING_LIMIT: usize = 4 << 20;

/// How long the writer thread lets lines gather before it writes them out: the most a line waits.
const BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// stderr, written by a thread of its own: a log line is appended to a buffer, and the thread, woken by the first
/// line of a batch, writes out everything that gathered in the next [`BATCH_INTERVAL`] in one `write`.
///
/// Why: one `write(2)` per decision line ran on the runtime's worker thread (and a full pipe, a slow log reader,
/// blocked it). Waking the writer for every line was worse still: on one core, a thread switch per line added
/// ~10 µs of kernel time a request (perf). Batched by time, it is one wake-up and one write per 10 ms.
#[derive(Clone)]
pub struct BatchedStderr(Arc<Pending>);

#[derive(Default)]
struct Pending {
    lines: Mutex<PendingLines>,
    /// Lines arrived (for the writer thread).
    arrived: Condvar,
    /// Lines written out (for loggers waiting at the limit).
    written: Condvar,
}

#[derive(Default)]
struct PendingLines {
    bytes: Vec<u8>,
    closed: bool,
}

/// Stops the writer thread once everything pending is written.
pub struct LogGuard {
    pending: Arc<Pending>,
    thread: Option<std::thread::JoinHandle<()>>,
    worker: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.pending.lines.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.pending.arrived.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl BatchedStderr {
    fn start() -> (BatchedStderr, LogGuard) {
        let pending = Arc::new(Pending::default());
        let shared = pending.clone();
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                let mut out = Vec::new();
                loop {
                    {
                        let mut lines = shared.lines.lock().unwrap_or_else(|e| e.into_inner());
                        while lines.bytes.is_empty() && !lines.closed {
                            lines = shared.arrived.wait(lines).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    // Let the batch gather: one wake-up and one write per interval at most, however many lines.
                    std::thread::sleep(BATCH_INTERVAL);
                    let closed = {
                        let mut lines = shared.lines.lock().unwrap_or_else(|e| e.into_inner());
                        std::mem::swap(&mut out, &mut lines.bytes);
                        lines.closed
                    };
                    shared.written.notify_all();
                    let _ = std::io::stderr().write_all(&out);
                    out.clear();
                    if closed && shared.lines.lock().unwrap_or_else(|e| e.into_inner()).bytes.is_empty() {
                        return;
                    }
                }
            })
            .expect("start the log writer thread");
        (BatchedStderr(pending.clone()), LogGuard { pending, thread: Some(thread), worker: None })
    }
}

impl std::io::Write for BatchedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut lines = self.0.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.closed {
            // After the guard: straight to stderr.
            drop(lines);
            return std::io::stderr().write(buf);
        }
        while lines.bytes.len() >= PENDING_LIMIT {
            lines = self.0.written.wait(lines).unwrap_or_else(|e| e.into_inner());
        }
        let was_empty = lines.bytes.is_empty();
        lines.bytes.extend_from_slice(buf);
        drop(lines);
        if was_empty {
            self.0.arrived.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for BatchedStderr {
    type Writer = BatchedStderr;
    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}

/// The subscriber `init` installs, writing to `writer` (the benchmark of the log line writes to a sink).
pub fn subscriber<W>(format: LogFormat, ansi: bool, writer: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Json => Box::new(builder.event_format(JsonLines).finish()),
        LogFormat::Text => Box::new(builder.finish()),
    }
}

/// The lines of tracing-subscriber's JSON format with flattened events and no spans — `{"timestamp":…,
/// "level":…,` the event's fields in order`,"target":…}` — written straight into the line buffer.
///
/// Why: tracing-subscriber's JSON formatter goes through serde_json and an `io::Write` adapter that checks every
/// fragment for UTF-8 again, and formats the time through `fmt`: the decision line and the metrics cost ~27,000
/// instructions that way, more than half of what the decision itself costs. Written here, ~8,200 (callgrind,
/// `examples/profile_review record_json`). The output is the same, byte for byte (`tests::json_lines_match`).
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        write_timestamp(&mut writer, std::time::SystemTime::now())?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_char('"')?;
        let mut fields = JsonFields { out: &mut writer, result: Ok(()) };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        write_json_str(&mut writer, meta.target())?;
        writer.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`, as serde_json would write the value.
struct JsonFields<'a, 'w> {
    out: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl JsonFields<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                self.out.write_str(",\"")?;
                JsonEscaped(&mut *self.out).write_str(field.name())?;
                self.out.write_str("\":")?;
                value(self.out)
            })();
        }
    }
}

impl Visit for JsonFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| write_json_str(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w| {
            w.write_char('"')?;
            write!(JsonEscaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json's float format (and `null` for NaN and infinities); rare enough to allocate.
        self.entry(field, |w| w.write_str(&serde_json::to_string(&value).map_err(|_| fmt::Error)?));
    }
}

/// A JSON string, quoted and escaped as serde_json escapes it.
fn write_json_str(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    JsonEscaped(w).write_str(s)?;
    w.write_char('"')
}

/// Escapes what goes through it as the inside of a JSON string: `"`, `\` and control characters, the short
/// escapes where JSON has them, `\u00XX` (lower-case hex) otherwise — as serde_json does.
struct JsonEscaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for JsonEscaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        let mut start = 0;
        while let Some(at) = first_escape(&bytes[start..]).map(|i| start + i) {
            // Every byte escaped is ASCII, so `at` is a character boundary.
            self.0.write_str(&s[start..at])?;
            let b = bytes[at];
            match b {
                b'"' => self.0.write_str("\\\"")?,
                b'\\' => self.0.write_str("\\\\")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\r' => self.0.write_str("\\r")?,
                b'\t' => self.0.write_str("\\t")?,
                0x08 => self.0.write_str("\\b")?,
                0x0c => self.0.write_str("\\f")?,
                _ => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    let code = [b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]];
                    self.0.write_str(std::str::from_utf8(&code).expect("ASCII"))?;
                }
            }
            start = at + 1;
        }
        self.0.write_str(&s[start..])
    }
}

/// The index of the first byte that JSON needs escaped (`"`, `\`, a control character), eight bytes at a time
/// (the test serde_json uses: ~1 instruction a byte, against ~8 byte by byte). A flagged byte past the first may
/// be a false positive of the borrow; the first is exact.
fn first_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    let mut chunks = bytes.chunks_exact(8);
    for (n, chunk) in chunks.by_ref().enumerate() {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let control = w.wrapping_sub(ONES * 0x20) & !w;
        // A byte equal to `c` is a zero byte of `w ^ c...c`, and `x - 0x01..01 & !x` flags zero bytes.
        let (q, b) = (w ^ (ONES * u64::from(b'"')), w ^ (ONES * u64::from(b'\\')));
        let quote = q.wrapping_sub(ONES) & !q;
        let backslash = b.wrapping_sub(ONES) & !b;
        let found = (control | quote | backslash) & HIGH;
        if found != 0 {
            return Some(n * 8 + found.trailing_zeros() as usize / 8);
        }
    }
    let tail = bytes.len() - chunks.remainder().len();
    chunks.remainder().iter().position(|&b| needs_escape(b)).map(|i| tail + i)
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// `2026-11-27T21:53:50.787136Z`: UTC with microseconds, as tracing-subscriber's `SystemTime` timer writes it.
fn write_timestamp(w: &mut impl fmt::Write, now: std::time::SystemTime) -> fmt::Result {
    let Ok(since) = now.duration_since(std::time::UNIX_EPOCH) else {
        // Before 1970: a clock this wrong is rare enough for the general path.
        return write!(w, "{}", slow_timestamp(now));
    };
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    if !(0..=9999).contains(&year) {
        return write!(w, "{}", slow_timestamp(now));
    }
    let micros = since.subsec_micros();
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year as u64);
    put(5, 2, u64::from(month));
    put(8, 2, u64::from(day));
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    put(20, 6, u64::from(micros));
    w.write_str(std::str::from_utf8(&out).expect("ASCII"))
}

/// The years the fast path does not write (a clock before 1970 or past 9999), written by jiff.
fn slow_timestamp(now: std::time::SystemTime) -> String {
    jiff::Timestamp::try_from(now)
        .map_or_else(|_| "out of range".into(), |t| t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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

    /// Drops the timestamps, which differ between two runs.
    fn without_time(text: &str) -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let ts = v.as_object_mut().unwrap().remove("timestamp").unwrap();
                let ts = ts.as_str().unwrap();
                assert_eq!(ts.len(), 27, "{ts}");
                assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{ts}");
                v
            })
            .collect()
    }

    fn emit() {
        let message = "a \"quoted\" reason\nwith\ta line break, a \u{1} and ünïcode \\ slash";
        let uid = String::from("705ab4f5-6393-11e8-b7cc-42010a800002");
        tracing::info!(
            uid = %uid,
            webhook = "validate",
            n = 42u64,
            i = -7i64,
            dry_run = false,
            f = 1.5f64,
            debug = ?Some("x"),
            reason = %message,
            "admission decision"
        );
        tracing::warn!(status = 400u16, detail = %"plain", "request rejected");
    }

    #[test]
    fn json_lines_match() {
        let ours = Lines::default();
        let theirs = Lines::default();
        let make = |l: &Lines| {
            let l = l.clone();
            move || l.clone()
        };
        tracing::subscriber::with_default(subscriber(LogFormat::Json, false, make(&ours)), emit);
        let reference = tracing_subscriber::fmt()
            .with_writer(make(&theirs))
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .finish();
        tracing::subscriber::with_default(reference, emit);
        let ours = String::from_utf8(ours.0.lock().unwrap().clone()).unwrap();
        let theirs = String::from_utf8(theirs.0.lock().unwrap().clone()).unwrap();
        assert_eq!(ours.lines().count(), 2, "{ours}");
        // Same keys in the same order and the same values: compare the text with the timestamps cut out.
        let cut =
            |s: &str| -> Vec<String> { s.lines().map(|l| l[l.find("\",\"level\"").unwrap()..].to_owned()).collect() };
        assert_eq!(cut(&ours), cut(&theirs));
        assert_eq!(without_time(&ours), without_time(&theirs));
    }

    #[test]
    fn first_escape_finds_the_first() {
        let text = "abcdefghijklmnopqrstuvwxyz0123456789 ünï";
        assert_eq!(first_escape(text.as_bytes()), None);
        for at in 0..text.len() {
            for esc in [b'"', b'\\', b'\n', 0x01, 0x1f] {
                if !text.is_char_boundary(at) {
                    continue;
                }
                let mut bytes = text.as_bytes()[..at].to_vec();
                bytes.push(esc);
                bytes.extend_from_slice(b"x\"y\\z\n");
                assert_eq!(first_escape(&bytes), Some(at), "{at} {esc}");
            }
        }
        assert_eq!(first_escape(b"\x7f\x80\xff"), None);
    }

    #[test]
    fn timestamps() {
        let at = |s: &str| -> std::time::SystemTime { s.parse::<jiff::Timestamp>().unwrap().into() };
        for want in ["1970-01-01T00:00:00.000000Z", "2026-11-27T21:53:50.787136Z", "2000-02-29T23:59:59.999999Z"] {
            let mut got = String::new();
            write_timestamp(&mut got, at(want)).unwrap();
            assert_eq!(got, want);
        }
        let mut got = String::new();
        write_timestamp(&mut got, at("2100-03-01T00:00:00Z")).unwrap();
        assert_eq!(got, "2100-03-01T00:00:00.000000Z");
    }
}
