//! Dev live reload: watching the app library (or a Python app's code) and `dev.watch`,
//! and running `dev.build_command`.
//!
//! A Python app's directory (for `module:callable`, the working directory) is watched
//! recursively, and a change to any `.py` file under it reloads: a new worker imports the
//! new code, and one that cannot (a syntax or import error) leaves the old one serving.
//! `__pycache__` and hidden directories (a `.venv` inside the app) are left out.
//!
//! The library's *directory* is watched, not the file: builds replace the file (a new
//! inode by rename or hard link), which a watch on the old inode would miss. Events are
//! debounced by the supervisor loop; a change is reported only when the library's identity
//! (inode, size, modification time) differs from the one last loaded, so a touch of a
//! neighbouring file reloads nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::Event;
use crate::config::App;
use crate::error::Error;
use crate::say;
use microservice_rust::spec::{PythonApp, PythonSource};

/// What a change was to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    Library,
    Source,
    /// A Python app's code.
    Python,
}

/// File changes closer together than this are one change.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Where dev reload stands, in the supervisor's loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// Nothing to do.
    Idle,
    /// A change to act on from `at` (once no replacement is under way).
    Due { at: Instant, changed: Changed },
    /// `dev.build_command` runs; a change seen meanwhile waits for it in `then`.
    Building { then: Option<(Instant, Changed)> },
}

impl Reload {
    /// A change seen at `now`: due after the debounce. A change of the app outranks a
    /// source change in the same burst.
    pub fn changed(self, changed: Changed, now: Instant) -> Reload {
        let merge = |waiting: Option<(Instant, Changed)>| {
            let kind = match waiting {
                Some((_, app @ (Changed::Library | Changed::Python))) => app,
                _ => changed,
            };
            (now + DEBOUNCE, kind)
        };
        match self {
            Reload::Idle => {
                let (at, changed) = merge(None);
                Reload::Due { at, changed }
            }
            Reload::Due { at, changed: was } => {
                let (at, changed) = merge(Some((at, was)));
                Reload::Due { at, changed }
            }
            Reload::Building { then } => Reload::Building {
                then: Some(merge(then)),
            },
        }
    }

    /// The build finished: what came meanwhile is due.
    pub fn built(self) -> Reload {
        match self {
            Reload::Building {
                then: Some((at, changed)),
            } => Reload::Due { at, changed },
            Reload::Building { then: None } => Reload::Idle,
            other => other,
        }
    }

    /// The change due by `now`, if one is.
    pub fn due(self, now: Instant) -> Option<Changed> {
        match self {
            Reload::Due { at, changed } if now >= at => Some(changed),
            _ => None,
        }
    }
}

/// The file's identity: it changes whenever a build replaces or rewrites it.
pub type Identity = Option<(u64, u64, i64, i64)>;

