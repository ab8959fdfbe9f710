//! Where `config.json` is found and how it is loaded, as Armada's hermes does: the
//! **first** directory holding a `config.json` wins, and keys it lacks take the built-in
//! defaults (files are never merged):
//!
//! 1. `--config FILE`: that file alone;
//! 2. each directory of `CONFIG_PATH` (`:`-separated), in order;
//! 3. `/opt/$MICROSERVICE_NAME/$CONFIG_DIR/…` for the environment and its parents, deepest
//!    first, with the `MICROSERVICE_APP_ID` combinations, then `$CONFIG_DIR/` itself;
//! 4. the same walk in `./$CONFIG_DIR/` of the working directory (an app's own directory);
//! 5. the image's own defaults file, [`IMAGE_DEFAULTS`].
//!
//! With none found, the built-in defaults apply. Relative paths in a file (`app`,
//! `dev.watch`) are taken from the file's directory. The mode, unless the config sets it,
//! follows the environment's name ([`Mode::for_env`]).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{Mode, Settings, IMAGE_DEFAULTS};
use crate::error::Error;

/// Where to look, taken from the command line and the environment.
#[derive(Clone, Debug, Default)]
pub struct Lookup {
    /// `--config FILE`.
    pub file: Option<PathBuf>,
    /// `--env`, `MICROSERVICE_ENV` or `dev`.
    pub env: String,
    pub config_path: Option<String>,
    pub microservice_name: Option<String>,
    pub config_dir: String,
    pub app_id: Option<String>,
    /// The directory the service was started in.
    pub working_dir: Option<PathBuf>,
    pub image_defaults: PathBuf,
}

impl Lookup {
    /// The lookup as this process's environment describes it.
    pub fn from_environment(file: Option<PathBuf>, env: Option<String>) -> Lookup {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Lookup {
            file,
            env: env
                .or_else(|| var("MICROSERVICE_ENV"))
                .unwrap_or_else(|| "dev".into()),
            config_path: var("CONFIG_PATH"),
            microservice_name: var("MICROSERVICE_NAME"),
            config_dir: var("CONFIG_DIR").unwrap_or_else(|| "config".into()),
            app_id: var("MICROSERVICE_APP_ID"),
            working_dir: std::env::current_dir().ok(),
            image_defaults: PathBuf::from(IMAGE_DEFAULTS),
        }
    }

    /// The directories searched for `config.json`, in order (without `--config`).
    pub fn directories(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .config_path
            .iter()
            .flat_map(|p| p.split(':'))
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect();
        let walk = |base: PathBuf| {
            env_subdirectories(&self.env, self.app_id.as_deref())
                .into_iter()
                .map(move |sub| base.join(sub))
        };
        if let Some(name) = &self.microservice_name {
            dirs.extend(walk(Path::new("/opt").join(name).join(&self.config_dir)));
        }
        if let Some(working_dir) = &self.working_dir {
            dirs.extend(walk(working_dir.join(&self.config_dir)));
        }
        if let Some(parent) = self.image_defaults.parent() {
            dirs.push(parent.to_path_buf());
        }
        dirs
    }

    /// Finds, reads and validates the config.
    pub fn resolve(&self) -> Result<Loaded, Error> {
        check_env_name(&self.env)?;
        if let Some(file) = &self.file {
            return Loaded::read(file, &self.env);
        }
        for dir in self.directories() {
            let file = dir.join("config.json");
            if file.is_file() {
                return Loaded::read(&file, &self.env);
            }
        }
        Loaded::from_value(json!({}), None, &self.env)
    }
}

fn check_env_name(env: &str) -> Result<(), Error> {
    let ok = !env.is_empty()
        && !env.starts_with('/')
        && env
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    match ok {
        true => Ok(()),
        false => Err(Error::config(
            "--env / MICROSERVICE_ENV",
            format!("expected a name such as `production` or `production/eu`, found {env:?}"),
        )),
    }
}

