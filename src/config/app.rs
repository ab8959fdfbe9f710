//! The app: which one to serve, and whether it can be one, found out before the supervisor
//! binds anything, so the most common first-day mistake (a wrong path, a file that is not a
//! library, a library that is not an app) stops the service with its reason at once.
//!
//! `app` names a native library (`*.so`), or a Python WSGI app: a file (`main.py`,
//! `main.py:app`, `main.py:make_app()`) or a module on the path (`shop.main:app`). A Python
//! app is served by the Python host, a library of its own ([`python_host`]) that the worker
//! loads like any app and that imports the Python code.
//!
//! The supervisor never loads app code: it reads the library's ELF headers and its dynamic
//! symbol table (for a Python app: the host's, and that the file is there). What only
//! loading can tell (a missing dependency, another ABI version, a constructor that refuses,
//! an import error) the worker reports, with the same exit code.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use microservice_rust::abi::{ENTRY_SYMBOL, VERSION_SYMBOL};
pub use microservice_rust::spec::App;
use microservice_rust::spec::PythonSource;

use crate::error::Error;

/// The problem with a library that lacks `symbol`, as the supervisor and the worker say it.
pub fn missing_symbol(symbol: &str) -> String {
    match symbol {
        VERSION_SYMBOL => format!(
            "symbol `{VERSION_SYMBOL}` not found: not a microservice-rust app (a Rust app \
             calls `export_app!`; a C app defines it as include/microservice_rust.h says)"
        ),
        _ => format!(
            "symbol `{symbol}` not found: the library answers the ABI handshake but exports \
             no app"
        ),
    }
}

/// Where the Python host is looked for, when `MICROSERVICE_PYTHON_HOST` does not name it.
pub const PYTHON_HOST_FILE: &str = "libmicroservice_rust_python.so";
/// The variable naming the Python host library.
pub const PYTHON_HOST_VAR: &str = "MICROSERVICE_PYTHON_HOST";

/// The library the worker loads for `app`: its own, or the Python host.
pub fn library(app: &App) -> Result<PathBuf, Error> {
    match app {
        App::Library(path) => Ok(path.clone()),
        App::Python(_) => python_host(),
    }
}

/// The Python host library: `MICROSERVICE_PYTHON_HOST`, else `libmicroservice_rust_python.so`
/// beside this program (a cargo build puts both in `target/<profile>/`), else in
/// `../lib/microservice-rust/` from it (the image's `/usr/local/lib/microservice-rust/`).
pub fn python_host() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os(PYTHON_HOST_VAR) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("cannot find this program to find the Python host", e))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let candidates = [
        dir.join(PYTHON_HOST_FILE),
        dir.join("../lib/microservice-rust").join(PYTHON_HOST_FILE),
    ];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    Err(Error::app(
        &candidates[0],
        format!(
            "a Python app needs the Python host, which this microservice-rust does not have: \
             looked for {} and {} (build it with `cargo build -p microservice-rust-python`, \
             set {PYTHON_HOST_VAR}, or use the image microservice-rust-python)",
            candidates[0].display(),
            candidates[1].display()
        ),
    ))
}

/// Checks what can be checked without loading the app: a library's ELF file and symbols;
/// for a Python app its file and the Python host library.
pub fn check_app(app: &App) -> Result<(), Error> {
    let App::Python(python) = app else {
        return check_library(&library(app)?);
    };
    if let PythonSource::File(file) = &python.source {
        match std::fs::metadata(file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::app(file, "file not found"))
            }
            Err(e) => return Err(Error::app(file, format!("cannot read it: {e}"))),
            Ok(m) if m.is_dir() => {
                return Err(Error::app(file, "is a directory, not a Python file"))
            }
            Ok(_) => {}
        }
    }
    check_library(&library(app)?)
}

