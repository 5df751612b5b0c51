//! The planner in process, with ops written for the test: each case builds a plan from YAML and
//! compares its typed printout (what `drover plan --explain` shows) or its errors with a
//! snapshot (`expect![[...]]`; `UPDATE_EXPECT=1 cargo test -p drover-engine --test plan`
//! re-blesses them after a deliberate change).

use std::path::Path;

use drover_engine::spec::{self, ParamOverrides};
use drover_engine::{
    BoxFuture, CheckCx, CheckError, Checked, Column, Op, OpError, OpInfo, OpRegistry, PortDecl, PortType, Ports, RunCx,
    TableSchema, diag, params_schema, plan,
};
use expect_test::{Expect, expect};
use serde::Deserialize;

/// An op made of two plain functions: the planner only ever asks an op for its info and its
/// check, never to run.
struct TestOp {
    info: fn() -> OpInfo,
    check: fn(&CheckCx<'_>) -> Result<Checked, Vec<CheckError>>,
}

impl Op for TestOp {
    fn info(&self) -> OpInfo {
        (self.info)()
    }

    fn check(&self, cx: &CheckCx<'_>) -> Result<Checked, Vec<CheckError>> {
        (self.check)(cx)
    }

    fn run(&self, _: RunCx) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(async { Err(OpError::failed("planner tests never run an op")) })
    }
}

fn port(name: &'static str, ty: PortType, optional: bool) -> PortDecl {
    PortDecl { name, ty, doc: "a test port", optional }
}

fn info(name: &'static str, inputs: Vec<PortDecl>, outputs: Vec<PortDecl>, params: serde_json::Value) -> OpInfo {
    OpInfo {
        name,
        version: 3,
        doc: "a test op",
        inputs: Ports::Fixed(inputs),
        outputs: Ports::Fixed(outputs),
        params,
        deterministic: true,
        templated_params: false,
    }
}

fn no_params() -> serde_json::Value {
    serde_json::json!({"type": "object", "additionalProperties": false})
}

/// What a check returns for one output.
fn one_output(port: &str, ty: PortType) -> Result<Checked, Vec<CheckError>> {
    Ok(Checked { outputs: [(port.to_string(), ty)].into(), ..Default::default() })
}

fn utf8_table(names: &[String]) -> PortType {
    PortType::Table(TableSchema::with_columns(names.iter().map(|n| Column::new(n.as_str(), "Utf8")).collect()))
}

/// `rows`: a table of text columns named by `columns`, or of columns unknown until it runs.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RowsParams {
    #[serde(default)]
    columns: Option<Vec<String>>,
}

const ROWS: TestOp = TestOp {
    info: || info("rows", vec![], vec![port("out", PortType::any_table(), false)], params_schema::<RowsParams>()),
    check: |cx| {
        let p: RowsParams = cx.params().map_err(|e| vec![e])?;
        one_output("out", p.columns.as_deref().map_or_else(PortType::any_table, utf8_table))
    },
};

/// `pick`: one column of `table` (and of `extra`, when connected). Its error for a missing
/// column deliberately avoids the word "column": the planner must learn what it is about from
/// the error's subject. `complain` makes it report that text with no subject at all.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct PickParams {
    field: String,
    #[serde(default)]
    complain: Option<String>,
}

