//! `${...}` interpolation. Plan time resolves `${params.x}` and `${matrix.k}` (a string that
//! is exactly one reference keeps the value's type); `${in.port}` and `${out.port}` name files
//! that exist only at run time, so they are checked at plan time and filled in by the op.
//! `$${` is a literal `${`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::diag::{did_you_mean, list_names, nearest};
use crate::yaml::{Node, NodeKind, Span};

/// What a reference may name.
pub struct InterpCx<'a> {
    pub params: &'a Value,
    /// `None` when the stage has no matrix.
    pub matrix: Option<&'a BTreeMap<String, Value>>,
    pub in_ports: &'a BTreeSet<String>,
    pub out_ports: &'a BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct InterpError {
    /// The string's node.
    pub span: Span,
    /// Where in the string's value the bad reference is: (byte offset, length).
    pub at: Option<(usize, usize)>,
    pub message: String,
    pub help: Option<String>,
}

/// Interpolates every string in a tree, returning JSON. `used` collects the params read.
pub fn interpolate(
    node: &Node,
    cx: &InterpCx<'_>,
    used: &mut BTreeMap<String, Value>,
    errs: &mut Vec<InterpError>,
) -> Value {
    match &node.kind {
        NodeKind::Str(s) => interpolate_str(s, node.span, cx, used, errs),
        NodeKind::Seq(items) => Value::Array(items.iter().map(|n| interpolate(n, cx, used, errs)).collect()),
        NodeKind::Map(entries) => {
            Value::Object(entries.iter().map(|(k, v)| (k.key_text(), interpolate(v, cx, used, errs))).collect())
        }
        _ => node.to_json(),
    }
}

/// One piece of a template string.
enum Piece<'s> {
    Text(&'s str),
    /// The expression, its offset in the string and the length of `${...}`.
    Ref(&'s str, usize, usize),
}

/// Splits a string into text and `${...}` references (with their byte offset). `$${` stays
/// text. An unclosed `${` is an error.
fn pieces(s: &str) -> Result<Vec<Piece<'_>>, (usize, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    let mut base = 0;
    while let Some(i) = rest.find("${") {
        if i > 0 && rest.as_bytes()[i - 1] == b'$' {
            out.push(Piece::Text(&rest[..i + 2]));
            base += i + 2;
            rest = &rest[i + 2..];
            continue;
        }
        out.push(Piece::Text(&rest[..i]));
        // A reference ends at the first `}`; another `${` before it means this one is unclosed.
        let end = rest[i..].find('}').filter(|&end| !rest[i + 2..i + end].contains("${"));
        let Some(end) = end else {
            return Err((base + i, "unclosed `${`".into()));
        };
        out.push(Piece::Ref(rest[i + 2..i + end].trim(), base + i, end + 1));
        base += i + end + 1;
        rest = &rest[i + end + 1..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

fn interpolate_str(
    s: &str,
    span: Span,
    cx: &InterpCx<'_>,
    used: &mut BTreeMap<String, Value>,
    errs: &mut Vec<InterpError>,
) -> Value {
    if !s.contains("${") {
        return Value::String(s.to_string());
    }
    let pieces = match pieces(s) {
        Ok(p) => p,
        Err((offset, msg)) => {
            errs.push(InterpError {
                span,
                at: Some((offset, 2)),
                message: msg,
                help: Some("close it with `}`, or write `$${` for a literal `${`".into()),
            });
            return Value::String(s.to_string());
        }
    };
    let refs = pieces.iter().filter(|p| matches!(p, Piece::Ref(..))).count();
    let whole = pieces.iter().all(|p| matches!(p, Piece::Ref(..) | Piece::Text("")));
    let mut out = String::new();
    for piece in &pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(expr, offset, len) => match resolve(expr, cx, used) {
                Ok(Some(v)) => {
                    if whole && refs == 1 {
                        return v;
                    }
                    out.push_str(&render(&v));
                }
                Ok(None) => {
                    out.push_str("${");
                    out.push_str(expr);
                    out.push('}');
                }
                Err((message, help)) => errs.push(InterpError { span, at: Some((*offset, *len)), message, help }),
            },
        }
    }
    Value::String(out)
}

/// `Ok(Some)` for a plan-time value, `Ok(None)` for a valid run-time port reference.
fn resolve(
    expr: &str,
    cx: &InterpCx<'_>,
    used: &mut BTreeMap<String, Value>,
) -> Result<Option<Value>, (String, Option<String>)> {
    let (scope, path) = expr.split_once('.').unwrap_or((expr, ""));
    match scope {
        "params" => {
            let mut v = cx.params;
            let mut walked = String::new();
            for seg in path.split('.') {
                let next = match v {
                    Value::Object(m) => m.get(seg),
                    Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                    _ => None,
                };
                match next {
                    Some(n) => v = n,
                    None => {
                        let names: Vec<&str> = match v {
                            Value::Object(m) => m.keys().map(String::as_str).collect(),
                            _ => vec![],
                        };
                        let full = if walked.is_empty() { seg.to_string() } else { format!("{walked}.{seg}") };
                        let help = did_you_mean(seg, names.iter().copied()).unwrap_or_else(|| format!("params here: {}", list_names(names.iter().copied())));
                        return Err((format!("`${{{expr}}}` names no param: there is no `params.{full}`"), Some(help)));
                    }
                }
                if !walked.is_empty() {
                    walked.push('.');
                }
                walked.push_str(seg);
            }
            used.insert(path.to_string(), v.clone());
            Ok(Some(v.clone()))
        }
        "matrix" => match cx.matrix {
            None => Err((format!("`${{{expr}}}` names a matrix value, but the stage has no `matrix:`"), Some("add `matrix: { NAME: [values] }` to the stage".into()))),
            Some(m) => match m.get(path) {
                Some(v) => Ok(Some(v.clone())),
                None => Err((format!("`${{{expr}}}` names no matrix axis"), Some(did_you_mean(path, m.keys().map(String::as_str)).unwrap_or_else(|| format!("axes: {}", list_names(m.keys().map(String::as_str))))))),
            },
        },
        "in" | "out" => {
            let ports = if scope == "in" { cx.in_ports } else { cx.out_ports };
            if ports.contains(path) {
                Ok(None)
            } else {
                let block = if scope == "in" { "in" } else { "out" };
                let help = did_you_mean(path, ports.iter().map(String::as_str)).unwrap_or_else(|| format!("the stage's `{block}:` ports: {}", list_names(ports.iter().map(String::as_str))));
                Err((format!("`${{{expr}}}` names no {} port of this stage", if scope == "in" { "input" } else { "output" }), Some(help)))
            }
        }
        _ if nearest(scope, SCOPES).is_some() => {
            let fixed = nearest(scope, SCOPES).unwrap_or("params");
            Err((format!("`${{{expr}}}` names nothing"), Some(format!("did you mean `${{{fixed}.{path}}}`?"))))
        }
        _ => Err((format!("`${{{expr}}}` names nothing"), Some("references are `${params.NAME}`, `${matrix.AXIS}`, `${in.PORT}` and `${out.PORT}`; write `$${` for a literal `${`".into()))),
    }
}

/// What a reference may start with.
const SCOPES: [&str; 4] = ["params", "matrix", "in", "out"];

/// A value as it appears inside a larger string.
pub fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// Run time: fills `${in.port}` and `${out.port}` with paths and turns `$${` into `${`.
pub fn fill_ports(
    s: &str,
    inputs: &BTreeMap<String, String>,
    outputs: &BTreeMap<String, String>,
) -> Result<String, String> {
    let pieces = pieces(s).map_err(|(_, m)| m)?;
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(&t.replace("$${", "${")),
            Piece::Ref(expr, _, _) => {
                let value = match expr.split_once('.') {
                    Some(("in", p)) => inputs.get(p),
                    Some(("out", p)) => outputs.get(p),
                    _ => None,
                };
                out.push_str(value.ok_or_else(|| format!("`${{{expr}}}` names no input or output"))?);
            }
        }
    }
    Ok(out)
}

