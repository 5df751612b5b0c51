//! The `sample` op: keeps a random subset of a table's rows, in their original order.
//!
//! Input `table`; output `out`, with the same columns. Rows are drawn without replacement:
//! `n` rows (every row when the table has fewer), or `fraction` of them (rounded to the
//! nearest whole row). Deterministic: the rows depend only on the table and the seed
//! (`seed`, else the stage's seed), through a ChaCha8 stream and selection sampling written
//! here, so that no change in `rand`'s algorithms can change them.

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use drover_engine::{
    CheckCx, CheckError, CheckErrors, Checked, OpError, OpKit, PortType, Ports, RunCx, TableSchema, Work,
};
use serde::Deserialize;

use crate::kit::draw::Draw;
use crate::kit::table;

/// The `with:` block of a `sample` stage. Give exactly one of `n` and `fraction`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleParams {
    /// How many rows to keep; a table with fewer keeps all of them.
    #[serde(default)]
    pub n: Option<u64>,
    /// The share of rows to keep, in (0, 1].
    #[serde(default)]
    pub fraction: Option<f64>,
    /// The random seed. Default: the stage's seed.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// How many rows to keep.
#[derive(Clone, Copy)]
enum Size {
    Rows(u64),
    Fraction(f64),
}

impl SampleParams {
    fn size(&self) -> Result<Size, CheckError> {
        match (self.n, self.fraction) {
            (Some(_), Some(_)) => Err(CheckError::param(&["fraction"], "give either `n` or `fraction`, not both")),
            (None, None) => Err(CheckError::stage("`sample` needs `n` or `fraction`")
                .help("e.g. `with: {n: 100}` or `with: {fraction: 0.1}`")),
            (Some(n), None) => Ok(Size::Rows(n)),
            (None, Some(f)) if f > 0.0 && f <= 1.0 => Ok(Size::Fraction(f)),
            (None, Some(f)) => Err(CheckError::param(&["fraction"], format!("fraction must be in (0, 1], got {f}"))
                .help("use `n` for a number of rows")),
        }
    }
}

impl Size {
    fn of(self, rows: u64) -> u64 {
        match self {
            Size::Rows(n) => n.min(rows),
            Size::Fraction(f) => ((f * rows as f64).round() as u64).min(rows),
        }
    }
}

/// Keeps a random subset of rows.
pub struct Sample;

impl OpKit for Sample {
    type Params = SampleParams;
    const NAME: &str = "sample";
    const VERSION: u32 = 1;
    const DOC: &str = "Keeps a seeded random subset of a table's rows, in their original order.";

    fn inputs() -> Ports {
        Ports::one("table", PortType::any_table(), "The table to sample.")
    }

    fn outputs() -> Ports {
        Ports::one("out", PortType::any_table(), "The kept rows, with the input's columns.")
    }

    fn check(&self, params: &SampleParams, cx: &CheckCx<'_>) -> Result<Checked, CheckErrors> {
        let (size, columns) = (params.size(), table::input_columns(cx, "table"));
        let columns = match (size, columns) {
            (Ok(_), Ok(columns)) => columns,
            (size, columns) => return Err([size.err(), columns.err()].into_iter().flatten().collect()),
        };
        let schema = columns.map_or_else(TableSchema::default, |c| TableSchema::with_columns(c.to_vec()));
        Ok(Checked::default().output("out", PortType::Table(schema)))
    }

    fn run(&self, params: SampleParams, cx: RunCx) -> Work {
        Work::blocking(move || {
            let size = params.size().map_err(|e| CheckErrors::from(e).into_op_error())?;
            let (schema, batches) = table::read_input(&cx.input("table")?.path)?;
            let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
            let mut picker = Picker::new(params.seed.unwrap_or(cx.seed), rows, size.of(rows));
            let mut kept = Vec::with_capacity(batches.len());
            for batch in &batches {
                let mask: BooleanArray = (0..batch.num_rows()).map(|_| Some(picker.next())).collect();
                kept.push(filter(batch, &mask)?);
            }
            table::write_parquet(&cx.output("out")?.path, &schema, &kept)
        })
    }
}

fn filter(batch: &RecordBatch, mask: &BooleanArray) -> Result<RecordBatch, OpError> {
    filter_record_batch(batch, mask).map_err(|e| OpError::failed(format!("cannot sample: {e}")))
}

/// Selection sampling (Knuth's algorithm S): walks the rows once and keeps each with
/// probability (still wanted) / (still left), which keeps exactly `wanted` rows, every subset
/// equally likely, already in order.
struct Picker {
    draw: Draw,
    left: u64,
    wanted: u64,
}

impl Picker {
    fn new(seed: u64, rows: u64, wanted: u64) -> Picker {
        // Stream 0 is the plain `seed_from_u64(seed)` stream this op has always drawn from.
        Picker { draw: Draw::new(seed, 0), left: rows, wanted }
    }