const PICK: TestOp = TestOp {
    info: || {
        let inputs = vec![port("table", PortType::any_table(), false), port("extra", PortType::any_table(), true)];
        info("pick", inputs, vec![port("out", PortType::any_table(), false)], params_schema::<PickParams>())
    },
    check: |cx| {
        let p: PickParams = cx.params().map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        for port in ["table", "extra"] {
            if let Some(PortType::Table(TableSchema { columns: Some(cols) })) = cx.inputs.get(port)
                && !cols.iter().any(|c| c.name == p.field)
            {
                let e = CheckError::param(&["field"], format!("`{port}` has no field `{}`", p.field));
                errors.push(e.about_column(port, &p.field));
            }
        }
        if let Some(text) = p.complain {
            errors.push(CheckError::param(&["complain"], text).help("the op's own help"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        one_output("out", utf8_table(std::slice::from_ref(&p.field)))
    },
};

/// `stack`: every part of a list input, as one table with the first part's columns.
const STACK: TestOp = TestOp {
    info: || {
        let parts = PortType::List(Box::new(PortType::any_table()));
        info("stack", vec![port("parts", parts, false)], vec![port("out", PortType::any_table(), false)], no_params())
    },
    check: |cx| match cx.inputs.get("parts") {
        Some(PortType::List(first)) => one_output("out", (**first).clone()),
        _ => one_output("out", PortType::any_table()),
    },
};

/// `weights`: a directory on its only output, `model` (a reference without a port reads it),
/// and a model id that enters the key.
const WEIGHTS: TestOp = TestOp {
    info: || info("weights", vec![], vec![port("model", PortType::Dir, false)], no_params()),
    check: |_| {
        let mut checked = one_output("model", PortType::Dir)?;
        checked.context.insert("model_id".into(), serde_json::json!("tiny-1"));
        Ok(checked)
    },
};

/// `score`: reads a model directory and a table that must have a text `prompt`.
const SCORE: TestOp = TestOp {
    info: || {
        let prompts = PortType::Table(TableSchema::with_columns(vec![Column::new("prompt", "Utf8")]));
        let inputs = vec![port("model", PortType::Dir, false), port("prompts", prompts, false)];
        info("score", inputs, vec![port("scores", PortType::Blob, false)], no_params())
    },
    check: |_| one_output("scores", PortType::Blob),
};

fn ops() -> OpRegistry {
    let mut ops = OpRegistry::new();
    for op in [ROWS, PICK, STACK, WEIGHTS, SCORE] {
        ops.register(op);
    }
    ops
}

/// The plan of `yaml` as `drover plan --explain` prints it, or every error as
/// `LINE:COL message [label]` with its help on the next line.
fn printout(yaml: &str) -> String {
    let built = spec::parse_str(Path::new("p.yaml"), yaml.to_string(), &ParamOverrides::default(), &[])
        .and_then(|spec| plan::build(&spec, &ops()));
    match built {
        Ok(plan) => {
            let all = (0..plan.nodes.len()).collect();
            plan.explain(&all).iter().map(ToString::to_string).collect()
        }
        Err(errors) => errors
            .errors
            .iter()
            .map(|e| {
                let (line, col) = diag::line_col(yaml, e.offset);
                let help = e.help.as_deref().map(|h| format!("\n  help: {h}")).unwrap_or_default();
                format!("{line}:{col} {} [{}]{help}\n", e.message, e.label)
            })
            .collect(),
    }
}

fn check(yaml: &str, expect: Expect) {
    expect.assert_eq(&printout(yaml));
}

#[test]
fn types_flow_along_edges_through_a_matrix_and_its_gather() {
    check(
        r#"
params: { wanted: [id, text] }
stages:
  raw: { op: rows, with: { columns: [id, text, label] } }
  one:
    op: pick
    matrix: { field: "${params.wanted}" }
    in: { table: raw }
    with: { field: "${matrix.field}" }
  all: { op: stack, in: { parts: "one[*]" } }
  only_text: { op: pick, in: { table: "one[field=text]" }, with: { field: text } }
"#,
        expect![[r#"
            raw: rows v3
              params   {"columns":["id","text","label"]}
              out      out: table(id: Utf8, text: Utf8, label: Utf8)
            one[field=id]: pick v3
              matrix   field="id"
              params   {"field":"id"}
              in       table <- raw.out: table(id: Utf8, text: Utf8, label: Utf8)
              out      out: table(id: Utf8)
            one[field=text]: pick v3
              matrix   field="text"
              params   {"field":"text"}
              in       table <- raw.out: table(id: Utf8, text: Utf8, label: Utf8)
              out      out: table(text: Utf8)
            all: stack v3
              params   {}
              in       parts <- [one[field=id].out, one[field=text].out]: list<table>
              out      out: table(id: Utf8)
            only_text: pick v3
              params   {"field":"text"}
              in       table <- one[field=text].out: table(text: Utf8)
              out      out: table(text: Utf8)
        "#]],
    );
}

#[test]
fn a_reference_without_a_port_reads_the_only_output_and_context_is_shown() {
    check(
        r#"
stages:
  base: { op: weights }
  prompts: { op: rows, with: { columns: [prompt] } }
  judged: { op: score, in: { model: base, prompts: prompts } }
"#,
        expect![[r#"
            prompts: rows v3
              params   {"columns":["prompt"]}
              out      out: table(prompt: Utf8)
            base: weights v3
              params   {}
              out      model: dir
              context  model_id = "tiny-1"
            judged: score v3
              params   {}
              in       model <- base.model: dir
              in       prompts <- prompts.out: table(prompt: Utf8)
              out      scores: blob
        "#]],
    );
}

#[test]
fn explain_json_has_structured_types_and_every_key() {
    let built = spec::parse_str(
        Path::new("p.yaml"),
        "stages:\n  raw: { op: rows, with: { columns: [a] } }\n  p: { op: pick, in: { table: raw }, with: { field: a } }\n"
            .into(),
        &ParamOverrides::default(),
        &[],
    )
    .unwrap();
    let plan = plan::build(&built, &ops()).unwrap_or_else(|e| panic!("{e:?}"));
    let explained = plan.explain(&plan.select("p").into_iter().collect());
    expect![[r#"
        [
          {
            "stage": "p",
            "op": "pick",
            "version": 3,
            "matrix": {},
            "params": {
              "field": "a"
            },
            "inputs": [
              {
                "port": "table",
                "from": [
                  "raw.out"
                ],
                "list": false,
                "type": {
                  "table": {
                    "columns": [
                      {
                        "name": "a",
                        "dtype": "Utf8"
                      }
                    ]
                  }
                }
              }
            ],
            "outputs": [
              {
                "port": "out",
                "type": {
                  "table": {
                    "columns": [
                      {
                        "name": "a",
                        "dtype": "Utf8"
                      }
                    ]
                  }
                },
                "format": "parquet"
              }
            ],
            "deps": [],
            "context": {}
          }
        ]"#]]
    .assert_eq(&serde_json::to_string_pretty(&explained).unwrap());
}

#[test]
fn help_about_a_missing_column_comes_from_the_errors_subject_not_its_words() {
    // The op's message never says "column"; the help still names the stage and its columns.
    check(
        r#"
stages:
  raw: { op: rows, with: { columns: [id, text] } }
  p: { op: pick, in: { table: raw }, with: { field: txet } }
"#,
        expect![[r#"
            4:53 stage `p`: `table` has no field `txet` [param `field`]
              help: input `table` is stage `raw`, with columns `id`, `text`
        "#]],
    );
}

#[test]
fn a_message_that_says_column_gets_no_table_help_without_a_subject() {
    check(
        r#"
stages:
  raw: { op: rows, with: { columns: [id] } }
  p: { op: pick, in: { table: raw }, with: { field: id, complain: "the column at offset 3 is odd" } }
"#,
        expect![[r#"
            4:67 stage `p`: the column at offset 3 is odd [param `complain`]
              help: the op's own help
        "#]],
    );
}

#[test]
fn table_help_names_only_the_input_the_error_is_about() {
    check(
        r#"
stages:
  left: { op: rows, with: { columns: [id, text] } }
  right: { op: rows, with: { columns: [id, label] } }
  p: { op: pick, in: { table: left, extra: right }, with: { field: text } }
"#,
        expect![[r#"
            5:68 stage `p`: `extra` has no field `text` [param `field`]
              help: input `extra` is stage `right`, with columns `id`, `label`
        "#]],
    );
}

#[test]
fn unknown_columns_upstream_leave_the_help_to_the_op() {
    // `raw` has no declared columns: nothing to add, and the op finds nothing missing.
    check(
        "stages:\n  raw: { op: rows }\n  p: { op: pick, in: { table: raw }, with: { field: x, complain: no } }\n",
        expect![[r#"
            3:66 stage `p`: no [param `complain`]
              help: the op's own help
        "#]],
    );
}

#[test]
fn port_types_are_checked_before_the_op_and_a_mismatch_is_one_error() {
    check(
        r#"
stages:
  base: { op: weights }
  raw: { op: rows, with: { columns: [text] } }
  judged: { op: score, in: { model: raw, prompts: raw } }
"#,
        expect![[r#"
            5:37 stage `judged`: input `model` from stage `raw`: expected dir, got table [`raw` produces table(text: Utf8)]
              help: op `score` expects dir on `model`
            5:51 stage `judged`: input `prompts` from stage `raw`: needs column `prompt`, which is missing (columns: `text`) [`raw` produces table(text: Utf8)]
              help: op `score` expects table(prompt: Utf8) on `prompts`
        "#]],
    );
}

#[test]
fn every_phase_reports_into_one_list_sorted_by_position() {
    // Expansion (a duplicate matrix value), resolution (an unknown stage), and checking (a
    // port the op does not have) each find one problem; all come back together.
    check(
        r#"
stages:
  raw: { op: rows, matrix: { n: [1, 1] } }
  p: { op: pick, in: { table: nowhere }, with: { field: a } }
  q: { op: stack, in: { prts: "raw[*]" } }
"#,
        expect![[r#"
            3:37 stage `raw`: matrix axis `n` lists `1` twice [duplicate value]
              help: each value makes one expansion; list it once
            4:31 stage `p`: input `table`: there is no stage `nowhere` [bad reference]
              help: stages are the keys under `stages:`
            5:25 stage `q`: op `stack` has no input port `prts` [unknown port]
              help: did you mean `parts`?
        "#]],
    );
}

#[test]
fn a_cycle_is_reported_once_with_its_path() {
    check(
        r#"
stages:
  a: { op: pick, in: { table: b }, with: { field: x } }
  b: { op: pick, in: { table: a }, with: { field: x } }
"#,
        expect![[r#"
            3:3 stage `a`: dependency cycle: a -> b -> a [part of a cycle]
              help: a stage cannot depend, directly or not, on its own output
        "#]],
    );
}

/// A section that stages may carry, declared by a part outside the engine (as the Slurm
/// executor declares `slurm:`): its own check says what is wrong with it, at the place.
fn placement() -> drover_engine::SectionDecl {
    fn check(v: &serde_json::Value, at: drover_engine::SectionAt) -> Vec<drover_engine::SectionProblem> {
        let mut problems = Vec::new();
        if let Some(q) = v.get("queue")
            && !q.is_string()
        {
            problems.push(
                drover_engine::SectionProblem::new(&["queue"], "`queue` must be a name").help("e.g. `queue: gpu`"),
            );
        }
        if at == drover_engine::SectionAt::Stage && v.get("poll").is_some() {
            problems.push(drover_engine::SectionProblem::new(&["poll"], "`poll` is a setting of the whole pipeline"));
        }
        problems
    }
    drover_engine::SectionDecl {
        name: "placement",
        holds: "a mapping of settings",
        example: "placement: { queue: gpu }",
        schema: serde_json::json!({"type": "object"}),
        env: None,
        stage_schema: Some(serde_json::json!({"type": "object"})),
        check: Some(check),
        scalar: false,
    }
}

fn plan_with_placement(yaml: &str) -> Result<plan::Plan, String> {
    let mut ops = ops();
    ops.register_section(placement());
    let sections: Vec<_> = ops.sections().cloned().collect();
    spec::parse_str(Path::new("p.yaml"), yaml.to_string(), &ParamOverrides::default(), &sections)
        .and_then(|spec| plan::build(&spec, &ops))
        .map_err(|errors| {
            errors
                .errors
                .iter()
                .map(|e| {
                    let (line, col) = diag::line_col(yaml, e.offset);
                    let help = e.help.as_deref().map(|h| format!("\n  help: {h}")).unwrap_or_default();
                    format!("{line}:{col} {}: {} [{}]{help}\n", e.stage.as_deref().unwrap_or("-"), e.message, e.label)
                })
                .collect()
        })
}

#[test]
fn a_declared_stage_section_is_checked_by_its_owner_at_its_place() {
    let errors = plan_with_placement(
        "placement: { queue: 3, poll: 5 }\nstages:\n  a: { op: weights, placement: { queue: [x], poll: 1 } }\n  b: { op: weights, placment: {} }\n  c: { op: weights, placement: 7 }\n",
    )
    .err()
    .expect("errors");
    expect![[r#"
        1:21 -: `placement`: `queue` must be a name [queue]
          help: e.g. `queue: gpu`
        3:41 a: stage `a`: `placement`: `queue` must be a name [queue]
          help: e.g. `queue: gpu`
        3:52 a: stage `a`: `placement`: `poll` is a setting of the whole pipeline [poll]
        4:21 b: stage `b`: unknown stage key `placment` [unknown key]
          help: did you mean `placement`?
        5:32 c: stage `c`: `placement` must be a mapping of settings; found an integer [expected a mapping]
          help: e.g. `placement: { queue: gpu }`
    "#]]
    .assert_eq(&errors);
}

/// Like `retries`, a stage's section says where it runs, not what it computes: the same
/// stage with other settings has the same key, so a result from one place serves the other.
#[test]
fn a_stage_section_is_carried_on_the_node_and_never_in_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = drover_cache::Store::open(&dir.path().join(".drover")).unwrap();
    let key = |yaml: &str| {
        let plan = plan_with_placement(yaml).unwrap();
        let recipe = drover_engine::key::recipe_for(&plan, 0, &store, &[None]).unwrap().unwrap();
        (plan.nodes[0].sections.clone(), recipe.key())
    };
    let (here, k1) = key("stages:\n  a: { op: weights }\n");
    let (there, k2) = key("stages:\n  a: { op: weights, placement: { queue: gpu } }\n");
    assert!(here.is_empty());
    assert_eq!(there, [("placement".to_string(), serde_json::json!({"queue": "gpu"}))].into());
    assert_eq!(k1, k2);
}
