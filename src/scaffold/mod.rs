//! `microservice-rust new DIR` writes an app that builds and serves, and
//! `microservice-rust sdk DIR` writes the app SDK this binary was built with.
//!
//! The binary carries the SDK's source (the crate in `src/sdk/` and the C header), so an app
//! needs no registry to build and always speaks this server's ABI. The base image carries
//! the same SDK at [`IMAGE_SDK`] and the header at [`IMAGE_HEADER`] (docker/rootfs.sh).

use std::path::{Path, PathBuf};

use crate::error::Error;

/// Where the base image keeps the SDK crate (documentation; docker/rootfs.sh writes it).
pub const IMAGE_SDK: &str = "/usr/local/share/microservice-rust/sdk";
/// Where the base image keeps the C header.
pub const IMAGE_HEADER: &str = "/usr/local/include/microservice_rust.h";

const VERSION: &str = env!("CARGO_PKG_VERSION");
const HEADER: &str = include_str!("../../include/microservice_rust.h");

/// The SDK crate: its manifest, then every file of `src/sdk/` (a test keeps the list whole).
const SDK_FILES: [(&str, &str); 12] = [
    ("Cargo.toml", include_str!("templates/sdk/Cargo.toml")),
    ("src/lib.rs", include_str!("../sdk/lib.rs")),
    ("src/abi.rs", include_str!("../sdk/abi.rs")),
    ("src/app.rs", include_str!("../sdk/app.rs")),
    ("src/clock.rs", include_str!("../sdk/clock.rs")),
    ("src/config.rs", include_str!("../sdk/config.rs")),
    ("src/http.rs", include_str!("../sdk/http.rs")),
    ("src/log.rs", include_str!("../sdk/log.rs")),
    ("src/metrics.rs", include_str!("../sdk/metrics.rs")),
    ("src/panics.rs", include_str!("../sdk/panics.rs")),
    ("src/spec.rs", include_str!("../sdk/spec.rs")),
    ("src/stream.rs", include_str!("../sdk/stream.rs")),
];

/// The language of a new app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    C,
    /// A WSGI app (plain, or Flask with `--flask`), served by the Python host.
    Python,
}

impl Lang {
    /// The command that builds an app of this language in its directory.
    pub fn build_command(self) -> &'static str {
        match self {
            Lang::Rust => "cargo build",
            Lang::C => "make",
            Lang::Python => "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt",
        }
    }
}

/// Writes the SDK into `dir` (created if needed), replacing an SDK written before; refuses
/// a directory that holds another crate. Returns the files written.
pub fn write_sdk(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let manifest = dir.join("Cargo.toml");
    if let Ok(existing) = std::fs::read_to_string(&manifest) {
        if !existing.contains("name = \"microservice-rust\"") {
            return Err(Error::usage(format!(
                "{} belongs to another crate: `sdk` writes only into an empty directory or \
                 over an SDK it wrote",
                manifest.display()
            )));
        }
    }
    let mut files = Files::new(dir);
    for (path, text) in SDK_FILES {
        files.write(path, &text.replace("@VERSION@", VERSION))?;
    }
    files.write("include/microservice_rust.h", HEADER)?;
    Ok(files.written)
}

