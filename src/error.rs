//! One error type for the whole binary: a private kind plus the context a reader needs
//! (which file, which key, what was expected), and the exit code the kind stands for.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::exit;

/// Every failure the supervisor or the worker reports before exiting.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// A config file that cannot be read, is not JSON, or has a bad key.
    Config { source: String, problem: String },
    /// An app library that cannot be loaded or refused to start.
    App { path: PathBuf, problem: String },
    /// A system call that failed, with what we were doing.
    Io { about: String, err: std::io::Error },
    /// The worker could not set itself up (before loading the app).
    Boot { about: String, err: std::io::Error },
    /// A command given something it cannot work with.
    Usage { problem: String },
}

impl Error {
    /// A problem in the config that came from `source` (a file, or a description of where).
    pub fn config(source: impl fmt::Display, problem: impl Into<String>) -> Error {
        Error {
            kind: Kind::Config {
                source: source.to_string(),
                problem: problem.into(),
            },
        }
    }

    /// A bad key: names the key path, what was expected and what was found.
    pub fn config_key(
        source: impl fmt::Display,
        key: &str,
        expected: &str,
        found: &serde_json::Value,
    ) -> Error {
        Error::config(
            source,
            format!(
                "key `{key}`: expected {expected}, found {}",
                describe(found)
            ),
        )
    }

    pub fn app(path: &Path, problem: impl Into<String>) -> Error {
        Error {
            kind: Kind::App {
                path: path.to_path_buf(),
                problem: problem.into(),
            },
        }
    }

    pub fn io(about: impl Into<String>, err: std::io::Error) -> Error {
        Error {
            kind: Kind::Io {
                about: about.into(),
                err,
            },
        }
    }

    pub fn boot(about: impl Into<String>, err: std::io::Error) -> Error {
        Error {
            kind: Kind::Boot {
                about: about.into(),
                err,
            },
        }
    }

    pub fn usage(problem: impl Into<String>) -> Error {
        Error {
            kind: Kind::Usage {
                problem: problem.into(),
            },
        }
    }

    /// The process exit code for this error (see `exit`).
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            Kind::Config { .. } => exit::CONFIG,
            Kind::App { .. } => exit::APP_LOAD,
            Kind::Io { .. } => exit::FAILURE,
            Kind::Boot { .. } => exit::BOOT,
            Kind::Usage { .. } => exit::USAGE,
        }
    }
}

/// A JSON value as an error message shows it: its type, and the value cut to a line.
fn describe(value: &serde_json::Value) -> String {
    let kind = match value {
        serde_json::Value::Null => return "null".into(),
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "the number",
        serde_json::Value::String(_) => "the string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    };
    let mut text = value.to_string();
    if text.len() > 60 {
        let mut cut = 57;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    format!("{kind} {text}")
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Config { source, problem } => write!(f, "config error: {source}: {problem}"),
            Kind::App { path, problem } => {
                write!(f, "cannot load the app {}: {problem}", path.display())
            }
            Kind::Io { about, err } | Kind::Boot { about, err } => write!(f, "{about}: {err}"),
            Kind::Usage { problem } => f.write_str(problem),
        }
    }
}

impl std::error::Error for Error {}
