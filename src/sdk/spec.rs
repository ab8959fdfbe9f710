//! What a config's `app` names: a native library, or a Python WSGI app (a file or a module,
//! and the callable in it). The server reads it to choose what to load; the Python host
//! reads it to know what to import. Not needed by apps.

use std::path::{Path, PathBuf};

/// What `app` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum App {
    /// A native library.
    Library(PathBuf),
    /// A WSGI app, served by the Python host.
    Python(PythonApp),
}

/// A WSGI app as `app` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonApp {
    pub source: PythonSource,
    /// The callable's name, with `()` when it is a factory to call; `None`: `app`, else
    /// `application`.
    pub callable: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PythonSource {
    /// A `.py` file, imported as module `__main__`'s neighbour: its directory goes first on
    /// `sys.path`.
    File(PathBuf),
    /// A dotted module name, imported from the working directory and `sys.path`.
    Module(String),
}

impl App {
    /// Reads `app`: a `.py` file with an optional `:callable`, a `module:callable`, or else
    /// a library's path.
    pub fn parse(spec: &Path) -> App {
        let text = spec.to_string_lossy();
        let (base, callable) = match text.rsplit_once(':') {
            Some((base, callable)) if is_callable(callable) => (base, Some(callable)),
            _ => (&*text, None),
        };
        let callable = callable.map(str::to_string);
        if base.ends_with(".py") {
            return App::Python(PythonApp {
                source: PythonSource::File(PathBuf::from(base)),
                callable,
            });
        }
        if callable.is_some() && is_module(base) {
            return App::Python(PythonApp {
                source: PythonSource::Module(base.to_string()),
                callable,
            });
        }
        App::Library(spec.to_path_buf())
    }
}

impl std::fmt::Display for App {
    /// As `app` names it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let python = match self {
            App::Library(path) => return write!(f, "{}", path.display()),
            App::Python(python) => python,
        };
        match &python.source {
            PythonSource::File(file) => write!(f, "{}", file.display())?,
            PythonSource::Module(module) => f.write_str(module)?,
        }
        match &python.callable {
            Some(callable) => write!(f, ":{callable}"),
            None => Ok(()),
        }
    }
}

/// `name` or `name()`: a Python identifier, optionally called.
fn is_callable(text: &str) -> bool {
    is_identifier(text.strip_suffix("()").unwrap_or(text))
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A dotted module name (`shop.main`).
fn is_module(text: &str) -> bool {
    !text.is_empty() && text.split('.').all(is_identifier)
}

/// Whether a config file's `app` is a path (made absolute from the file's directory), not
/// a module name.
pub fn is_path(spec: &str) -> bool {
    !matches!(
        App::parse(Path::new(spec)),
        App::Python(PythonApp {
            source: PythonSource::Module(_),
            ..
        })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python(source: PythonSource, callable: Option<&str>) -> App {
        App::Python(PythonApp {
            source,
            callable: callable.map(str::to_string),
        })
    }

    #[test]
    fn app_names_a_library_a_python_file_or_a_module() {
        let file = |p: &str| PythonSource::File(PathBuf::from(p));
        let module = |m: &str| PythonSource::Module(m.to_string());
        for (spec, app) in [
            ("/x/libhello.so", App::Library("/x/libhello.so".into())),
            ("libhello.so", App::Library("libhello.so".into())),
            ("/x/main.py", python(file("/x/main.py"), None)),
            ("main.py:app", python(file("main.py"), Some("app"))),
            (
                "src/main.py:make_app()",
                python(file("src/main.py"), Some("make_app()")),
            ),
            ("shop.main:app", python(module("shop.main"), Some("app"))),
            ("main:create()", python(module("main"), Some("create()"))),
            // Not a callable after the colon: a library's path.
            ("/x/a:b/lib.so", App::Library("/x/a:b/lib.so".into())),
            ("shop.main", App::Library("shop.main".into())),
            ("main.py:1x", App::Library("main.py:1x".into())),
        ] {
            assert_eq!(App::parse(Path::new(spec)), app, "{spec}");
        }
        assert!(is_path("main.py:app") && is_path("lib/x.so") && !is_path("shop.main:app"));
    }
}
