//! Configuration diagnostics shared by every loader in cpclink (appliance, authority, srv6
//! topology, hardware profiles): an error names the file, the field as a TOML path, the line
//! it is on, what is wrong and how to fix it.
//!
//! A loader wraps its text in a [`ConfigText`], parses it with [`ConfigText::parse`] (serde
//! and syntax errors become [`Diagnostic`]s with the field and line recovered from the span)
//! and reports its own checks with [`ConfigText::error`], which finds the field's line.
#![forbid(unsafe_code)]

use std::fmt;
use std::ops::RangeInclusive;
use std::path::Path;

/// One configuration error: where it is, what is wrong and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as the operator named it.
    pub file: String,
    /// The field as a TOML path, e.g. `[appliance].listen` or `[[peers]][1].endpoint`;
    /// `(file)` for the file as a whole.
    pub field: String,
    /// The 1-based line the field is on, when it is in the file.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
    /// What to write instead, when there is something to say beyond the reason.
    pub fix: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}: {}", self.field, self.reason)?;
        if let Some(fix) = &self.fix {
            write!(f, "; {fix}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

impl Diagnostic {
    /// A diagnostic without a line: for a value that came from somewhere other than a
    /// file's text (the command line, a file a field points at).
    pub fn new(
        file: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            field: field.into(),
            line: None,
            reason: reason.into(),
            fix: None,
        }
    }

    /// Adds (or replaces) the fix.
    #[must_use]
    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// A configuration file's text with its name, for parsing and for pointing at fields.
#[derive(Debug, Clone)]
pub struct ConfigText {
    file: String,
    text: String,
}

impl ConfigText {
    /// Reads `path`; an unreadable file is a diagnostic naming it.
    pub fn read(path: &Path) -> Result<Self, Diagnostic> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self { file, text }),
            Err(e) => Err(Diagnostic {
                file,
                field: "(file)".into(),
                line: None,
                reason: format!("cannot read it: {e}"),
                fix: Some("pass the path of an existing, readable TOML file".into()),
            }),
        }
    }

    /// Text already in memory (compiled-in defaults, tests), named `file` in errors.
    pub fn new(file: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            text: text.into(),
        }
    }

    /// The file's name as errors give it.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Deserializes the text; syntax and type errors name the field, the line and the fix.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Diagnostic> {
        toml::from_str(&self.text).map_err(|e| self.toml_error(&e))
    }

    /// A diagnostic for `field` (a TOML path such as `[appliance].listen`,
    /// `[[keymgr.peer]][2].prefixes` or `service.scoring`), with the line found in the text.
    pub fn error(&self, field: impl Into<String>, reason: impl Into<String>) -> Diagnostic {
        let field = field.into();
        Diagnostic {
            file: self.file.clone(),
            line: line_of_field(&self.text, &field),
            field,
            reason: reason.into(),
            fix: None,
        }
    }

    /// A diagnostic for `field` with its fix.
    pub fn error_fix(
        &self,
        field: impl Into<String>,
        reason: impl Into<String>,
        fix: impl Into<String>,
    ) -> Diagnostic {
        self.error(field, reason).with_fix(fix)
    }

    /// Refuses `value` outside `allowed`, naming the range in the fix; `unit` follows the
    /// numbers (`"seconds"`, `"days"`) and `hint` says what a typical value means.
    pub fn check_range<T>(
        &self,
        field: impl Into<String>,
        value: T,
        allowed: RangeInclusive<T>,
        unit: &str,
        hint: &str,
    ) -> Result<T, Diagnostic>
    where
        T: PartialOrd + fmt::Display,
    {
        if allowed.contains(&value) {
            return Ok(value);
        }
        let side = if value < *allowed.start() {
            "below the minimum"
        } else {
            "above the maximum"
        };
        let unit = if unit.is_empty() {
            String::new()
        } else {
            format!(" {unit}")
        };
        let hint = if hint.is_empty() {
            String::new()
        } else {
            format!(" ({hint})")
        };
        Err(self.error_fix(
            field,
            format!("{value}{unit} is out of range ({side})"),
            format!(
                "write a value from {} to {}{unit}{hint}",
                allowed.start(),
                allowed.end()
            ),
        ))
    }

    fn toml_error(&self, e: &toml::de::Error) -> Diagnostic {
        let mut message = e.message().trim().to_owned();
        let mut fix = fix_for(&message);
        if message.starts_with("unknown field") {
            // The known fields go in the fix, not twice.
            if let Some((head, _)) = message.split_once(", expected") {
                message = head.to_owned();
            }
        }
        let (line, field) = match e.span() {
            Some(span) => {
                let start = span.start.min(self.text.len());
                let line = self.text[..start].matches('\n').count() + 1;
                (Some(line), field_at(&self.text, line, &message))
            }
            None => (None, "(file)".to_owned()),
        };
        Diagnostic {
            file: self.file.clone(),
            field,
            line,
            fix: fix.take(),
            reason: message,
        }
    }
}

