//! Dev live reload: watching the app library and `dev.watch`, and running
//! `dev.build_command`.
//!
//! The library's *directory* is watched, not the file: builds replace the file (a new
//! inode by rename or hard link), which a watch on the old inode would miss. Events are
//! debounced by the supervisor loop; a change is reported only when the library's identity
//! (inode, size, modification time) differs from the one last loaded, so a touch of a
//! neighbouring file reloads nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crossbeam_channel::Sender;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::Event;
use crate::error::Error;
use crate::say;

/// What a change was to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    Library,
    Source,
}

/// The file's identity: it changes whenever a build replaces or rewrites it.
pub type Identity = Option<(u64, u64, i64, i64)>;

pub fn identity(path: &Path) -> Identity {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Watches the library and the `dev.watch` paths; keep the returned watcher alive.
pub fn watch(
    library: &Path,
    sources: &[PathBuf],
    sender: Sender<Event>,
) -> Result<RecommendedWatcher, Error> {
    let library = std::path::absolute(library).unwrap_or_else(|_| library.to_path_buf());
    let directory = library
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
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
    watcher
        .watch(&directory, RecursiveMode::NonRecursive)
        .map_err(|e| {
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
