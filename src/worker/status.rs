//! The worker's status pipe to the supervisor: one line per message (`ready`,
//! `probe 7 ok`, `probe 8 fail <reason>`, `stopped`).

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Mutex;

pub struct StatusPipe {
    file: Mutex<File>,
}

impl StatusPipe {
    /// # Safety
    /// `fd` must be an open pipe owned by nobody else in this process.
    pub unsafe fn from_fd(fd: RawFd) -> StatusPipe {
        StatusPipe {
            file: Mutex::new(File::from_raw_fd(fd)),
        }
    }

    /// Sends one line. A supervisor that stopped reading is not this worker's problem.
    pub fn send(&self, line: &str) {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}
