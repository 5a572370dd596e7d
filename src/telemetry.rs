//! Logs: one structured line per event, as JSON or text, on stderr. `RUST_LOG` refines the level (default `info`).
//!
//! All stock: tracing-subscriber's formats, and tracing-appender's non-blocking writer, so that a slow reader of
//! stderr never blocks a request's thread. A hand-written JSON formatter and batched writer were measured against
//! these and removed (docs/performance.md, "Logs"): under the log policy only denials, warnings, patches and
//! exceptions write a line, and even a storm of denials costs the stock path a few µs of CPU per line.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

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
    let (writer, guard) =
        NonBlockingBuilder::default().lossy(false).buffered_lines_limit(4096).finish(std::io::stderr());
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
        LogFormat::Json => {
            Box::new(builder.json().flatten_event(true).with_current_span(false).with_span_list(false).finish())
        }
        LogFormat::Text => Box::new(builder.finish()),
    }
}