/// The field a serde error at `line` is about: the enclosing section plus the key on that
/// line, or the key a `missing field`/`unknown field` message names.
fn field_at(text: &str, line: usize, message: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines
        .get(line.saturating_sub(1))
        .copied()
        .unwrap_or("")
        .trim();
    let mut section = String::new();
    for l in lines.iter().take(line).rev() {
        if let Some(header) = section_header(l.trim()) {
            section = header;
            break;
        }
    }
    let named = quoted_field(message);
    let key = if let Some(header) = section_header(here) {
        // The span is a whole table: a missing field inside it, say.
        section = header;
        named
    } else if let Some((key, _)) = here.split_once('=') {
        Some(key.trim().trim_matches('"').to_owned())
    } else {
        named
    };
    match (section.is_empty(), key) {
        (true, Some(k)) => k,
        (true, None) => "(document)".into(),
        (false, Some(k)) => format!("{section}.{k}"),
        (false, None) => section,
    }
}

/// `[name]` or `[[name]]` as written, if the line is a section header.
fn section_header(line: &str) -> Option<String> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.starts_with('[') && line.ends_with(']') {
        Some(line.to_owned())
    } else {
        None
    }
}

/// The name between backticks in serde's "missing field `x`" and "unknown field `x`".
fn quoted_field(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

/// What to do about serde's and toml's common complaints.
fn fix_for(message: &str) -> Option<String> {
    if message.starts_with("missing field") {
        let name = quoted_field(message).unwrap_or_default();
        Some(format!(
            "add `{name} = …` to this section (it has no default)"
        ))
    } else if message.starts_with("unknown field") {
        let expected = message
            .split_once(", expected ")
            .map_or(String::new(), |(_, e)| {
                format!(" (known: {})", e.trim_start_matches("one of "))
            });
        Some(format!("remove it or correct its spelling{expected}"))
    } else if message.starts_with("invalid type") || message.starts_with("invalid value") {
        let expected = message.rsplit_once("expected ").map_or("", |(_, e)| e);
        Some(format!("write {} here", describe(expected)))
    } else if message.contains("duplicate key") {
        Some("give each key once per section".into())
    } else {
        None
    }
}

/// Serde's expectation in words an operator reads.
fn describe(expected: &str) -> String {
    match expected {
        "usize" | "u8" | "u16" | "u32" | "u64" | "i64" | "integer" => {
            "a whole number without quotes, e.g. 2".into()
        }
        "f64" | "f32" => "a number without quotes, e.g. 1.5".into(),
        "a boolean" | "bool" => "true or false (without quotes)".into(),
        "a string" => "a quoted string".into(),
        "a sequence" => "a list, e.g. [\"a\", \"b\"]".into(),
        other => other.into(),
    }
}

/// The line of `field` (see [`ConfigText::error`]): the key's line inside its section (the
/// `n`th table of an array of tables for `[[name]][n]`), else the section's header line.
fn line_of_field(text: &str, field: &str) -> Option<usize> {
    let (section, index, key) = split_field(field);
    let lines: Vec<&str> = text.lines().collect();
    let (start, end) = match &section {
        None => (0, lines.len()),
        Some(name) => {
            let mut seen = 0usize;
            let mut found = None;
            for (i, l) in lines.iter().enumerate() {
                let Some(header) = section_header(l.trim()) else {
                    continue;
                };
                let bare = header.trim_matches(|c| c == '[' || c == ']').trim();
                if bare == name {
                    if seen == index.unwrap_or(0) {
                        found = Some(i);
                        break;
                    }
                    seen += 1;
                }
            }
            let start = match found {
                Some(i) => i,
                // `[peers.b]`: the table of the array `[[peers]]` whose name (or id) is "b".
                None => named_table(&lines, name)?,
            };
            (start, next_header(&lines, start + 1).unwrap_or(lines.len()))
        }
    };
    if let Some(key) = key {
        // A top-level key ends at the first header.
        let end = match section {
            None => next_header(&lines, 0).unwrap_or(end),
            Some(_) => end,
        };
        if let Some(i) = key_line(&lines, start, end, &key) {
            return Some(i + 1);
        }
        if let (Some(name), Some((head, rest))) = (&section, key.split_once('.')) {
            if let Some(i) = subtable_line(&lines, name, start, head, rest) {
                return Some(i + 1);
            }
        }
    }
    section.map(|_| start + 1)
}

/// The index of the first section header at or after `from`.
fn next_header(lines: &[&str], from: usize) -> Option<usize> {
    lines
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, l)| section_header(l.trim()).is_some())
        .map(|(i, _)| i)
}

