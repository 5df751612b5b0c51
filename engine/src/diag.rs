//! Diagnostics a person can act on: file, line and column (through miette), the stage, what
//! was expected, and the nearest valid name for a typo. All errors of a file come at once.

use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};

use crate::yaml::Span;

/// The pipeline file's text, shared by every diagnostic about it.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub name: String,
    pub text: Arc<String>,
}

impl SourceFile {
    pub fn named_source(&self) -> NamedSource<Arc<String>> {
        NamedSource::new(self.name.clone(), self.text.clone()).with_language("yaml")
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(&self.text, offset)
    }
}

/// 1-based line and column (in characters) of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// One problem in a pipeline file.
#[derive(Clone, Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
#[diagnostic(code(drover::pipeline))]
pub struct PipelineError {
    pub message: String,
    #[source_code]
    pub src: NamedSource<Arc<String>>,
    #[label("{label}")]
    pub span: Option<SourceSpan>,
    pub label: String,
    #[help]
    pub help: Option<String>,
    /// The stage it is about, if any.
    pub stage: Option<String>,
    /// Byte offset, for sorting.
    pub offset: usize,
}

/// Every problem found in one pass over a pipeline file, sorted by position.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{} in {file}", count(.errors.len()))]
#[diagnostic(code(drover::invalid_pipeline))]
pub struct PipelineErrors {
    pub file: String,
    #[related]
    pub errors: Vec<PipelineError>,
}

fn count(n: usize) -> String {
    if n == 1 { "1 error".into() } else { format!("{n} errors") }
}

/// Collects diagnostics about one file.
pub struct Diags {
    pub source: SourceFile,
    errors: Vec<PipelineError>,
}

impl Diags {
    pub fn new(source: SourceFile) -> Diags {
        Diags { source, errors: Vec::new() }
    }

    /// Records an error at `span`, about `stage` if given.
    pub fn error(
        &mut self,
        stage: Option<&str>,
        span: Span,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) {
        let message = message.into();
        let message = match stage {
            Some(s) => format!("stage `{s}`: {message}"),
            None => message,
        };
        self.errors.push(PipelineError {
            message,
            src: self.source.named_source(),
            span: Some(span.into()),
            label: label.into(),
            help,
            stage: stage.map(str::to_string),
            offset: span.offset,
        });
    }

    /// Starts with problems found earlier (e.g. while reading the spec).
    pub fn extend(&mut self, errors: impl IntoIterator<Item = PipelineError>) {
        self.errors.extend(errors);
    }

    pub fn into_errors(self) -> Vec<PipelineError> {
        self.errors
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// `Err` with every error so far, sorted by position, or `Ok` if there are none.
    pub fn finish(mut self) -> Result<(), PipelineErrors> {
        if self.errors.is_empty() {
            return Ok(());
        }
        self.errors.sort_by_key(|e| e.offset);
        self.errors.dedup_by(|a, b| a.offset == b.offset && a.message == b.message);
        Err(PipelineErrors { file: self.source.name.clone(), errors: self.errors })
    }

    pub fn errors(&self) -> &[PipelineError] {
        &self.errors
    }
}

/// "did you mean `x`?" for the nearest candidate, when one is close enough.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    nearest(name, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// The candidate closest to `name` by edit distance (transpositions count once), if it is
/// plausibly a typo of it: at most a third of the name's length apart, and never a guess for a
/// name that shares almost nothing with it.
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_lowercase();
    let len = name.chars().count();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = strsim::damerau_levenshtein(&name, &c.to_lowercase());
        let limit = (len.max(c.chars().count()) / 3).max(1);
        if d <= limit && d < len && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// A count with thousands separated: `1,000,000`.
pub fn thousands(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() * 4 / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A list of names for a help line: `a`, `b`, `c`.
pub fn list_names<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.into_iter().map(|n| format!("`{n}`")).collect();
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_finds_typos_and_nothing_far() {
        let names = ["prompt", "response", "id", "raw", "read_table", "concat"];
        assert_eq!(nearest("promt", names), Some("prompt"));
        assert_eq!(nearest("respnse", names), Some("response"));
        assert_eq!(nearest("rwa", names), Some("raw"), "a transposition counts once");
        assert_eq!(nearest("read_tabel", names), Some("read_table"));
        assert_eq!(nearest("frobnicate", names), None);
        assert_eq!(nearest("c", ["a"]), None, "one-letter names are never guessed");
        assert_eq!(nearest("completely_else", names), None);
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_000_000_000), "1,000,000,000");
    }
}