/// The sub-directories of `$CONFIG_DIR` for an environment, deepest first, as Armada builds
/// them: the environment, `env/app_id` and `app_id/env`, each with all its parents, and
/// finally `$CONFIG_DIR` itself (the empty path).
pub(super) fn env_subdirectories(env: &str, app_id: Option<&str>) -> Vec<String> {
    let mut combos = Vec::new();
    if let Some(app) = app_id {
        combos.push(format!("{env}/{app}"));
        combos.push(format!("{app}/{env}"));
    }
    combos.push(env.to_string());
    let mut dirs: Vec<String> = Vec::new();
    for combo in &combos {
        let parts: Vec<&str> = combo.split('/').collect();
        for depth in (1..=parts.len()).rev() {
            let dir = parts[..depth].join("/");
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    // Stable: among equal depths the order above (env/app, app/env, env) is kept.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.split('/').count()));
    dirs.push(String::new());
    dirs
}

/// A resolved config: the typed supervisor settings and the whole object for the app.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub settings: Settings,
    /// The object as read, with command-line overrides applied.
    pub value: Value,
    /// The file it came from; `None` for the built-in defaults.
    pub source: Option<PathBuf>,
    /// The environment it was looked up for.
    pub env: String,
}

impl Loaded {
    pub fn read(file: &Path, env: &str) -> Result<Loaded, Error> {
        let shown = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::config(&shown, "file not found"),
            _ => Error::config(&shown, format!("cannot read it: {e}")),
        })?;
        let mut value: Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(&shown, format!("not valid JSON: {e}")))?;
        if let Some(dir) = file.parent() {
            paths_from(&mut value, dir);
        }
        Loaded::from_value(value, Some(file.to_path_buf()), env)
    }

    pub fn from_value(value: Value, source: Option<PathBuf>, env: &str) -> Result<Loaded, Error> {
        let settings = settings_for(&value, &source_name(source.as_deref()), env)?;
        Ok(Loaded {
            settings,
            value,
            source,
            env: env.to_string(),
        })
    }

    /// Applies a command-line value over the file's, re-validating it under `flag`'s name.
    pub fn set(&mut self, key: &str, value: Value, flag: &str) -> Result<(), Error> {
        let mut candidate = self.value.clone();
        match candidate.as_object_mut() {
            Some(map) => map.insert(key.to_string(), value),
            None => unreachable!("validated as an object when loaded"),
        };
        self.settings = settings_for(&candidate, flag, &self.env)?;
        self.value = candidate;
        Ok(())
    }

    /// The object handed to the app and printed by `check-config`: the app's keys as read,
    /// and every supervisor key with the value in force.
    pub fn effective(&self) -> Value {
        let mut out = self.value.as_object().cloned().unwrap_or_default();
        for key in ["use_apache", "apache_config"] {
            out.remove(key);
        }
        if let Value::Object(supervisor) = self.settings.to_json(true) {
            out.extend(supervisor);
        }
        Value::Object(out)
    }

    pub fn source_name(&self) -> String {
        source_name(self.source.as_deref())
    }

    /// What looks wrong in the config without being an error: top-level keys that are not
    /// server keys but look like one (they may be the app's).
    pub fn warnings(&self) -> Vec<String> {
        super::near_misses(&self.value)
            .into_iter()
            .map(|(key, like)| {
                format!(
                    "{}: key `{key}` is not a server key (the app gets it as it is); did you \
                     mean `{like}`?",
                    self.source_name()
                )
            })
            .collect()
    }

    /// Where the mode in force came from, for the start line and `check-config`.
    pub fn mode_origin(&self) -> String {
        match self.settings.mode_key {
            Some(key) => format!("set by `{key}` in {}", self.source_name()),
            None => format!("from the environment `{}`", self.env),
        }
    }
}

/// Validates `value` and, where it does not set the mode, lets the environment choose it.
fn settings_for(value: &Value, source: &str, env: &str) -> Result<Settings, Error> {
    let mut settings = Settings::from_json(value, source)?;
    if settings.mode_key.is_none() {
        settings.mode = Mode::for_env(env);
    }
    Ok(settings)
}

/// Makes the relative paths of a config file (`app`, `dev.watch`, `python.virtualenv`)
/// paths from `dir`, the file's directory. Values of the wrong type are left for
/// validation to name.
fn paths_from(value: &mut Value, dir: &Path) {
    let absolute = |path: &mut Value| {
        if let Some(text) = path.as_str().filter(|t| !t.is_empty()) {
            if Path::new(text).is_relative() {
                *path = json!(dir.join(text).display().to_string());
            }
        }
    };
    if let Some(app) = value
        .get_mut("app")
        .filter(|app| app.as_str().is_some_and(microservice_rust::spec::is_path))
    {
        absolute(app);
    }
    if let Some(Value::Array(watch)) = value.get_mut("dev").and_then(|d| d.get_mut("watch")) {
        watch.iter_mut().for_each(absolute);
    }
    if let Some(virtualenv) = value
        .get_mut("python")
        .and_then(|p| p.get_mut("virtualenv"))
    {
        absolute(virtualenv);
    }
}

fn source_name(source: Option<&Path>) -> String {
    source.map_or_else(
        || "built-in defaults".to_string(),
        |p| p.display().to_string(),
    )
}