pub fn identity(path: &Path) -> Identity {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Watches the library (or the Python app's code) and the `dev.watch` paths; keep the
/// returned watcher alive.
pub fn watch(
    app: &App,
    sources: &[PathBuf],
    sender: Sender<Event>,
) -> Result<RecommendedWatcher, Error> {
    let (library, code) = match app {
        App::Library(path) => (
            std::path::absolute(path).unwrap_or_else(|_| path.clone()),
            None,
        ),
        App::Python(python) => (PathBuf::new(), Some(python_code(python))),
    };
    let directory = match &code {
        Some(code) => code.clone(),
        None => library
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    let recursive = match code {
        Some(_) => RecursiveMode::Recursive,
        None => RecursiveMode::NonRecursive,
    };
    let python_root = code.clone();
    let sources: Vec<PathBuf> = sources
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let watched_sources = sources.clone();
    let target = library.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        for path in &event.paths {
            let changed = if *path == target {
                Changed::Library
            } else if python_root
                .as_ref()
                .is_some_and(|root| is_python_code(root, path))
            {
                Changed::Python
            } else if watched_sources.iter().any(|s| path.starts_with(s)) {
                Changed::Source
            } else {
                continue;
            };
            let _ = sender.send(Event::Changed(changed));
        }
    })
    .map_err(|e| {
        Error::io(
            "cannot watch files for dev reload",
            std::io::Error::other(e),
        )
    })?;
    watcher.watch(&directory, recursive).map_err(|e| {
        Error::io(
            format!("cannot watch {}", directory.display()),
            std::io::Error::other(e),
        )
    })?;
    for source in &sources {
        if let Err(e) = watcher.watch(source, RecursiveMode::Recursive) {
            say!("dev.watch: cannot watch {}: {e}", source.display());
        }
    }
    Ok(watcher)
}

/// The directory holding a Python app's code: its file's, or the working directory for a
/// module.
fn python_code(python: &PythonApp) -> PathBuf {
    let here = || std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    match &python.source {
        PythonSource::File(file) => std::path::absolute(file)
            .ok()
            .and_then(|f| f.parent().map(Path::to_path_buf))
            .unwrap_or_else(here),
        PythonSource::Module(_) => here(),
    }
}

/// A `.py` file under `root`, outside `__pycache__` and hidden directories.
fn is_python_code(root: &Path, path: &Path) -> bool {
    let Ok(inside) = path.strip_prefix(root) else {
        return false;
    };
    path.extension().is_some_and(|e| e == "py")
        && inside.components().all(|c| {
            let name = c.as_os_str().to_string_lossy();
            name != "__pycache__" && !name.starts_with('.')
        })
}

/// Runs `dev.build_command` with `sh -c` on a thread, its output going to the terminal;
/// sends `Event::Built` when it ends.
pub fn build(command: &str, sender: Sender<Event>) {
    say!("source changed: running `{command}`");
    let command = command.to_string();
    let spawned = std::thread::Builder::new()
        .name("build".into())
        .spawn(move || {
            match Command::new("sh").arg("-c").arg(&command).status() {
                Ok(status) if status.success() => say!("`{command}` succeeded"),
                Ok(status) => say!("`{command}` failed ({status}); the running app stays"),
                Err(e) => say!("cannot run `{command}`: {e}"),
            }
            let _ = sender.send(Event::Built);
        });
    if let Err(e) = spawned {
        say!("cannot start the build: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_in_a_burst_are_one_and_the_app_outranks_sources() {
        let now = Instant::now();
        let reload = Reload::Idle.changed(Changed::Library, now);
        assert_eq!(reload.due(now), None, "debounced");
        let later = now + DEBOUNCE / 2;
        let reload = reload.changed(Changed::Source, later);
        assert_eq!(reload.due(later + DEBOUNCE / 2), None, "the burst goes on");
        assert_eq!(reload.due(later + DEBOUNCE), Some(Changed::Library));
    }

    #[test]
    fn a_change_during_a_build_waits_for_it() {
        let now = Instant::now();
        let building = Reload::Building { then: None };
        assert_eq!(building.built(), Reload::Idle);
        let building = building.changed(Changed::Library, now);
        assert_eq!(building.due(now + DEBOUNCE), None, "not while building");
        assert_eq!(building.built().due(now + DEBOUNCE), Some(Changed::Library));
    }

    #[test]
    fn python_code_is_py_files_outside_caches_and_hidden_directories() {
        let root = Path::new("/app/src");
        assert!(is_python_code(root, Path::new("/app/src/main.py")));
        assert!(is_python_code(root, Path::new("/app/src/shop/views.py")));
        assert!(!is_python_code(
            root,
            Path::new("/app/src/__pycache__/main.cpython-311.pyc")
        ));
        assert!(!is_python_code(
            root,
            Path::new("/app/src/__pycache__/x.py")
        ));
        assert!(!is_python_code(
            root,
            Path::new("/app/src/.venv/lib/site.py")
        ));
        assert!(!is_python_code(root, Path::new("/app/src/notes.txt")));
        assert!(!is_python_code(root, Path::new("/elsewhere/main.py")));
    }
}
