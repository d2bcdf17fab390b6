//! Log output: text for people, JSON for log pipelines.
//!
//! Text lines are `TIME LEVEL message field=value …`: no module path (the message and fields say
//! what happened, a path only says where the code lives), and a span's fields (`runtime_class`,
//! `registry` of an artifact pull) after the event's own, minus those the event already carries,
//! so no field shows twice. JSON lines are the event's fields flattened, the spans it is in as a
//! `spans` list (a pipeline queries fields by key, so a repeated one costs nothing there).

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The log formats an operator can choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl From<crate::config::LogFormat> for LogFormat {
    fn from(format: crate::config::LogFormat) -> Self {
        match format {
            crate::config::LogFormat::Text => Self::Text,
            crate::config::LogFormat::Json => Self::Json,
        }
    }
}

/// A launched plugin's log file is rotated at this size: containerd starts it on every boot and
/// nothing else (no journald, no logrotate rule of ours) would bound the file.
pub const LAUNCHED_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// Installs the global subscriber writing to stderr, or to `file` (rotated at
/// [`LAUNCHED_LOG_MAX_BYTES`], one previous file kept as `<file>.1`).
///
/// `RUST_LOG` overrides the default level (`info`).
pub fn init(format: LogFormat, file: Option<&Path>) -> io::Result<()> {
    match file {
        Some(path) => {
            let file = RotatingFile::open(path, LAUNCHED_LOG_MAX_BYTES)?;
            install(format, BoxMakeWriter::new(Mutex::new(file)), false, "info");
        }
        None => init_stderr(format, "info"),
    }
    Ok(())
}

/// Installs the global subscriber writing to stderr; `RUST_LOG` overrides `default_level`.
pub fn init_stderr(format: LogFormat, default_level: &str) {
    let ansi = io::IsTerminal::is_terminal(&io::stderr());
    install(format, BoxMakeWriter::new(io::stderr), ansi, default_level);
}

fn install(format: LogFormat, writer: BoxMakeWriter, ansi: bool, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // A second init (tests) keeps the first subscriber; that is not an error worth failing on.
    let _ = match format {
        LogFormat::Text => builder
            .fmt_fields(SpanFields)
            .event_format(TextFormat {
                timer: SystemTime,
                ansi,
            })
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// The text line of an event: time, level, message, the event's fields, then the fields of its
/// spans (outermost first) that no event field or closer span already named.
pub struct TextFormat<T> {
    pub timer: T,
    pub ansi: bool,
}

impl<S, T> FormatEvent<S, SpanFields> for TextFormat<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, SpanFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        self.timer.format_time(&mut writer)?;
        let level = *event.metadata().level();
        if self.ansi {
            write!(writer, " \x1b[{}m{level:>5}\x1b[0m", color(level))?;
        } else {
            write!(writer, " {level:>5}")?;
        }
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let mut named: BTreeSet<&str> = fields.fields.iter().map(|(name, _)| *name).collect();
        if !fields.message.is_empty() {
            write!(writer, " {}", fields.message)?;
        }
        for (name, value) in &fields.fields {
            write!(writer, " {name}={value}")?;
        }
        // Innermost span first, so the value closest to the event wins a repeated name.
        let spans: Vec<String> = ctx
            .event_scope()
            .into_iter()
            .flat_map(|scope| scope.from_root())
            .filter_map(|span| {
                span.extensions()
                    .get::<FormattedFields<SpanFields>>()
                    .map(|f| f.fields.clone())
            })
            .collect();
        let mut kept: Vec<Vec<&str>> = Vec::new();
        for formatted in spans.iter().rev() {
            let fields = formatted.split(FIELD_SEPARATOR).filter(|f| !f.is_empty());
            kept.push(
                fields
                    .filter(|field| named.insert(field.split_once('=').map_or(*field, |(n, _)| n)))
                    .collect(),
            );
        }
        // Printed outermost span first, each span's fields in their own order.
        for field in kept.iter().rev().flatten() {
            write!(writer, " {field}")?;
        }
        writeln!(writer)
    }
}

fn color(level: Level) -> u8 {
    match level {
        Level::ERROR => 31,
        Level::WARN => 33,
        Level::INFO => 32,
        Level::DEBUG => 34,
        Level::TRACE => 35,
    }
}

/// Separates a span's stored fields, so an event's format can tell them apart by name: a
/// control character no field value of ours carries (values are Display/Debug text).
const FIELD_SEPARATOR: char = '\u{1f}';

/// How span fields are stored for [`TextFormat`]: `name=value` each, separated by
/// [`FIELD_SEPARATOR`].
pub struct SpanFields;

