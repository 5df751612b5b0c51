//! SALMON's principle collections: a JSON array of `{dimension, definition,
//! negative_definition}` (SALMON's `prompts/principles/principle_collection_*.json`; the PPO
//! and harmless ones add a sampling `weight`, read and not used here), from a file or inline.
//! Problems are reported with the file's line, so that a user finds the principle at fault.

use drover_engine::diag::line_col;
use serde::Deserialize;
use serde_json::Value;

/// One principle, as SALMON writes it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrincipleSpec {
    /// The principle's name, e.g. `Concise`: `{Dimension}` in the judge prompt.
    #[serde(default)]
    pub dimension: Option<String>,
    /// What the principle asks for: `{Definition}` in the judge prompt.
    #[serde(default)]
    pub definition: Option<String>,
    /// Its negation, which a reward model trained on the labels is shown when the label was
    /// negated (SALMON's `negative_definition`).
    #[serde(default)]
    pub negative_definition: Option<String>,
    /// SALMON's PPO-time sampling weight; read and not used by the labelling.
    #[serde(default)]
    pub weight: Option<f64>,
}

/// A principle with every part it needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Principle {
    pub dimension: String,
    pub definition: String,
    pub negative_definition: Option<String>,
}

/// A problem with one principle: which one (0-based), which field, and what is wrong.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub index: Option<usize>,
    pub field: Option<&'static str>,
    pub message: String,
    pub help: String,
}

/// Checks a collection: not empty, every principle with a `dimension` and a `definition` (and
/// a `negative_definition` when labels may be negated), no dimension twice.
pub fn validate(specs: &[PrincipleSpec], need_negative: bool) -> Result<Vec<Principle>, Vec<Problem>> {
    let salmon = "SALMON's collections are in pipelines/data/salmon (principle_collection_rm.json)";
    if specs.is_empty() {
        return Err(vec![Problem {
            index: None,
            field: None,
            message: "the principle collection is empty".into(),
            help: format!("give at least one {{dimension, definition, negative_definition}}; {salmon}"),
        }]);
    }
    let mut problems = Vec::new();
    let mut principles = Vec::new();
    let blank = |s: &Option<String>| s.as_deref().is_none_or(|s| s.trim().is_empty());
    for (i, spec) in specs.iter().enumerate() {
        let name = match &spec.dimension {
            Some(d) if !d.trim().is_empty() => format!("principle {} (`{d}`)", i + 1),
            _ => format!("principle {}", i + 1),
        };
        let mut missing = |field: &'static str, help: String| {
            problems.push(Problem {
                index: Some(i),
                field: Some(field),
                message: format!("{name} has no `{field}`"),
                help,
            })
        };
        if blank(&spec.dimension) {
            missing("dimension", "name the principle, e.g. `dimension: Concise`".into());
        }
        if blank(&spec.definition) {
            missing("definition", format!("the judge is shown `{{Dimension}}: {{Definition}}`; {salmon}"));
        }
        if need_negative && blank(&spec.negative_definition) {
            missing(
                "negative_definition",
                "labels are negated with probability `negation_prob`: give its negation, or set \
                 `negation_prob: 0`"
                    .into(),
            );
        }
        if let (Some(d), Some(def)) = (&spec.dimension, &spec.definition) {
            if principles.iter().any(|p: &Principle| &p.dimension == d) {
                problems.push(Problem {
                    index: Some(i),
                    field: Some("dimension"),
                    message: format!("{name} repeats dimension `{d}`"),
                    help: "give each dimension once".into(),
                });
            }
            principles.push(Principle {
                dimension: d.clone(),
                definition: def.clone(),
                negative_definition: spec.negative_definition.clone(),
            });
        }
    }
    if problems.is_empty() { Ok(principles) } else { Err(problems) }
}

/// Reads a collection file's text: the specs and the 1-based line where each begins. `Err`
/// is a message that starts with `LINE:` (where the JSON is broken, or 1).
pub fn parse_file(text: &str) -> Result<(Vec<PrincipleSpec>, Vec<usize>), String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("{}: not JSON: {e}", e.line()))?;
    let Value::Array(items) = value else {
        return Err("1: expected a JSON array of principles, `[{\"dimension\": ..., \"definition\": ...}, ...]`".into());
    };
    let lines = element_lines(text);
    let mut specs = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let line = lines.get(i).copied().unwrap_or(1);
        let spec: PrincipleSpec =
            serde_json::from_value(item).map_err(|e| format!("{line}: principle {}: {e}", i + 1))?;
        specs.push(spec);
    }
    Ok((specs, lines))
}

/// The 1-based line where each element of a JSON text's top-level array begins.
fn element_lines(text: &str) -> Vec<usize> {
    let (mut depth, mut in_string, mut escaped, mut expect) = (0usize, false, false, false);
    let mut starts = Vec::new();
    for (at, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if depth == 1 && expect && !c.is_whitespace() && c != ']' {
            starts.push(line_col(text, at).0);
            expect = false;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                expect = depth == 1;
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => expect = true,
            _ => {}
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_the_elements_and_the_problems_found() {
        let text = "[\n  {\"dimension\": \"A, [b]\", \"definition\": \"x\"},\n\n  {\"dimension\": \"C\"}\n]\n";
        let (specs, lines) = parse_file(text).unwrap();
        assert_eq!(lines, [2, 4]);
        let problems = validate(&specs, false).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].message, "principle 2 (`C`) has no `definition`");
        assert_eq!(problems[0].index, Some(1));
        let problems = validate(&specs[..1], true).unwrap_err();
        assert_eq!(problems[0].message, "principle 1 (`A, [b]`) has no `negative_definition`");
        assert_eq!(validate(&[], false).unwrap_err()[0].message, "the principle collection is empty");
        assert_eq!(parse_file("[\n  {\"dimension\": 1}\n]").unwrap_err().split(':').next(), Some("2"));
        assert!(parse_file("{\"a\": 1}").unwrap_err().starts_with("1: expected a JSON array"));
        assert!(parse_file("[\n{,").unwrap_err().starts_with("2: not JSON"));
    }

    #[test]
    fn salmons_collections_read_as_they_are() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../pipelines/data/salmon/");
        let text = std::fs::read_to_string(format!("{dir}principle_collection_rm.json")).unwrap();
        let (specs, _) = parse_file(&text).unwrap();
        let principles = validate(&specs, true).unwrap();
        assert_eq!(principles.len(), 11);
        assert_eq!(principles[1].dimension, "Concise");
        let text = std::fs::read_to_string(format!("{dir}principle_collection_ppo.json")).unwrap();
        assert_eq!(validate(&parse_file(&text).unwrap().0, false).unwrap().len(), 14);
    }
}
