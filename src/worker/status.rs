//! The worker's status pipe to the supervisor: one [`Status`] line per message.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Mutex;

use crate::control::Status;

pub struct StatusPipe {
    file: Mutex<File>,
}

impl StatusPipe {
    /// # Safety
    /// `fd` must be an open pipe owned by nobody else in this process.
    pub unsafe fn from_fd(fd: RawFd) -> StatusPipe {
        StatusPipe {
            // SAFETY: this function's contract: `fd` is an open pipe that nobody else in
            // this process owns, so the `File` may own (and at last close) it.
            file: Mutex::new(unsafe { File::from_raw_fd(fd) }),
        }
    }

    /// Sends one status line. A supervisor that stopped reading is not this worker's
    /// problem.
    pub fn send(&self, status: &Status) {
        let line = format!("{}\n", status.line());
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = file.write_all(line.as_bytes());
    }
}
