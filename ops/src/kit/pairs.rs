//! One pair schema for every preference op (`icai`, `ai_preference`, `reward_train`, ...): a
//! reader that takes the layouts those ops' papers and libraries write, so that the output of
//! one preference op is the input of the next without a `command` in between.
//!
//! Layouts, recognised by their column names:
//! - ICAI (rdnfn/icai): `text_a, text_b, preferred_text` (`"text_a"` or `"text_b"`), prompt in
//!   `input` if there is one;
//! - TRL: `chosen, rejected` (the chosen one is preferred), prompt in `prompt` if there is one;
//! - SALMON / AlpacaFarm: `output_1, output_2, preference` (`1` or `2`), prompt in
//!   `instruction`, its extra context in `input`;
//! - any other names through a `columns:` mapping: `{ a, b, preferred }` or
//!   `{ chosen, rejected }`, with `prompt` and `context` optional.
//!
//! Every layout reads into the same [`Pair`]: two texts `a` and `b`, which one is preferred, and
//! the prompt. A preferred value may name the side as its layout does (`text_a`, `1`), by the
//! side's column name, or as `a`/`b`. Columns are checked at plan time ([`PairSchema::resolve`],
//! errors located at the input or the `columns:` entry); rows that cannot be a pair (a missing
//! side, a preference that names neither side, two identical texts) are skipped and counted
//! ([`PairsRead::summary`] for the stage log), never a panic.

use std::collections::BTreeMap;

use arrow::array::{Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use drover_engine::{CheckError, CheckErrors, Column, OpError};
use serde::Deserialize;

use crate::kit::table;

/// A `columns:` mapping: which column holds each part of a pair. Give `a`, `b` and `preferred`,
/// or `chosen` and `rejected`; `prompt` and `context` are optional.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PairColumns {
    /// The first response.
    #[serde(default)]
    pub a: Option<String>,
    /// The second response.
    #[serde(default)]
    pub b: Option<String>,
    /// Which response is preferred: the name of `a`'s or `b`'s column, `a`/`b`, or `1`/`2`.
    #[serde(default)]
    pub preferred: Option<String>,
    /// The preferred response (instead of `a`, `b`, `preferred`).
    #[serde(default)]
    pub chosen: Option<String>,
    /// The other response.
    #[serde(default)]
    pub rejected: Option<String>,
    /// The prompt both responses answer.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Extra context given with the prompt (SALMON's `input`).
    #[serde(default)]
    pub context: Option<String>,
}

/// Where a table's pairs came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Icai,
    Trl,
    Salmon,
    /// Named by a `columns:` mapping.
    Mapped,
}

/// How the preferred side is known.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Preferred {
    /// A column names it.
    Column(String),
    /// Always `a` (TRL's `chosen`).
    AlwaysA,
}

/// A table's pair columns, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairSchema {
    pub layout: Layout,
    pub a: String,
    pub b: String,
    preferred: Preferred,
    pub prompt: Option<String>,
    pub context: Option<String>,
}

/// Which response is preferred.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// One preference: `a` and `b` answer `prompt`; `preferred` says which is better.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// The row in the input table (0-based).
    pub row: usize,
    pub prompt: Option<String>,
    pub context: Option<String>,
    pub a: String,
    pub b: String,
    pub preferred: Side,
}

impl Pair {
    /// The preferred text and the other one.
    pub fn chosen_rejected(&self) -> (&str, &str) {
        match self.preferred {
            Side::A => (&self.a, &self.b),
            Side::B => (&self.b, &self.a),
        }
    }
}

/// Why a row is not a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// `a` or `b` is null or empty.
    MissingSide,
    /// The preferred value is null or names neither side.
    NeitherSide,
    /// `a` and `b` are the same text: nothing to prefer.
    IdenticalTexts,
}

impl Skip {
    fn words(self) -> &'static str {
        match self {
            Skip::MissingSide => "a missing response",
            Skip::NeitherSide => "a preference that names neither response",
            Skip::IdenticalTexts => "two identical responses",
        }
    }
}

/// The pairs of a table, and the rows skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PairsRead {
    pub pairs: Vec<Pair>,
    /// (row, why), in row order.
    pub skipped: Vec<(usize, Skip)>,
}