impl<'writer> FormatFields<'writer> for SpanFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = EventFields::default();
        fields.record(&mut visitor);
        let mut first = true;
        for (name, value) in visitor.fields {
            if !first {
                writer.write_char(FIELD_SEPARATOR)?;
            }
            first = false;
            write!(writer, "{name}={value}")?;
        }
        Ok(())
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        if !current.fields.is_empty() {
            current.fields.push(FIELD_SEPARATOR);
        }
        self.format_fields(current.as_writer(), fields)
    }
}

/// An event's message and its other fields, valued as the default text format values them:
/// `%x` as Display, `?x` and strings as Debug (quoted).
#[derive(Default)]
struct EventFields {
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if name == "message" {
            self.message = format!("{value:?}");
        } else if !name.starts_with("log.") {
            self.fields.push((
                name.strip_prefix("r#").unwrap_or(name),
                format!("{value:?}"),
            ));
        }
    }
}

/// An append-only log file that starts over when it would grow past `max_bytes`, keeping the
/// previous one as `<file>.1` (and only that one: two files bound the disk a log takes).
///
/// Each event is one `write` (the fmt layer formats a whole line first), so a line is never
/// split across the two files.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

impl RotatingFile {
    /// Opens `path` for appending (creating it and its directory), its current size counted.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            max_bytes,
        })
    }

    /// `<file>.1`, where the previous file goes.
    pub fn previous(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".1");
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        std::fs::rename(&self.path, Self::previous(&self.path))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl io::Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        // An empty file takes even a line longer than the limit: rotating could not help.
        if self.size > 0 && self.size.saturating_add(len) > self.max_bytes {
            // A failed rotation (a full disk, a read-only directory) must not lose the line:
            // appending past the limit is the lesser harm.
            let _ = self.rotate();
        }
        let written = self.file.write(buf)?;
        self.size = self
            .size
            .saturating_add(u64::try_from(written).unwrap_or(u64::MAX));
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A fixed clock, so a test can compare whole lines.
    struct Fixed;

    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2025-01-02T03:04:05.000006Z")
        }
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match self.0.lock() {
                Ok(mut bytes) => bytes.extend_from_slice(buf),
                Err(_) => return Err(io::Error::other("poisoned")),
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn text_lines(emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::INFO)
            .with_writer(move || writer.clone())
            .fmt_fields(SpanFields)
            .event_format(TextFormat {
                timer: Fixed,
                ansi: false,
            })
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buffer.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn text_has_no_module_path_and_no_field_twice() {
        let text = text_lines(|| {
            let span =
                tracing::info_span!("ensure", runtime_class = %"kata-qemu", registry = %"ghcr.io");
            let _entered = span.enter();
            tracing::warn!(runtime_class = %"kata-qemu", kind = "pull_failed", error = %"connection refused", "runtime class not ready");
            tracing::info!(layer = "sha256:ab", size = 42_u64, "layer verified");
        });
        assert_eq!(
            text,
            "2025-01-02T03:04:05.000006Z  WARN runtime class not ready runtime_class=kata-qemu kind=\"pull_failed\" error=connection refused registry=ghcr.io\n\
             2025-01-02T03:04:05.000006Z  INFO layer verified layer=\"sha256:ab\" size=42 runtime_class=kata-qemu registry=ghcr.io\n"
        );
    }

    #[test]
    fn the_closest_span_names_a_field_once() {
        let text = text_lines(|| {
            let outer = tracing::info_span!("outer", runtime_class = "a", node = 1);
            let _outer = outer.enter();
            let inner = tracing::info_span!("inner", runtime_class = "b");
            let _inner = inner.enter();
            tracing::error!("failed");
        });
        assert_eq!(
            text,
            "2025-01-02T03:04:05.000006Z ERROR failed node=1 runtime_class=\"b\"\n"
        );
    }

    #[test]
    fn the_log_file_is_rotated_by_size_keeping_one_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs").join("10-kata-nri-manager.log");
        let mut file = RotatingFile::open(&path, 24).unwrap();
        file.write_all(b"first line\n").unwrap();
        file.write_all(b"second ln\n").unwrap();
        // 11 + 10 + 11 bytes is over 24: the third line starts a new file.
        file.write_all(b"third line\n").unwrap();
        let previous = RotatingFile::previous(&path);
        assert_eq!(
            std::fs::read_to_string(&previous).unwrap(),
            "first line\nsecond ln\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "third line\n");
        // A line longer than the limit still goes somewhere whole.
        file.write_all(b"a line longer than the limit of bytes\n")
            .unwrap();
        file.write_all(b"fourth\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&previous).unwrap(),
            "a line longer than the limit of bytes\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "fourth\n");

        // Reopened (the plugin started again): the size on disk counts.
        drop(file);
        let mut file = RotatingFile::open(&path, 24).unwrap();
        file.write_all(b"fifth line\n").unwrap();
        file.write_all(b"sixth line\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&previous).unwrap(),
            "fourth\nfifth line\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "sixth line\n");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
