//! `--log` / `--log-format`: runc callers (containerd's runc shim among them) read the last
//! error from the log file in JSON form, so errors go there as `{"level","msg","time"}`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::config::LogFormat;

struct Logger {
    file: Option<Mutex<std::fs::File>>,
    format: LogFormat,
    level: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = r.level().as_str().to_ascii_lowercase();
        let time = crate::timefmt::now_rfc3339();
        let line = match self.format {
            LogFormat::Json => serde_json::json!({
                "level": level,
                "msg": r.args().to_string(),
                "time": time,
            })
            .to_string(),
            LogFormat::Text => format!("time=\"{time}\" level={level} msg=\"{}\"", r.args()),
        };
        match &self.file {
            Some(f) => {
                if let Ok(mut f) = f.lock() {
                    let _ = writeln!(f, "{line}");
                }
            }
            None => eprintln!("{line}"),
        }
    }

    fn flush(&self) {}
}

/// Installs the logger. Without `--log`, only warnings and errors reach stderr (and `main`
/// prints errors itself), so normal output stays clean.
pub fn init(path: Option<&PathBuf>, format: LogFormat, debug: bool) {
    let file = path.and_then(|p| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
            .map(Mutex::new)
    });
    let level = if debug {
        log::LevelFilter::Debug
    } else if file.is_some() {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    };
    let has_file = file.is_some();
    let logger = Logger {
        file,
        format,
        level,
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
    let _ = has_file;
}

/// True when errors should also be printed to stderr by `main` (always: callers that read the
/// log file get it there, people get it on the terminal).
pub fn log_file_in_use(path: Option<&PathBuf>) -> bool {
    path.is_some()
}