/// Turns `$${` into `${` in every string (for ops that do no run-time templating).
pub fn unescape(v: &mut Value) {
    match v {
        Value::String(s) if s.contains("$${") => *s = s.replace("$${", "${"),
        Value::Array(items) => items.iter_mut().for_each(unescape),
        Value::Object(m) => m.values_mut().for_each(unescape),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(s: &str) -> (Value, Vec<InterpError>, BTreeMap<String, Value>) {
        let params = json!({"x": 2, "fit": {"delta": 0.001}, "name": "bob"});
        let matrix = BTreeMap::from([("size".to_string(), json!(4))]);
        let ins = BTreeSet::from(["data".to_string()]);
        let outs = BTreeSet::from(["out".to_string()]);
        let cx = InterpCx { params: &params, matrix: Some(&matrix), in_ports: &ins, out_ports: &outs };
        let (mut used, mut errs) = (BTreeMap::new(), Vec::new());
        let node = Node { span: Span::default(), kind: NodeKind::Str(s.into()) };
        let v = interpolate(&node, &cx, &mut used, &mut errs);
        (v, errs, used)
    }

    #[test]
    fn whole_reference_keeps_type() {
        assert_eq!(run("${params.fit.delta}").0, json!(0.001));
        assert_eq!(run("${matrix.size}").0, json!(4));
    }

    #[test]
    fn embedded_references_render_and_ports_stay() {
        let (v, errs, used) = run("echo ${params.x} ${params.name} > ${out.out} < ${in.data} $${HOME}");
        assert!(errs.is_empty());
        assert_eq!(v, json!("echo 2 bob > ${out.out} < ${in.data} $${HOME}"));
        assert_eq!(used, BTreeMap::from([("x".into(), json!(2)), ("name".into(), json!("bob"))]));
        let filled = fill_ports(
            v.as_str().unwrap(),
            &BTreeMap::from([("data".into(), "in/data".into())]),
            &BTreeMap::from([("out".into(), "o".into())]),
        )
        .unwrap();
        assert_eq!(filled, "echo 2 bob > o < in/data ${HOME}");
    }

    #[test]
    fn unknown_names_get_hints() {
        let (_, errs, _) = run("${params.fit.dleta}");
        assert_eq!(errs[0].help.as_deref(), Some("did you mean `delta`?"));
        let (_, errs, _) = run("${in.dta}");
        assert_eq!(errs[0].help.as_deref(), Some("did you mean `data`?"));
        let (_, errs, _) = run("${env.HOME}");
        assert!(errs[0].message.contains("names nothing"));
        let (_, errs, _) = run("${params.x");
        assert!(errs[0].message.contains("unclosed"));
    }
}