/// The index of the line in `start..end` that sets `key` (indices such as `via[1]`
/// dropped); for a dotted `metrics.cpu_load`, also the `metrics = { … }` line.
fn key_line(lines: &[&str], start: usize, end: usize, key: &str) -> Option<usize> {
    let bare = key.split('[').next().unwrap_or(key);
    let head = bare.split('.').next().unwrap_or(bare);
    let mut inline = None;
    for (i, l) in lines.iter().enumerate().take(end).skip(start) {
        if section_header(l.trim()).is_some() {
            continue;
        }
        if let Some((k, _)) = l.split_once('=') {
            let k = k.trim().trim_matches('"');
            if k == bare {
                return Some(i);
            }
            if k == head && inline.is_none() {
                inline = Some(i);
            }
        }
    }
    inline
}

/// For `[[sites]][n].metrics.cpu_load`: the line of `cpu_load` in the `[sites.metrics]`
/// table that follows the element's header at `start` (or that table's header), before
/// the next element begins.
fn subtable_line(
    lines: &[&str],
    name: &str,
    start: usize,
    head: &str,
    rest: &str,
) -> Option<usize> {
    let sub = format!("{name}.{head}");
    let inside = format!("{name}.");
    for (i, l) in lines.iter().enumerate().skip(start + 1) {
        let Some(header) = section_header(l.trim()) else {
            continue;
        };
        let bare = header.trim_matches(|c| c == '[' || c == ']').trim();
        if bare == sub {
            let end = next_header(lines, i + 1).unwrap_or(lines.len());
            return Some(key_line(lines, i + 1, end, rest).unwrap_or(i));
        }
        if !bare.starts_with(&inside) {
            return None;
        }
    }
    None
}

/// The header line of the table of `[[array]]` whose `name` or `id` is `label`, for a
/// section written `array.label`.
fn named_table(lines: &[&str], section: &str) -> Option<usize> {
    let (array, label) = section.rsplit_once('.')?;
    let header = format!("[[{array}]]");
    let mut table = None;
    for (i, l) in lines.iter().enumerate() {
        let l = l.trim();
        if let Some(h) = section_header(l) {
            table = (h == header).then_some(i);
            continue;
        }
        if let (Some(start), Some((k, v))) = (table, l.split_once('=')) {
            let value = v.split('#').next().unwrap_or("").trim().trim_matches('"');
            if matches!(k.trim(), "name" | "id") && value == label {
                return Some(start);
            }
        }
    }
    None
}