impl PairsRead {
    /// One line for the stage log, when rows were skipped: how many, why, and which rows (the
    /// first five of each reason, 0-based).
    pub fn summary(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let mut by_reason: BTreeMap<Skip, Vec<usize>> = BTreeMap::new();
        for (row, why) in &self.skipped {
            by_reason.entry(*why).or_default().push(*row);
        }
        let parts: Vec<String> = by_reason
            .iter()
            .map(|(why, rows)| {
                let shown: Vec<String> = rows.iter().take(5).map(|r| r.to_string()).collect();
                let more = if rows.len() > 5 { ", ..." } else { "" };
                format!("{} with {} (rows {}{more})", rows.len(), why.words(), shown.join(", "))
            })
            .collect();
        let n = self.skipped.len();
        Some(format!("{n} row{} skipped: {}", if n == 1 { "" } else { "s" }, parts.join("; ")))
    }
}

const TEXT: &[&str] = &["Utf8", "LargeUtf8", "Utf8View"];
const INTEGER: &[&str] = &["Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64"];

impl PairSchema {
    /// Checks a table's columns (`None`: not known until run time, then `Ok(None)`) against
    /// `mapping`, or recognises its layout. `port` is the input, `at` the params path of the
    /// `columns:` mapping (errors about a mapped column point there).
    pub fn resolve(
        port: &str,
        at: &[&str],
        columns: Option<&[Column]>,
        mapping: Option<&PairColumns>,
    ) -> Result<Option<PairSchema>, CheckErrors> {
        let schema = match mapping {
            Some(m) => mapped(at, m)?,
            None => match columns {
                Some(columns) => recognise(port, columns)?,
                None => return Ok(None),
            },
        };
        let Some(columns) = columns else { return Ok(Some(schema)) };
        schema.check_types(port, at, columns)?;
        Ok(Some(schema))
    }

    /// Every column and the types it may have, with the `columns:` field that names it.
    fn uses(&self) -> Vec<(&str, &'static str, bool)> {
        // The `columns:` fields that name the two sides.
        let (fa, fb) = match self.preferred {
            Preferred::AlwaysA => ("chosen", "rejected"),
            Preferred::Column(_) => ("a", "b"),
        };
        let mut out = vec![(self.a.as_str(), fa, false), (self.b.as_str(), fb, false)];
        if let Preferred::Column(c) = &self.preferred {
            out.push((c.as_str(), "preferred", true));
        }
        out.extend(self.prompt.as_deref().map(|c| (c, "prompt", false)));
        out.extend(self.context.as_deref().map(|c| (c, "context", false)));
        out
    }

    fn check_types(&self, port: &str, at: &[&str], columns: &[Column]) -> Result<(), CheckErrors> {
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let mut errors = CheckErrors::new();
        for (name, field, may_be_integer) in self.uses() {
            let path: Vec<&str> = at.iter().copied().chain([field]).collect();
            let Some(column) = columns.iter().find(|c| c.name == name) else {
                // Only a mapping can name a column that is not there: a layout is recognised
                // from the columns present.
                errors.push(table::unknown_column(port, &path, name, &names));
                continue;
            };
            let ok =
                TEXT.contains(&column.dtype.as_str()) || (may_be_integer && INTEGER.contains(&column.dtype.as_str()));
            if !ok {
                let want = if may_be_integer { "text or an integer" } else { "text" };
                let message = format!("column `{name}` of `{port}` is {}, not {want}", column.dtype);
                let err = match self.layout {
                    Layout::Mapped => CheckError::param(&path, message),
                    _ => CheckError::input(port, message),
                };
                errors.push(err.about_column(port, name).help(
                    "a pair's responses and prompt are text (TRL's conversational lists are not read: \
                     flatten them to text first)",
                ));
            }
        }
        errors.or(())
    }

