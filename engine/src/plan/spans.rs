//! Where in the pipeline file a planning error points: the YAML node an op's
//! [`CheckLocation`] names, and the `${...}` inside a string that a bad reference is.

use crate::interp::InterpError;
use crate::op::CheckLocation;
use crate::spec::{PipelineSpec, StageSpec};
use crate::yaml::{Node, Span};

/// The span an op's error at `at` points to in `stage`; the stage's name when the node it
/// names is not in the file (a param that is missing, say).
pub(super) fn locate(spec: &PipelineSpec, stage: &StageSpec, at: &CheckLocation) -> Span {
    let found = match at {
        CheckLocation::Stage => None,
        CheckLocation::Param(path) => stage.with.as_ref().and_then(|w| deepest(w, path)).map(|n| n.span),
        CheckLocation::ParamKey(path) => stage.with.as_ref().and_then(|w| param_key(w, path)).map(|n| n.span),
        CheckLocation::Input(port) => stage.inputs.iter().find(|i| &i.port == port).map(|i| i.ref_span),
        CheckLocation::Output(port) => stage.outputs.iter().find(|o| &o.port == port).map(|o| o.port_span),
        // An endpoint that came from the command line or the environment has no place in the file.
        CheckLocation::Section(name, path) => {
            spec.sections.get(name).and_then(|s| deepest(s, path)).map(|n| n.span).filter(|s| *s != Span::default())
        }
    };
    found.unwrap_or(stage.name_span)
}

/// The label under the span: the param's path, when the error is about one.
pub(super) fn label(at: &CheckLocation) -> String {
    match at {
        CheckLocation::Param(path) | CheckLocation::ParamKey(path) if !path.is_empty() => {
            format!("param `{}`", path.join("."))
        }
        _ => "here".into(),
    }
}

/// The key node of the param at `path` (for an unknown param, the name is what is wrong).
fn param_key<'n>(root: &'n Node, path: &[String]) -> Option<&'n Node> {
    let (name, parent) = path.split_last()?;
    root.at_path(parent)?.as_map()?.iter().find(|(k, _)| k.key_text() == *name).map(|(k, _)| k)
}

/// The deepest node along a param path (a missing field points at its parent).
pub(super) fn deepest<'n>(root: &'n Node, path: &[String]) -> Option<&'n Node> {
    (0..=path.len()).rev().find_map(|i| root.at_path(&path[..i]))
}

/// The span of the bad `${...}` itself inside its string, when the string is written on one line
/// (plain or quoted, without escapes before it); otherwise the whole string.
pub(super) fn reference_span(source: &str, e: &InterpError) -> Span {
    let Some((offset, len)) = e.at else { return e.span };
    let quote = matches!(source.as_bytes().get(e.span.offset), Some(b'"' | b'\''));
    let start = e.span.offset + usize::from(quote) + offset;
    match source.get(start..start + len) {
        Some(text) if text.starts_with("${") && !text.contains('\n') => Span::new(start, len),
        _ => e.span,
    }
}
