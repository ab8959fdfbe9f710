//! What stays resident once a process serves: the code its start-up ran is let go.
//!
//! A process's RSS counts every page of code mapped into it, and the kernel maps the 64 KiB
//! around each page of code the process touches (fault-around). Start-up touches code that
//! never runs again (the command line, the config's lookup and checks, loading the app,
//! the dynamic linker's work in libc and libm), so an idle supervisor held 4.3 MiB and an
//! idle worker 5.3, nearly all of it code, most of it start-up's. Once a process serves,
//! [`let_go_of_code`] unmaps its code pages; the code it runs from then on is mapped again
//! as it runs (a minor fault a page: the pages stay in the page cache, shared with every
//! process of the same files). Measured: supervisor + worker idle 9.6 → 6.4–6.6 MiB.
//!
//! Only private, read-and-execute mappings of files are let go: their pages are never
//! written, so what comes back is what was there. (A debugger's breakpoints or a uprobe
//! placed in the code before the process was ready go with them.)

/// Unmaps the process's code pages; what runs next maps them again. Best effort: a
/// process that cannot read its own maps keeps its pages.
pub fn let_go_of_code() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for (start, end) in maps.lines().filter_map(file_code) {
        // SAFETY: the range is a whole mapping of this process, private, of a file, read
        // and execute only: MADV_DONTNEED drops its pages from the page table, and the
        // next access reads them from the file again, unchanged (no page of it was
        // written). No Rust reference points into code.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// The range of a line of /proc/self/maps (`start-end perms offset dev inode path`) that
/// maps a file's code privately, read and execute only.
fn file_code(line: &str) -> Option<(usize, usize)> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let inode = fields.nth(2)?;
    if perms != "r-xp" || inode == "0" {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    (start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_code_of_files_is_let_go() {
        let code = "7f10a0026000-7f10a017b000 r-xp 00026000 08:01 1234 /usr/lib/libc.so.6";
        assert_eq!(file_code(code), Some((0x7f10a0026000, 0x7f10a017b000)));
        for other in [
            // data, read-only data (relocated, written once), shared code, no file
            "7f10a01d4000-7f10a01d6000 rw-p 001d3000 08:01 1234 /usr/lib/libc.so.6",
            "7f10a017b000-7f10a01d0000 r--p 0017b000 08:01 1234 /usr/lib/libc.so.6",
            "7f10a0026000-7f10a017b000 r-xs 00026000 08:01 1234 /dev/shm/code",
            "7ffd1b3f0000-7ffd1b3f2000 r-xp 00000000 00:00 0 [vdso]",
            "garbage",
        ] {
            assert_eq!(file_code(other), None, "{other}");
        }
    }

    #[test]
    fn code_let_go_runs_again() {
        let_go_of_code();
        // This test's own code, std's and libc's were unmapped and come back as they run.
        let text = format!("{}", 6 * 7);
        assert_eq!(text, "42");
    }
}
