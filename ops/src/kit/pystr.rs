//! Python's string handling, to the character, for ops that replicate a Python original
//! (Self-Instruct, Dromedary): whitespace as `str.isspace` sees it, `strip`, `capitalize`,
//! `str.format` with `{}` fields, and the few regexes the originals apply to model output.
//! A prompt built or a response parsed one character differently would ask other questions, or
//! keep other answers, than the paper's code does.

/// Python's `str.isspace` (and `\s` in its regexes): Unicode whitespace and \x1c-\x1f.
pub fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Python's `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// `re.sub(r"\s+", " ", s).strip()`.
pub fn collapse(s: &str) -> String {
    s.split(py_space).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Python's `str.capitalize()`: the first character upper-cased, the rest lower-cased (in the
/// context of the whole string, for a final sigma, as CPython does). Python 3.8+ title-cases the
/// first character; the two differ only for a few non-ASCII letters (ǅ, ß, ligatures).
pub fn capitalize(s: &str) -> String {
    let Some(first) = s.chars().next() else { return String::new() };
    first.to_uppercase().chain(s.to_lowercase().chars().skip(first.to_lowercase().count())).collect()
}

/// `re.search(r"\b(word)\b", text, re.IGNORECASE)` for a lower-case ASCII `word`.
pub fn has_word(text: &str, word: &str) -> bool {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    // Python's IGNORECASE also matches these to i and s.
    let same = |c: char, w: char| c.to_ascii_lowercase() == w || matches!((c, w), ('ı' | 'İ', 'i') | ('ſ', 's'));
    let chars: Vec<char> = text.chars().collect();
    let w: Vec<char> = word.chars().collect();
    (0..(chars.len() + 1).saturating_sub(w.len())).any(|i| {
        chars[i..i + w.len()].iter().zip(&w).all(|(c, w)| same(*c, *w))
            && (i == 0 || !is_word(chars[i - 1]))
            && chars.get(i + w.len()).is_none_or(|c| !is_word(*c))
    })
}

/// Python's `s.split(sep)[-1]`.
pub fn after_last<'a>(s: &'a str, sep: &str) -> &'a str {
    s.rsplit_once(sep).map_or(s, |(_, rest)| rest)
}

/// Python's `repr(s)` of a string: single quotes unless the text has a single quote and no
/// double quote; backslashes, the quote, `\n`, `\r`, `\t` and other control characters
/// escaped. (ICAI puts `repr` of a dict of principles into its voting prompt.)
pub fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// A template in Python's `str.format` syntax whose only fields are `{}`, split around them.
pub struct Format {
    pieces: Vec<String>,
}

impl Format {
    /// Parses `template`; a brace that is neither a `{}` field nor doubled is an error.
    pub fn parse(template: &str) -> Result<Format, String> {
        let mut pieces = vec![String::new()];
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek()) {
                ('{', Some('{')) | ('}', Some('}')) => {
                    chars.next();
                    pieces.last_mut().expect("one piece at least").push(c);
                }
                ('{', Some('}')) => {
                    chars.next();
                    pieces.push(String::new());
                }
                ('{' | '}', _) => return Err(format!("it has a `{c}` that is neither a `{{}}` field nor doubled")),
                _ => pieces.last_mut().expect("one piece at least").push(c),
            }
        }
        Ok(Format { pieces })
    }

    /// How many `{}` fields it has.
    pub fn fields(&self) -> usize {
        self.pieces.len() - 1
    }

    /// `template.format(*args)`, with as many args as fields.
    pub fn format(&self, args: &[&str]) -> String {
        let mut out = self.pieces[0].clone();
        for (arg, piece) in args.iter().zip(&self.pieces[1..]) {
            out += arg;
            out += piece;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capitalize_and_collapse_are_pythons() {
        assert_eq!(capitalize("hELLO wORLD"), "Hello world");
        assert_eq!(capitalize("ΑΣ ΣΑ"), "Ας σα");
        assert_eq!(collapse("\x1cab\x1c cd"), "ab cd");
    }

    #[test]
    fn format_fills_fields_and_unescapes_braces() {
        let p = Format::parse("a {} b {{c}} {}").unwrap();
        assert_eq!((p.fields(), p.format(&["X", "Y"])), (2, "a X b {c} Y".to_string()));
        for bad in ["a { b", "a } b", "{0}", "{}}"] {
            assert!(Format::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repr_quotes_as_python_does() {
        // Expected values: Python 3's repr() of the same strings.
        assert_eq!(py_repr("Select the response that is short"), "'Select the response that is short'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("it's \"x\""), "'it\\'s \"x\"'");
        assert_eq!(py_repr("a\\b\nc\td\u{1}"), "'a\\\\b\\nc\\td\\x01'");
        assert_eq!(py_repr("café"), "'café'");
    }
}