    /// The pairs of `batch`, with the rows that are not pairs.
    pub fn read(&self, batch: &RecordBatch) -> Result<PairsRead, OpError> {
        let text = |name: &str| -> Result<Vec<Option<String>>, OpError> { strings(batch, name) };
        let (a, b) = (text(&self.a)?, text(&self.b)?);
        let preferred = match &self.preferred {
            Preferred::Column(c) => Some(text(c)?),
            Preferred::AlwaysA => None,
        };
        let prompt = self.prompt.as_deref().map(text).transpose()?;
        let context = self.context.as_deref().map(text).transpose()?;
        let mut out = PairsRead::default();
        for row in 0..batch.num_rows() {
            let (Some(ta), Some(tb)) = (nonempty(&a[row]), nonempty(&b[row])) else {
                out.skipped.push((row, Skip::MissingSide));
                continue;
            };
            let side = match &preferred {
                None => Some(Side::A),
                Some(values) => values[row].as_deref().and_then(|v| side_of(v, &self.a, &self.b)),
            };
            let Some(side) = side else {
                out.skipped.push((row, Skip::NeitherSide));
                continue;
            };
            if ta == tb {
                out.skipped.push((row, Skip::IdenticalTexts));
                continue;
            }
            let cell = |c: &Option<Vec<Option<String>>>| c.as_ref().and_then(|v| nonempty(&v[row])).map(str::to_string);
            out.pairs.push(Pair {
                row,
                prompt: cell(&prompt),
                context: cell(&context),
                a: ta.to_string(),
                b: tb.to_string(),
                preferred: side,
            });
        }
        Ok(out)
    }
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// The side a preferred value names: the side's column name (ICAI's `text_a`), `a`/`b`, or
/// `1`/`2` (SALMON), ignoring case and surrounding space.
fn side_of(value: &str, a: &str, b: &str) -> Option<Side> {
    let v = value.trim();
    if v == a || v.eq_ignore_ascii_case("a") || v == "1" {
        Some(Side::A)
    } else if v == b || v.eq_ignore_ascii_case("b") || v == "2" {
        Some(Side::B)
    } else {
        None
    }
}

/// A column's values as strings (integers as their digits).
pub(crate) fn strings(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, OpError> {
    let array =
        batch.column_by_name(name).ok_or_else(|| OpError::failed(format!("the input has no column `{name}`")))?;
    let utf8 = cast(array, &DataType::Utf8).map_err(|e| OpError::failed(format!("column `{name}`: {e}")))?;
    let utf8 = utf8.as_any().downcast_ref::<arrow::array::StringArray>().expect("cast to Utf8 gives a StringArray");
    Ok((0..utf8.len()).map(|i| utf8.is_valid(i).then(|| utf8.value(i).to_string())).collect())
}

fn mapped(at: &[&str], m: &PairColumns) -> Result<PairSchema, CheckErrors> {
    let (a, b, preferred) = match (&m.a, &m.b, &m.preferred, &m.chosen, &m.rejected) {
        (Some(a), Some(b), Some(p), None, None) => (a.clone(), b.clone(), Preferred::Column(p.clone())),
        (None, None, None, Some(c), Some(r)) => (c.clone(), r.clone(), Preferred::AlwaysA),
        _ => {
            let err = CheckError::param(at, "`columns:` must name `a`, `b` and `preferred`, or `chosen` and `rejected`")
                .help("e.g. `columns: { a: response_1, b: response_2, preferred: winner }` or `columns: { chosen: good, rejected: bad }`");
            return Err(err.into());
        }
    };
    Ok(PairSchema { layout: Layout::Mapped, a, b, preferred, prompt: m.prompt.clone(), context: m.context.clone() })
}

/// The layouts, by the columns that make them; the first two are the responses, the third
/// names the preferred one (none: the first is preferred).
const LAYOUTS: &[(Layout, &str, [&str; 2], Option<&str>)] = &[
    (Layout::Icai, "ICAI's `text_a, text_b, preferred_text`", ["text_a", "text_b"], Some("preferred_text")),
    (Layout::Trl, "TRL's `chosen, rejected`", ["chosen", "rejected"], None),
    (Layout::Salmon, "SALMON's `output_1, output_2, preference`", ["output_1", "output_2"], Some("preference")),
];

fn recognise(port: &str, columns: &[Column]) -> Result<PairSchema, CheckErrors> {
    let has = |name: &str| columns.iter().any(|c| c.name == name);
    let help = "map the columns with `columns: { a: COL, b: COL, preferred: COL }` or `columns: { chosen: COL, rejected: COL }`";
    let complete: Vec<_> =
        LAYOUTS.iter().filter(|(_, _, sides, pref)| sides.iter().all(|c| has(c)) && pref.is_none_or(has)).collect();
    match complete.as_slice() {
        [(layout, _, [a, b], pref)] => {
            let preferred = pref.map_or(Preferred::AlwaysA, |p| Preferred::Column(p.to_string()));
            let (prompt, context) = match layout {
                Layout::Icai => ("input", None),
                Layout::Trl => ("prompt", None),
                _ => ("instruction", Some("input")),
            };
            Ok(PairSchema {
                layout: *layout,
                a: a.to_string(),
                b: b.to_string(),
                preferred,
                prompt: has(prompt).then(|| prompt.to_string()),
                context: context.filter(|c| has(c)).map(str::to_string),
            })
        }
        [] => {
            // A layout with some of its columns: name what is missing.
            for (_, words, sides, pref) in LAYOUTS {
                let wanted: Vec<&str> = sides.iter().copied().chain(*pref).collect();
                let missing: Vec<&str> = wanted.iter().copied().filter(|c| !has(c)).collect();
                if missing.len() < wanted.len() {
                    let missing: Vec<String> = missing.iter().map(|c| format!("`{c}`")).collect();
                    return Err(CheckError::input(
                        port,
                        format!("`{port}` looks like {words} but has no {}", missing.join(" or ")),
                    )
                    .about_columns(port)
                    .help(help)
                    .into());
                }
            }
            let names: Vec<&str> = LAYOUTS.iter().map(|(_, w, _, _)| *w).collect();
            Err(CheckError::input(port, format!("`{port}` has no preference pairs: expected {}", names.join(", or ")))
                .about_columns(port)
                .help(help)
                .into())
        }
        several => {
            let names: Vec<&str> = several.iter().map(|(_, w, _, _)| *w).collect();
            Err(CheckError::input(port, format!("`{port}` has the columns of {}: which pairs?", names.join(" and ")))
                .about_columns(port)
                .help(help)
                .into())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use drover_engine::CheckLocation;

    use super::*;
    use crate::kit::testing::batch;

    fn cols(spec: &[(&str, &str)]) -> Vec<Column> {
        spec.iter().map(|(n, t)| Column::new(*n, *t)).collect()
    }

    fn text(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(values.to_vec()))
    }

    fn resolve(columns: &[Column], mapping: Option<&PairColumns>) -> Result<Option<PairSchema>, CheckErrors> {
        PairSchema::resolve("pairs", &["columns"], Some(columns), mapping)
    }

    fn only_error(result: Result<Option<PairSchema>, CheckErrors>) -> CheckError {
        let errors = result.expect_err("expected an error").0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.into_iter().next().unwrap()
    }

    #[test]
    fn icai_trl_and_salmon_layouts_are_recognised_with_their_prompts() {
        let icai = resolve(
            &cols(&[("text_a", "Utf8"), ("text_b", "Utf8"), ("preferred_text", "Utf8"), ("input", "Utf8")]),
            None,
        );
        let icai = icai.unwrap().unwrap();
        assert_eq!((icai.layout, icai.a.as_str(), icai.b.as_str()), (Layout::Icai, "text_a", "text_b"));
        assert_eq!((icai.prompt.as_deref(), icai.context.as_deref()), (Some("input"), None));

        let trl = resolve(&cols(&[("chosen", "Utf8"), ("rejected", "LargeUtf8")]), None).unwrap().unwrap();
        assert_eq!((trl.layout, trl.prompt.as_deref()), (Layout::Trl, None));

        let salmon = cols(&[
            ("instruction", "Utf8"),
            ("input", "Utf8"),
            ("output_1", "Utf8"),
            ("output_2", "Utf8"),
            ("preference", "Int64"),
        ]);
        let salmon = resolve(&salmon, None).unwrap().unwrap();
        assert_eq!(salmon.layout, Layout::Salmon);
        assert_eq!((salmon.prompt.as_deref(), salmon.context.as_deref()), (Some("instruction"), Some("input")));
    }

    #[test]
    fn every_layout_reads_into_the_same_pairs() {
        let want = |row, preferred| Pair {
            row,
            prompt: Some("Q".into()),
            context: None,
            a: "x".into(),
            b: "y".into(),
            preferred,
        };
        let icai = batch(vec![
            ("input", text(&[Some("Q"), Some("Q")])),
            ("text_a", text(&[Some("x"), Some("x")])),
            ("text_b", text(&[Some("y"), Some("y")])),
            ("preferred_text", text(&[Some("text_a"), Some("text_b")])),
        ]);
        let schema = resolve(&table::table_schema(&icai.schema()).columns.unwrap(), None).unwrap().unwrap();
        assert_eq!(schema.read(&icai).unwrap().pairs, [want(0, Side::A), want(1, Side::B)]);

        let salmon = batch(vec![
            ("instruction", text(&[Some("Q"), Some("Q")])),
            ("input", text(&[Some(""), Some("")])),
            ("output_1", text(&[Some("x"), Some("x")])),
            ("output_2", text(&[Some("y"), Some("y")])),
            ("preference", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
        ]);
        let schema = resolve(&table::table_schema(&salmon.schema()).columns.unwrap(), None).unwrap().unwrap();
        // An empty `input` is no context.
        assert_eq!(schema.read(&salmon).unwrap().pairs, [want(0, Side::A), want(1, Side::B)]);

        let trl = batch(vec![
            ("prompt", text(&[Some("Q")])),
            ("chosen", text(&[Some("x")])),
            ("rejected", text(&[Some("y")])),
        ]);
        let schema = resolve(&table::table_schema(&trl.schema()).columns.unwrap(), None).unwrap().unwrap();
        let read = schema.read(&trl).unwrap();
        assert_eq!(read.pairs, [want(0, Side::A)]);
        assert_eq!(read.pairs[0].chosen_rejected(), ("x", "y"));
    }

    #[test]
    fn a_mapping_reads_other_names_and_accepts_a_b_and_column_names() {
        let t = batch(vec![
            ("q", text(&[Some("Q"), Some("Q"), Some("Q")])),
            ("r1", text(&[Some("x"), Some("x"), Some("x")])),
            ("r2", text(&[Some("y"), Some("y"), Some("y")])),
            ("winner", text(&[Some("B"), Some("r1"), Some(" a ")])),
        ]);
        let mapping = PairColumns {
            a: Some("r1".into()),
            b: Some("r2".into()),
            preferred: Some("winner".into()),
            prompt: Some("q".into()),
            ..Default::default()
        };
        let schema = resolve(&table::table_schema(&t.schema()).columns.unwrap(), Some(&mapping)).unwrap().unwrap();
        assert_eq!(schema.layout, Layout::Mapped);
        let sides: Vec<Side> = schema.read(&t).unwrap().pairs.iter().map(|p| p.preferred).collect();
        assert_eq!(sides, [Side::B, Side::A, Side::A]);
    }

    #[test]
    fn bad_rows_are_skipped_and_counted_by_reason() {
        let t = batch(vec![
            ("text_a", text(&[Some("x"), None, Some("x"), Some("same"), Some("x"), Some("")])),
            ("text_b", text(&[Some("y"), Some("y"), Some("y"), Some("same"), Some("y"), Some("y")])),
            (
                "preferred_text",
                text(&[Some("text_b"), Some("text_a"), Some("text_c"), Some("text_a"), None, Some("text_a")]),
            ),
        ]);
        let schema = resolve(&table::table_schema(&t.schema()).columns.unwrap(), None).unwrap().unwrap();
        let read = schema.read(&t).unwrap();
        assert_eq!(read.pairs.iter().map(|p| p.row).collect::<Vec<_>>(), [0]);
        assert_eq!(
            read.skipped,
            [
                (1, Skip::MissingSide),
                (2, Skip::NeitherSide),
                (3, Skip::IdenticalTexts),
                (4, Skip::NeitherSide),
                (5, Skip::MissingSide)
            ]
        );
        assert_eq!(
            read.summary().unwrap(),
            "5 rows skipped: 2 with a missing response (rows 1, 5); 2 with a preference that names neither \
             response (rows 2, 4); 1 with two identical responses (rows 3)"
        );
        assert_eq!(PairsRead::default().summary(), None);
    }

    #[test]
    fn a_partial_layout_names_its_missing_column() {
        let err = only_error(resolve(&cols(&[("text_a", "Utf8"), ("text_b", "Utf8")]), None));
        assert_eq!(
            err.message,
            "`pairs` looks like ICAI's `text_a, text_b, preferred_text` but has no `preferred_text`"
        );
        assert!(matches!(&err.at, CheckLocation::Input(p) if p == "pairs"));
        assert!(err.help.unwrap().starts_with("map the columns with `columns:"));
    }

    #[test]
    fn a_table_without_pairs_lists_the_layouts() {
        let err = only_error(resolve(&cols(&[("text", "Utf8")]), None));
        assert_eq!(
            err.message,
            "`pairs` has no preference pairs: expected ICAI's `text_a, text_b, preferred_text`, or TRL's \
             `chosen, rejected`, or SALMON's `output_1, output_2, preference`"
        );
    }

    #[test]
    fn two_complete_layouts_are_ambiguous() {
        let err = only_error(resolve(
            &cols(&[
                ("chosen", "Utf8"),
                ("rejected", "Utf8"),
                ("text_a", "Utf8"),
                ("text_b", "Utf8"),
                ("preferred_text", "Utf8"),
            ]),
            None,
        ));
        assert_eq!(
            err.message,
            "`pairs` has the columns of ICAI's `text_a, text_b, preferred_text` and TRL's `chosen, rejected`: which pairs?"
        );
    }

    #[test]
    fn non_text_columns_are_errors_at_the_input_or_the_mapping() {
        let err = only_error(resolve(&cols(&[("chosen", "Utf8"), ("rejected", "List(Utf8)")]), None));
        assert_eq!(err.message, "column `rejected` of `pairs` is List(Utf8), not text");
        assert!(matches!(&err.at, CheckLocation::Input(p) if p == "pairs"));

        let mapping = PairColumns {
            a: Some("r1".into()),
            b: Some("r2".into()),
            preferred: Some("w".into()),
            ..Default::default()
        };
        let err = only_error(resolve(&cols(&[("r1", "Utf8"), ("r2", "Float64"), ("w", "Int32")]), Some(&mapping)));
        assert_eq!(err.message, "column `r2` of `pairs` is Float64, not text");
        assert!(matches!(&err.at, CheckLocation::Param(p) if p == &["columns", "b"]));
    }

    #[test]
    fn a_mapped_column_that_is_not_there_suggests_the_nearest() {
        let mapping =
            PairColumns { chosen: Some("chosn".into()), rejected: Some("rejected".into()), ..Default::default() };
        let err = only_error(resolve(&cols(&[("chosen", "Utf8"), ("rejected", "Utf8")]), Some(&mapping)));
        assert_eq!(err.message, "unknown column `chosn`");
        assert_eq!(err.help.as_deref(), Some("did you mean `chosen`?"));
        assert!(matches!(&err.at, CheckLocation::Param(p) if p == &["columns", "chosen"]));
    }

    #[test]
    fn an_incomplete_mapping_says_what_it_needs() {
        let mapping = PairColumns { a: Some("x".into()), chosen: Some("y".into()), ..Default::default() };
        let err = only_error(resolve(&cols(&[("x", "Utf8")]), Some(&mapping)));
        assert_eq!(err.message, "`columns:` must name `a`, `b` and `preferred`, or `chosen` and `rejected`");
        assert!(matches!(&err.at, CheckLocation::Param(p) if p == &["columns"]));
    }

    #[test]
    fn unknown_columns_wait_for_run_time_unless_mapped() {
        assert_eq!(PairSchema::resolve("pairs", &["columns"], None, None).unwrap(), None);
        let mapping = PairColumns { chosen: Some("c".into()), rejected: Some("r".into()), ..Default::default() };
        let schema = PairSchema::resolve("pairs", &["columns"], None, Some(&mapping)).unwrap().unwrap();
        assert_eq!((schema.a.as_str(), schema.b.as_str()), ("c", "r"));
    }
}