/// Writes a new app into `dir`, which must not exist or be empty. `name` defaults to the
/// directory's name. Returns the files written.
pub fn new_app(
    dir: &Path,
    name: Option<&str>,
    lang: Lang,
    flask: bool,
) -> Result<Vec<PathBuf>, Error> {
    if flask && lang != Lang::Python {
        return Err(Error::usage("--flask goes with --lang python"));
    }
    let name = match name {
        Some(name) => name.to_owned(),
        None => dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    check_name(&name)?;
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(Error::usage(format!(
            "{} exists and is not empty: `new` writes a new directory",
            dir.display()
        )));
    }
    let lib = name.replace('-', "_");
    let library = match lang {
        Lang::Rust => format!("target/debug/lib{lib}.so"),
        Lang::C => format!("build/lib{lib}.so"),
        Lang::Python => "src/main.py".to_string(),
    };
    let files_section = match lang {
        Lang::Rust => {
            "- `src/lib.rs`: the handler; `Cargo.toml`: a `cdylib`.\n\
             - `microservice-rust/`: the SDK crate of the server that wrote this app \
             (`microservice-rust sdk microservice-rust` replaces it with your server's)."
        }
        Lang::C => {
            "- `src/app.c`: the handler; `Makefile`: builds the shared library.\n\
             - `include/microservice_rust.h`: the ABI, with its rules \
             (`microservice-rust sdk DIR` writes your server's copy into DIR/include/)."
        }
        Lang::Python => "",
    };
    let fill = |template: &str| {
        template
            .replace("@NAME@", &name)
            .replace("@LIB@", &lib)
            .replace("@TYPE@", &type_name(&name))
            .replace("@VERSION@", VERSION)
            .replace("@BUILD@", lang.build_command())
            .replace("@LIBPATH@", &library)
            .replace("@FILES@", files_section)
            .replace("@KIND@", if flask { "Flask" } else { "plain WSGI" })
    };
    let mut files = Files::new(dir);
    match lang {
        Lang::Rust => {
            files.write(
                "Cargo.toml",
                &fill(include_str!("templates/rust/Cargo.toml")),
            )?;
            files.write("src/lib.rs", &fill(include_str!("templates/rust/lib.rs")))?;
            files.write(
                "Dockerfile",
                &fill(include_str!("templates/rust/Dockerfile")),
            )?;
            files.write(".gitignore", "/target\n")?;
            let mut sdk = write_sdk(&dir.join("microservice-rust"))?;
            files.written.append(&mut sdk);
        }
        Lang::C => {
            files.write("Makefile", &fill(include_str!("templates/c/Makefile")))?;
            files.write("src/app.c", &fill(include_str!("templates/c/app.c")))?;
            files.write("Dockerfile", &fill(include_str!("templates/c/Dockerfile")))?;
            files.write("include/microservice_rust.h", HEADER)?;
            files.write(".gitignore", "/build\n")?;
        }
        Lang::Python => {
            let (main, requirements) = match flask {
                true => (
                    include_str!("templates/python/flask_main.py"),
                    "flask>=3,<4\n",
                ),
                false => (
                    include_str!("templates/python/main.py"),
                    "# The app's packages, one per line (pip's format); plain WSGI needs none.\n",
                ),
            };
            files.write("src/main.py", &fill(main))?;
            files.write("requirements.txt", requirements)?;
            files.write(
                "Dockerfile",
                &fill(include_str!("templates/python/Dockerfile")),
            )?;
            files.write(".gitignore", "__pycache__/\n/.venv\n")?;
        }
    }
    files.write(
        "config/dev/config.json",
        "{ \"mode\": \"dev\", \"greeting\": \"Hello\" }\n",
    )?;
    files.write(
        "config/production/config.json",
        "{ \"mode\": \"production\", \"threads\": 8, \"request_timeout_s\": 10, \
         \"greeting\": \"Hello\" }\n",
    )?;
    let readme = match lang {
        Lang::Python => include_str!("templates/python/README.md"),
        _ => include_str!("templates/README.md"),
    };
    files.write("README.md", &fill(readme))?;
    Ok(files.written)
}

/// A crate name that is also a directory and a library name: `hello-app`, `orders_v2`.
fn check_name(name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_well = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_".contains(c));
    if starts_well && rest_well && name.len() <= 64 {
        return Ok(());
    }
    Err(Error::usage(format!(
        "the app's name {name:?} cannot name a crate and a library: use --name with lower-case \
         letters, digits, `-` and `_`, starting with a letter"
    )))
}

/// `hello-app` → `HelloApp`; a name that would shadow the SDK's types gets `Service` added.
fn type_name(name: &str) -> String {
    let mut out: String = name
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or(String::new(), |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect();
    if ["App", "Config", "Request", "Response"].contains(&out.as_str()) {
        out.push_str("Service");
    }
    out
}

/// Files written under one directory, remembered in order.
struct Files<'a> {
    dir: &'a Path,
    written: Vec<PathBuf>,
}

impl<'a> Files<'a> {
    fn new(dir: &'a Path) -> Files<'a> {
        Files {
            dir,
            written: Vec::new(),
        }
    }

    fn write(&mut self, relative: &str, text: &str) -> Result<(), Error> {
        let path = self.dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
        }
        std::fs::write(&path, text)
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        self.written.push(path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_carries_every_file_of_the_sdk() {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sdk");
        let mut on_disk: Vec<String> = std::fs::read_dir(&sdk)
            .expect("src/sdk")
            .map(|e| format!("src/{}", e.expect("entry").file_name().to_string_lossy()))
            .collect();
        on_disk.sort();
        let mut carried: Vec<String> = SDK_FILES[1..].iter().map(|(p, _)| p.to_string()).collect();
        carried.sort();
        assert_eq!(carried, on_disk);
    }

    #[test]
    fn names_become_types_and_bad_names_are_refused() {
        assert_eq!(type_name("hello-app"), "HelloApp");
        assert_eq!(type_name("orders_v2"), "OrdersV2");
        assert_eq!(type_name("app"), "AppService");
        for bad in ["", "Hello", "1st", "a b", "a.b", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("hello-app_2").is_ok());
    }
}