/// `[a.b][2].c` → (Some("a.b"), Some(2), Some("c")); `a.c` → (Some("a"), None, Some("c"));
/// `c` → (None, None, Some("c")).
fn split_field(field: &str) -> (Option<String>, Option<usize>, Option<String>) {
    let field = field.trim();
    if field.starts_with('[') {
        let inner_end = field.rfind(']').unwrap_or(field.len());
        // Section part: everything up to the last ']' of the header brackets.
        let header_end = field
            .char_indices()
            .scan(0i32, |depth, (i, c)| {
                match c {
                    '[' => *depth += 1,
                    ']' => *depth -= 1,
                    _ => {}
                }
                Some((i, *depth))
            })
            .find(|&(_, d)| d == 0)
            .map_or(inner_end, |(i, _)| i);
        let name = field[..=header_end.min(field.len() - 1)]
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        let mut rest = &field[(header_end + 1).min(field.len())..];
        let mut index = None;
        if let Some(r) = rest.strip_prefix('[') {
            if let Some((n, after)) = r.split_once(']') {
                index = n.parse().ok();
                rest = after;
            }
        }
        let key = rest
            .strip_prefix('.')
            .filter(|k| !k.is_empty())
            .map(str::to_owned);
        // `[peers.b]`-style names identify a table by its `name` key: look for that table.
        (Some(name), index, key)
    } else if let Some((section, key)) = field.rsplit_once('.') {
        (Some(section.to_owned()), None, Some(key.to_owned()))
    } else {
        (None, None, Some(field.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct File {
        appliance: Appliance,
        #[serde(default)]
        peers: Vec<Peer>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Appliance {
        listen: String,
        #[serde(default)]
        workers: usize,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Peer {
        name: String,
        endpoint: String,
    }

    const GOOD: &str = "# comment\n[appliance]\nlisten = \"10.0.0.1:1000\"\nworkers = 2\n\n[[peers]]\nname = \"b\"\nendpoint = \"10.0.0.2:1000\"\n\n[[peers]]\nname = \"c\"\nendpoint = \"10.0.0.3:1000\"\n";

    #[test]
    fn a_wrong_type_names_the_section_key_line_and_fix() {
        let text = GOOD.replace("workers = 2", "workers = \"two\"");
        let e = ConfigText::new("a.toml", text).parse::<File>().unwrap_err();
        assert_eq!(e.field, "[appliance].workers");
        assert_eq!(e.line, Some(4));
        assert!(e.fix.as_deref().unwrap().contains("whole number"), "{e}");
        assert!(
            e.to_string().starts_with("a.toml:4: [appliance].workers: "),
            "{e}"
        );
    }

    #[test]
    fn a_missing_field_names_its_section_and_what_to_add() {
        let text = GOOD.replace("listen = \"10.0.0.1:1000\"\n", "");
        let e = ConfigText::new("a.toml", text).parse::<File>().unwrap_err();
        assert_eq!(e.field, "[appliance].listen", "{e}");
        assert_eq!(e.line, Some(2));
        assert!(e.fix.as_deref().unwrap().contains("add `listen"), "{e}");
    }

    #[test]
    fn a_misspelt_key_is_refused_with_the_known_ones() {
        let text = GOOD.replace("endpoint = \"10.0.0.3:1000\"", "endpiont = \"x\"");
        let e = ConfigText::new("a.toml", text).parse::<File>().unwrap_err();
        assert_eq!(e.field, "[[peers]].endpiont", "{e}");
        assert_eq!(e.line, Some(12));
        assert!(e.fix.as_deref().unwrap().contains("endpoint"), "{e}");
    }

    #[test]
    fn checks_after_parsing_find_the_line_of_their_field() {
        let c = ConfigText::new("a.toml", GOOD);
        assert_eq!(c.error("[appliance].workers", "x").line, Some(4));
        assert_eq!(c.error("[[peers]][1].endpoint", "x").line, Some(12));
        assert_eq!(c.error("[[peers]][0].endpoint", "x").line, Some(8));
        assert_eq!(c.error("[[peers]][1]", "x").line, Some(10));
        assert_eq!(c.error("appliance.listen", "x").line, Some(3));
        assert_eq!(c.error("[nothing].here", "x").line, None);
        assert_eq!(c.error("[peers.c].endpoint", "x").line, Some(12));
        assert_eq!(c.error("[peers.b]", "x").line, Some(6));
        let e = c.error_fix("[appliance].listen", "has no port", "write host:port");
        assert_eq!(
            e.to_string(),
            "a.toml:3: [appliance].listen: has no port; write host:port"
        );
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let e = ConfigText::read(Path::new("/nonexistent/x.toml")).unwrap_err();
        assert_eq!(e.file, "/nonexistent/x.toml");
        assert_eq!(e.field, "(file)");
        assert!(e.reason.contains("cannot read"));
    }

    #[test]
    fn a_syntax_error_gives_its_line() {
        let text = GOOD.replace("workers = 2", "workers = = 2");
        let e = ConfigText::new("a.toml", text).parse::<File>().unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
    }

    const NESTED: &str = "ingress = \"ing\"\n[[sites]]\nname = \"s0\"\n[[sites]]\nname = \"s1\"\n[sites.metrics]\ncpu_load = 0.5\n[[sites]]\nname = \"s2\"\nmetrics = { cpu_load = 0.1 }\n[[paths]]\nvia = [\"t1\"]\n";

    #[test]
    fn a_key_in_a_subtable_of_an_array_element_is_found() {
        let c = ConfigText::new("t.toml", NESTED);
        assert_eq!(c.error("[[sites]][1].metrics.cpu_load", "x").line, Some(7));
        assert_eq!(c.error("[[sites]][2].metrics.cpu_load", "x").line, Some(10));
        // Site 0 has no metrics: its header, not site 1's table.
        assert_eq!(c.error("[[sites]][0].metrics.cpu_load", "x").line, Some(2));
        assert_eq!(c.error("[[paths]][0].via[0]", "x").line, Some(12));
        assert_eq!(c.error("ingress", "x").line, Some(1));
        assert_eq!(c.error("name", "x").line, None, "no top-level `name`");
    }

    #[test]
    fn out_of_range_values_give_the_range_as_the_fix() {
        let c = ConfigText::new("a.toml", GOOD);
        assert_eq!(
            c.check_range("[appliance].workers", 2u64, 1..=4, "", ""),
            Ok(2)
        );
        let e = c
            .check_range(
                "[appliance].workers",
                9u64,
                1..=4,
                "workers",
                "one per core",
            )
            .unwrap_err();
        assert_eq!(e.line, Some(4));
        assert_eq!(e.reason, "9 workers is out of range (above the maximum)");
        assert_eq!(
            e.fix.as_deref(),
            Some("write a value from 1 to 4 workers (one per core)")
        );
        let e = c
            .check_range("[appliance].workers", 0u64, 1..=4, "", "")
            .unwrap_err();
        assert!(e.reason.contains("below the minimum"), "{e}");
    }

    #[test]
    fn a_negative_count_says_what_to_write() {
        let text = GOOD.replace("workers = 2", "workers = -2");
        let e = ConfigText::new("a.toml", text).parse::<File>().unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.fix.as_deref().unwrap().contains("whole number"), "{e}");
    }

    #[test]
    fn a_diagnostic_without_text_has_no_line() {
        let e = Diagnostic::new("<command line>", "APPLIANCE", "is empty").with_fix("name it");
        assert_eq!(
            e.to_string(),
            "<command line>: APPLIANCE: is empty; name it"
        );
    }
}
