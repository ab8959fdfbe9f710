//! The configuration an app is built from: the whole object the worker resolved, as JSON.
//!
//! [`Config::string`], [`Config::number`] and [`Config::boolean`] read top-level keys with no
//! dependency, so an app without the `json` feature builds with nothing from a registry;
//! with `json`, [`Config::get`] deserializes any key with serde.

/// The whole configuration object the worker resolved, as JSON text.
///
/// Supervisor keys (`threads`, `port`, …) and the app's own keys live side by side.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a> {
    json: &'a str,
}

impl<'a> Config<'a> {
    /// A top-level string, `None` when the key is absent or holds something else.
    pub fn string(&self, key: &str) -> Option<String> {
        match top_level(self.json, key)? {
            Scalar::String(text) => Some(text),
            _ => None,
        }
    }

    /// A top-level number, `None` when the key is absent or holds something else.
    pub fn number(&self, key: &str) -> Option<f64> {
        match top_level(self.json, key)? {
            Scalar::Number(number) => Some(number),
            _ => None,
        }
    }

    /// A top-level `true` or `false`, `None` when the key is absent or holds something else.
    pub fn boolean(&self, key: &str) -> Option<bool> {
        match top_level(self.json, key)? {
            Scalar::Bool(value) => Some(value),
            _ => None,
        }
    }

    pub fn from_json(json: &'a str) -> Config<'a> {
        Config { json }
    }

    /// The configuration as JSON text.
    pub fn json(&self) -> &'a str {
        self.json
    }

    /// The configuration parsed (feature `json`).
    #[cfg(feature = "json")]
    pub fn value(&self) -> Result<serde_json::Value, String> {
        serde_json::from_str(self.json).map_err(|e| format!("config is not JSON: {e}"))
    }

    /// One top-level key, deserialized (feature `json`); `Ok(None)` when it is absent.
    #[cfg(feature = "json")]
    pub fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        let value = self.value()?;
        match value.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| format!("config key `{key}`: {e}")),
        }
    }
}

/// A top-level value as the getters above see it.
enum Scalar {
    String(String),
    Number(f64),
    Bool(bool),
    Other,
}

/// The value of `key` in the JSON object `json`; `None` when absent or `json` is not an object.
fn top_level(json: &str, key: &str) -> Option<Scalar> {
    let mut reader = Reader {
        bytes: json.as_bytes(),
        at: 0,
    };
    reader.expect(b'{')?;
    if reader.peek() == Some(b'}') {
        return None;
    }
    loop {
        let name = reader.string()?;
        reader.expect(b':')?;
        if name == key {
            return reader.scalar();
        }
        reader.skip_value(0)?;
        match reader.next()? {
            b',' => continue,
            _ => return None,
        }
    }
}

/// Reads JSON text one value at a time, skipping whitespace.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    /// The next byte that is not whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn string(&mut self) -> Option<String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let byte = *self.bytes.get(self.at)?;
            self.at += 1;
            match byte {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let escaped = *self.bytes.get(self.at)?;
                    self.at += 1;
                    let c = match escaped {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'u' => self.unicode_escape()?,
                        other => char::from(other),
                    };
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                _ => out.push(byte),
            }
        }
    }

    /// The character of `\uXXXX` (the `\u` read), with a surrogate pair when there is one.
    fn unicode_escape(&mut self) -> Option<char> {
        let first = self.hex4()?;
        if !(0xd800..0xdc00).contains(&first) {
            return Some(char::from_u32(first).unwrap_or(char::REPLACEMENT_CHARACTER));
        }
        if self.bytes.get(self.at..self.at + 2) != Some(b"\\u") {
            return Some(char::REPLACEMENT_CHARACTER);
        }
        self.at += 2;
        let second = self.hex4()?;
        let code = 0x10000 + ((first - 0xd800) << 10) + second.checked_sub(0xdc00)?;
        Some(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER))
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = std::str::from_utf8(self.bytes.get(self.at..self.at + 4)?).ok()?;
        self.at += 4;
        u32::from_str_radix(digits, 16).ok()
    }

    fn scalar(&mut self) -> Option<Scalar> {
        match self.peek()? {
            b'"' => self.string().map(Scalar::String),
            b't' | b'f' | b'n' | b'-' | b'0'..=b'9' => {
                let token = self.token();
                Some(match token {
                    "true" => Scalar::Bool(true),
                    "false" => Scalar::Bool(false),
                    _ => token.parse().map_or(Scalar::Other, Scalar::Number),
                })
            }
            _ => Some(Scalar::Other),
        }
    }

    /// A bare word or number.
    fn token(&mut self) -> &str {
        let start = self.at;
        while let Some(b'a'..=b'z' | b'0'..=b'9' | b'-' | b'+' | b'.' | b'E') =
            self.bytes.get(self.at)
        {
            self.at += 1;
        }
        std::str::from_utf8(&self.bytes[start..self.at]).unwrap_or("")
    }

    /// Passes over one value of any kind; `depth` bounds nesting.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > 128 {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            open @ (b'{' | b'[') => {
                self.at += 1;
                let close = if open == b'{' { b'}' } else { b']' };
                if self.peek() == Some(close) {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    if open == b'{' {
                        self.string()?;
                        self.expect(b':')?;
                    }
                    self.skip_value(depth + 1)?;
                    match self.next()? {
                        b',' => continue,
                        c if c == close => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => (!self.token().is_empty()).then_some(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    const JSON: &str = r#"{"nested": {"greeting": "no", "list": [1, {"a": "]}"}, []]},
        "threads": 4, "ratio": -1.5e2, "on": true, "off": false, "none": null,
        "greeting": "h\u00e9llo \"you\" \ud83d\ude00\n", "list": ["x"]}"#;

    #[test]
    fn top_level_strings_numbers_and_booleans_are_read_past_nested_values() {
        let config = Config::from_json(JSON);
        assert_eq!(
            config.string("greeting").as_deref(),
            Some("héllo \"you\" 😀\n")
        );
        assert_eq!(config.number("threads"), Some(4.0));
        assert_eq!(config.number("ratio"), Some(-150.0));
        assert_eq!(config.boolean("on"), Some(true));
        assert_eq!(config.boolean("off"), Some(false));
    }

    #[test]
    fn absent_keys_other_kinds_and_broken_text_are_none() {
        let config = Config::from_json(JSON);
        assert_eq!(config.string("missing"), None);
        assert_eq!(config.string("threads"), None, "a number is not a string");
        assert_eq!(config.number("none"), None);
        assert_eq!(config.string("list"), None);
        assert_eq!(config.boolean("nested"), None);
        for broken in [
            "",
            "[]",
            "{",
            r#"{"a": "#,
            r#"{"a" 1}"#,
            r#"{"a": [1, 2"#,
            "{}",
        ] {
            assert_eq!(Config::from_json(broken).number("a"), None, "{broken:?}");
        }
    }
}