    /// Whether to keep the next row.
    fn next(&mut self) -> bool {
        let keep = self.wanted > 0 && self.draw.below_u64(self.left) < self.wanted;
        self.left -= 1;
        if keep {
            self.wanted -= 1;
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use drover_engine::{CheckLocation, Column};
    use serde_json::json;

    use super::*;
    use crate::kit::testing::{OpTest, batch, column, first_error};

    fn numbers(n: i64) -> RecordBatch {
        let labels: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
        batch(vec![
            ("i", Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef),
            ("label", Arc::new(StringArray::from(labels))),
        ])
    }

    fn ids(out: &RecordBatch) -> Vec<i64> {
        column(out, "i").iter().map(|s| s.parse().unwrap()).collect()
    }

    fn sample(params: serde_json::Value, seed: u64) -> Vec<i64> {
        ids(&OpTest::new(params).seed(seed).input("table", numbers(100)).run(&Sample).unwrap())
    }

    /// Kept rows are distinct rows of the input, in input order, and keep their other columns.
    fn assert_in_order_subset(ids: &[i64]) {
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "not strictly increasing: {ids:?}");
        assert!(ids.iter().all(|i| (0..100).contains(i)));
    }

    #[test]
    fn n_rows_are_kept_in_original_order() {
        let t = OpTest::new(json!({"n": 10})).seed(7).input("table", numbers(100));
        let out = t.run(&Sample).unwrap();
        let kept = ids(&out);
        assert_eq!(kept.len(), 10);
        assert_in_order_subset(&kept);
        let labels: Vec<String> = kept.iter().map(|i| format!("r{i}")).collect();
        assert_eq!(column(&out, "label"), labels);
    }

    #[test]
    fn the_same_seed_gives_the_same_rows() {
        assert_eq!(sample(json!({"n": 10}), 1), sample(json!({"n": 10}), 1));
        assert_eq!(sample(json!({"n": 10, "seed": 5}), 1), sample(json!({"n": 10, "seed": 5}), 2));
    }

    #[test]
    fn a_different_seed_gives_different_rows() {
        assert_ne!(sample(json!({"n": 10}), 1), sample(json!({"n": 10}), 2));
        assert_ne!(sample(json!({"n": 10, "seed": 1}), 0), sample(json!({"n": 10, "seed": 2}), 0));
    }

    #[test]
    fn the_param_seed_overrides_the_stage_seed() {
        assert_eq!(sample(json!({"n": 10, "seed": 3}), 99), sample(json!({"n": 10}), 3));
    }

    #[test]
    fn a_fraction_keeps_that_share_rounded() {
        let kept = sample(json!({"fraction": 0.25}), 4);
        assert_eq!(kept.len(), 25);
        assert_in_order_subset(&kept);
        // 100 * 0.333 = 33.3 rounds to 33.
        assert_eq!(sample(json!({"fraction": 0.333}), 4).len(), 33);
        assert_eq!(sample(json!({"fraction": 1.0}), 4), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn n_beyond_the_table_keeps_every_row() {
        let t = OpTest::new(json!({"n": 1000})).input("table", numbers(5));
        assert_eq!(ids(&t.run(&Sample).unwrap()), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn n_zero_and_an_empty_table_give_no_rows() {
        assert_eq!(sample(json!({"n": 0}), 1), Vec::<i64>::new());
        let t = OpTest::new(json!({"n": 3})).input("table", numbers(0));
        let out = t.run(&Sample).unwrap();
        assert_eq!(out.num_rows(), 0);
        assert_eq!(out.schema(), numbers(0).schema());
    }

    #[test]
    fn selection_is_uniform_enough() {
        // 2000 draws of 1 row out of 4: each row should come up about 500 times.
        let mut counts = [0u32; 4];
        for seed in 0..2000 {
            let mut picker = Picker::new(seed, 4, 1);
            let picked: Vec<bool> = (0..4).map(|_| picker.next()).collect();
            assert_eq!(picked.iter().filter(|k| **k).count(), 1);
            counts[picked.iter().position(|k| *k).unwrap()] += 1;
        }
        assert!(counts.iter().all(|c| (400..600).contains(c)), "{counts:?}");
    }

    #[test]
    fn check_passes_the_schema_through() {
        let t = OpTest::new(json!({"n": 2})).input("table", numbers(3));
        assert_eq!(
            t.check(&Sample).unwrap().outputs["out"],
            PortType::Table(TableSchema::with_columns(vec![Column::new("i", "Int64"), Column::new("label", "Utf8"),]))
        );
        let t = OpTest::new(json!({"n": 2})).input("table", numbers(3)).unknown_schemas();
        assert_eq!(t.check(&Sample).unwrap().outputs["out"], PortType::any_table());
    }

    #[test]
    fn a_fraction_outside_zero_to_one_is_an_error() {
        for bad in [0.0, 1.5, -0.1] {
            let t = OpTest::new(json!({"fraction": bad})).input("table", numbers(3));
            let err = first_error(t.check(&Sample));
            assert_eq!(err.message, format!("fraction must be in (0, 1], got {bad}"));
            assert!(matches!(&err.at, CheckLocation::Param(p) if p == &["fraction"]));
        }
    }

    #[test]
    fn n_and_fraction_together_or_neither_are_errors() {
        let t = OpTest::new(json!({"n": 1, "fraction": 0.5})).input("table", numbers(3));
        assert_eq!(first_error(t.check(&Sample)).message, "give either `n` or `fraction`, not both");
        let t = OpTest::new(json!({})).input("table", numbers(3));
        assert_eq!(first_error(t.check(&Sample)).message, "`sample` needs `n` or `fraction`");
        let t = OpTest::new(json!({"n": -1})).input("table", numbers(3));
        assert!(t.check(&Sample).is_err());
    }
}