/// Checks that `path` names an ELF shared library exporting the app's two symbols.
pub fn check_library(path: &Path) -> Result<(), Error> {
    let fail = |problem: String| Error::app(path, problem);
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail("file not found".into()))
        }
        Err(e) => return Err(fail(format!("cannot read it: {e}"))),
        Ok(m) if m.is_dir() => return Err(fail("is a directory, not a library".into())),
        Ok(_) => {}
    }
    let file = File::open(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let elf = Elf { file: &file };
    let not_a_library =
        |what: &str| fail(format!("not a shared library that can be loaded: {what}"));
    let mut header = [0u8; 64];
    if elf.file.read_exact_at(&mut header, 0).is_err() || &header[..4] != b"\x7fELF" {
        return Err(not_a_library("not an ELF file"));
    }
    // 64-bit little-endian, the machines the image is built for; others are left to dlopen.
    if header[4] != 2 || header[5] != 1 {
        return Ok(());
    }
    const ET_DYN: u16 = 3;
    if u16_at(&header, 16) != ET_DYN {
        return Err(not_a_library(
            "an ELF file, but an executable or an object file",
        ));
    }
    let exported = match elf.dynamic_symbols(&header) {
        Some(symbols) => symbols,
        None => return Ok(()), // no section headers to read: dlopen will tell
    };
    for symbol in [VERSION_SYMBOL, ENTRY_SYMBOL] {
        if !exported.iter().any(|name| name == symbol.as_bytes()) {
            return Err(fail(missing_symbol(symbol)));
        }
    }
    Ok(())
}

/// An ELF64 little-endian file, read in pieces.
struct Elf<'f> {
    file: &'f File,
}

impl Elf<'_> {
    fn read(&self, offset: u64, length: u64) -> Option<Vec<u8>> {
        // A section table or symbol table this large is not a sane library.
        if length > 64 << 20 {
            return None;
        }
        let mut bytes = vec![0u8; length as usize];
        self.file.read_exact_at(&mut bytes, offset).ok()?;
        Some(bytes)
    }

    /// The names of the defined symbols of the dynamic symbol table.
    fn dynamic_symbols(&self, header: &[u8; 64]) -> Option<Vec<Vec<u8>>> {
        const SHT_DYNSYM: u32 = 11;
        let table_at = u64_at(header, 0x28);
        let entry_size = u64::from(u16_at(header, 0x3a));
        let count = u64::from(u16_at(header, 0x3c));
        if table_at == 0 || entry_size < 64 || count == 0 {
            return None;
        }
        let sections = self.read(table_at, entry_size * count)?;
        let section = |index: u64| {
            let start = (index * entry_size) as usize;
            sections.get(start..start + 64)
        };
        let dynsym = (0..count)
            .filter_map(section)
            .find(|s| u32_at(s, 4) == SHT_DYNSYM)?;
        let names = section(u64::from(u32_at(dynsym, 40)))?;
        let strings = self.read(u64_at(names, 24), u64_at(names, 32))?;
        let symbol_size = u64_at(dynsym, 56).max(24);
        let symbols = self.read(u64_at(dynsym, 24), u64_at(dynsym, 32))?;
        let defined = symbols
            .chunks_exact(symbol_size as usize)
            .filter(|symbol| u16_at(symbol, 6) != 0)
            .filter_map(|symbol| {
                let start = u32_at(symbol, 0) as usize;
                let name = strings.get(start..)?;
                let end = name.iter().position(|&b| b == 0)?;
                Some(name[..end].to_vec())
            })
            .collect();
        Some(defined)
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The app to serve: `app` from the config (or `--app`), else the single `*.so` in
/// `/opt/$MICROSERVICE_NAME/lib/`, else `/opt/$MICROSERVICE_NAME/src/main.py` (the Flask
/// image's convention).
pub fn find_app(
    configured: Option<&Path>,
    microservice_name: Option<&str>,
) -> Result<PathBuf, Error> {
    if let Some(path) = configured {
        return Ok(path.to_path_buf());
    }
    let Some(name) = microservice_name else {
        return Err(Error::app(
            Path::new("(none)"),
            "no app given: set `app` in config.json, pass --app, or set MICROSERVICE_NAME \
             and put the library in /opt/$MICROSERVICE_NAME/lib/ (or the Python app in \
             /opt/$MICROSERVICE_NAME/src/main.py)",
        ));
    };
    let home = Path::new("/opt").join(name);
    let dir = home.join("lib");
    let main_py = home.join("src/main.py");
    let mut libraries: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "so"))
            .collect(),
        Err(_) if main_py.is_file() => Vec::new(),
        Err(e) => {
            return Err(Error::app(
                &dir,
                format!(
                    "cannot list the app directory: {e} (and there is no {})",
                    main_py.display()
                ),
            ))
        }
    };
    libraries.sort();
    match libraries.len() {
        1 => Ok(libraries.remove(0)),
        0 if main_py.is_file() => Ok(main_py),
        0 => Err(Error::app(
            &dir,
            format!(
                "holds no *.so library, and there is no {}; set `app` or pass --app",
                main_py.display()
            ),
        )),
        _ => Err(Error::app(
            &dir,
            format!(
                "holds several libraries ({}); set `app` or pass --app to choose one",
                libraries
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}
