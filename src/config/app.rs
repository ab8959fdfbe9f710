//! The app library: which file to serve, and whether it can be one, found out before the
//! supervisor binds anything, so the most common first-day mistake (a wrong path, a file
//! that is not a library, a library that is not an app) stops the service with its reason
//! at once. The supervisor never loads app code: it reads the file's ELF headers and its
//! dynamic symbol table. What only loading can tell (a missing dependency, another ABI
//! version, a constructor that refuses) the worker reports, with the same exit code.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use microservice_rust::abi::{ENTRY_SYMBOL, VERSION_SYMBOL};

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

/// The app library to serve: `app` from the config (or `--app`), else the single `*.so` in
/// `/opt/$MICROSERVICE_NAME/lib/`.
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
            "no app library given: set `app` in config.json, pass --app, or set \
             MICROSERVICE_NAME and put the library in /opt/$MICROSERVICE_NAME/lib/",
        ));
    };
    let dir = Path::new("/opt").join(name).join("lib");
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| Error::app(&dir, format!("cannot list the app directory: {e}")))?;
    let mut libraries: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "so"))
        .collect();
    libraries.sort();
    match libraries.len() {
        1 => Ok(libraries.remove(0)),
        0 => Err(Error::app(
            &dir,
            "holds no *.so library; set `app` or pass --app",
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
