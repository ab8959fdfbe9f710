//! The Prometheus text exposition format (0.0.4), written: the one writer of `/metrics`,
//! for the server's families and the app's alike.

use std::fmt::{Display, Write};

/// The `/metrics` text being written.
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition {
            text: String::with_capacity(8192),
        }
    }

    /// A family's `HELP` and `TYPE` lines (`kind`: counter, gauge or histogram).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = write!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    /// One sample; `labels` is written as it is (see [`label`]).
    pub fn sample(&mut self, name: &str, labels: &str, value: impl Display) {
        let _ = match labels.is_empty() {
            true => writeln!(self.text, "{name} {value}"),
            false => writeln!(self.text, "{name}{{{labels}}} {value}"),
        };
    }

    pub fn finish(self) -> String {
        self.text
    }
}

/// `name="value"`, the value escaped (`\`, `"`, line ends).
pub fn label(name: &str, value: &str) -> String {
    let value = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("{name}=\"{value}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_labels_are_written_escaped() {
        let mut out = Exposition::new();
        out.family("a_total", "counter", "Two\nlines \\ here.");
        out.sample("a_total", "", 3);
        out.sample("a_total", &label("user", "a\"b\\c\nd"), 1.5);
        assert_eq!(
            out.finish(),
            "# HELP a_total Two\\nlines \\\\ here.\n# TYPE a_total counter\na_total 3\n\
             a_total{user=\"a\\\"b\\\\c\\nd\"} 1.5\n"
        );
    }
}
