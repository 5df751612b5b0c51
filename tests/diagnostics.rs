//! Bad input gets a diagnostic a person can act on: `drover validate` (and `plan`, `run`) exit 2
//! with a miette report that names the file, line and column, the stage, what was expected and
//! the nearest valid name for a typo, every error of a file at once and sorted; a failing stage
//! exits 1, a failing environment exits 3, and nothing ever panics.
//!
//! Every expected line and column is computed from the YAML the test wrote (see [`pos`]), never
//! copied from drover's output.

mod common;

use std::process::Command;

use common::{Output, Project};

/// A small CSV that `read_table` stages read.
const DATA_CSV: &str = "prompt,score\nhi,1\nyo,2\n";

/// A project whose `drover.yaml` is `yaml`, with `data.csv` beside it.
fn project(yaml: &str) -> Project {
    let p = Project::new();
    p.write("drover.yaml", yaml).write("data.csv", DATA_CSV);
    p
}

/// Runs `drover ARGS`; whatever the input, drover never panics.
#[track_caller]
fn drover(p: &Project, args: &[&str]) -> Output {
    let out = p.drover(args);
    assert_no_panic(&out);
    out
}

/// Runs `drover ARGS` with its memory and CPU time bounded (4 GiB, 60 s of CPU), so that input
/// which would exhaust the machine fails the test instead of hanging it or the machine.
#[track_caller]
fn bounded(p: &Project, args: &[&str]) -> Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4194304 2>/dev/null; ulimit -t 60 2>/dev/null; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_drover"))
        .args(args)
        .current_dir(p.path())
        .env("NO_COLOR", "1")
        .env("COLUMNS", "200")
        .env_remove("DROVER_STORE")
        .output()
        .expect("run drover under sh");
    let out = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_no_panic(&out);
    out
}

/// No panic message on either stream, and not Rust's panic exit code.
#[track_caller]
fn assert_no_panic(out: &Output) {
    assert!(
        !out.stderr.contains("panicked") && !out.stdout.contains("panicked"),
        "drover panicked (exit {})\n--- stdout\n{}\n--- stderr\n{}",
        out.code,
        out.stdout,
        out.stderr
    );
    assert_ne!(out.code, 101, "exit 101 is Rust's panic exit code\n{}", out.all());
}

/// Runs `drover ARGS` on bad input: exit 2, no panic; returns the parsed report.
#[track_caller]
fn bad(p: &Project, args: &[&str]) -> Report {
    let out = drover(p, args);
    out.expect_code(2);
    Report::parse(&out.stderr)
}

/// 1-based (line, column) of `token` inside `context`, which occurs exactly once in `yaml`.
#[track_caller]
fn pos(yaml: &str, context: &str, token: &str) -> (usize, usize) {
    assert_eq!(yaml.matches(context).count(), 1, "{context:?} must occur exactly once in the test's YAML");
    let offset = yaml.find(context).unwrap() + context.find(token).expect("token inside its context");
    let before = &yaml[..offset];
    let line = before.matches('\n').count() + 1;
    let col = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// One rendered diagnostic of a miette report.
#[derive(Debug, Default)]
struct Diag {
    /// The `×` line, with wrapped continuation lines joined by a space.
    message: String,
    /// `(file, line, column)` from the snippet header `╭─[file:line:col]`.
    at: Option<(String, usize, usize)>,
    /// The texts after `╰──` in the snippet.
    labels: Vec<String>,
    help: Option<String>,
    /// The raw lines, for failure messages.
    raw: String,
}

/// A whole report: the count line (`3 errors in drover.yaml`) when there is one, then each error.
#[derive(Debug)]
struct Report {
    headline: Option<String>,
    errors: Vec<Diag>,
    text: String,
}

impl Report {
    /// Reads miette's graphical output (NO_COLOR, so plain text).
    fn parse(stderr: &str) -> Report {
        #[derive(PartialEq)]
        enum Mode {
            Message,
            Help,
            Other,
        }
        let mut diags: Vec<Diag> = Vec::new();
        let mut mode = Mode::Other;
        for line in stderr.lines() {
            if let Some(msg) = line.strip_prefix("  × ") {
                diags.push(Diag { message: msg.trim().to_string(), ..Diag::default() });
                mode = Mode::Message;
            } else if let Some(d) = diags.last_mut() {
                if mode == Mode::Message
                    && let Some(more) = line.strip_prefix("  │ ")
                {
                    // miette wraps at spaces and after hyphens.
                    if !d.message.ends_with('-') {
                        d.message.push(' ');
                    }
                    d.message.push_str(more.trim());
                } else if let Some(help) = line.strip_prefix("  help: ") {
                    d.help = Some(help.trim().to_string());
                    mode = Mode::Help;
                } else if mode == Mode::Help && line.starts_with("        ") && !line.trim().is_empty() {
                    let help = d.help.as_mut().expect("in help");
                    if !help.ends_with('-') {
                        help.push(' ');
                    }
                    help.push_str(line.trim());
                } else {
                    mode = Mode::Other;
                    if let Some(start) = line.find("╭─[") {
                        let inner = &line[start + "╭─[".len()..line.rfind(']').expect("closing ]")];
                        let mut parts = inner.rsplitn(3, ':');
                        let col = parts.next().and_then(|c| c.parse().ok()).expect("column");
                        let line_no = parts.next().and_then(|l| l.parse().ok()).expect("line");
                        d.at = Some((parts.next().expect("file").to_string(), line_no, col));
                    } else if let Some(i) = line.find("╰── ") {
                        d.labels.push(line[i + "╰── ".len()..].trim().to_string());
                    }
                }
            }
            if let Some(d) = diags.last_mut()
                && !line.starts_with("Error: ")
            {
                d.raw.push_str(line);
                d.raw.push('\n');
            }
        }
        let is_count = |d: &Diag| {
            d.at.is_none()
                && d.message.split_once(' ').is_some_and(|(n, rest)| {
                    n.parse::<usize>().is_ok() && (rest.starts_with("error in ") || rest.starts_with("errors in "))
                })
        };
        let headline = match diags.first() {
            Some(d) if is_count(d) => Some(diags.remove(0).message),
            _ => None,
        };
        Report { headline, errors: diags, text: stderr.to_string() }
    }

    /// The one error whose message contains `needle`.
    #[track_caller]
    fn error(&self, needle: &str) -> &Diag {
        let hits: Vec<&Diag> = self.errors.iter().filter(|d| d.message.contains(needle)).collect();
        assert_eq!(hits.len(), 1, "expected exactly one error containing {needle:?}\n{}", self.text);
        hits[0]
    }

    /// The file's only error, which must contain `needle` (one mistake is one error).
    #[track_caller]
    fn only(&self, needle: &str) -> &Diag {
        self.count(1);
        self.error(needle)
    }

    /// The file's only error.
    #[track_caller]
    fn single(&self) -> &Diag {
        self.count(1);
        &self.errors[0]
    }

    /// The count line says `n` errors in drover.yaml, and that many are printed.
    #[track_caller]
    fn count(&self, n: usize) -> &Report {
        let want = if n == 1 { "1 error in drover.yaml".to_string() } else { format!("{n} errors in drover.yaml") };
        assert_eq!(self.headline.as_deref(), Some(want.as_str()), "count line\n{}", self.text);
        assert_eq!(self.errors.len(), n, "printed errors\n{}", self.text);
        self
    }

    /// Each error's `(line, column)`, in printed order.
    fn positions(&self) -> Vec<(usize, usize)> {
        self.errors.iter().map(|d| d.at.as_ref().map_or((0, 0), |(_, l, c)| (*l, *c))).collect()
    }
}

impl Diag {
    /// Points at `drover.yaml:LINE:COL`.
    #[track_caller]
    fn at(&self, (line, col): (usize, usize)) -> &Diag {
        assert_eq!(self.at, Some(("drover.yaml".to_string(), line, col)), "location of\n{}", self.raw);
        self
    }

    /// The message names the stage: `stage `NAME`: ...`.
    #[track_caller]
    fn stage(&self, name: &str) -> &Diag {
        assert!(self.message.starts_with(&format!("stage `{name}`: ")), "stage `{name}` in\n{}", self.raw);
        self
    }

    #[track_caller]
    fn says(&self, needle: &str) -> &Diag {
        assert!(self.message.contains(needle), "message should contain {needle:?}\n{}", self.raw);
        self
    }

    #[track_caller]
    fn help(&self, needle: &str) -> &Diag {
        let help = self.help.as_deref().unwrap_or_else(|| panic!("no help line in\n{}", self.raw));
        assert!(help.contains(needle), "help should contain {needle:?}\n{}", self.raw);
        self
    }

    #[track_caller]
    fn label(&self, needle: &str) -> &Diag {
        assert!(self.labels.iter().any(|l| l.contains(needle)), "a label should contain {needle:?}\n{}", self.raw);
        self
    }
}

// ---------------------------------------------------------------------------------------------
// YAML itself

#[test]
fn yaml_syntax_error_points_at_the_unclosed_quote() {
    let yaml = "stages:\n  raw:\n    op: read_table\n    with: {path: \"data.csv}\n";
    let p = project(yaml);
    for cmd in ["validate", "plan", "run"] {
        bad(&p, &[cmd]).only("YAML syntax error").says("quoted scalar").at(pos(yaml, "\"data.csv}", "\""));
    }
}

#[test]
fn yaml_unclosed_bracket_points_at_the_bracket() {
    let yaml = "stages:\n  raw:\n    op: read_table\n    with: [path, data.csv\n  other:\n    op: read_table\n";
    let p = project(yaml);
    let e = bad(&p, &["validate"]);
    let e = e.only("YAML syntax error");
    assert!(e.message.contains('[') || e.message.contains(']'), "should say which bracket is unclosed\n{}", e.raw);
    e.at(pos(yaml, "[path", "["));
}

#[test]
fn yaml_tab_indentation_points_at_the_tab() {
    let yaml = "stages:\n  raw:\n    op: read_table\n\twith: {path: data.csv}\n";
    let p = project(yaml);
    bad(&p, &["validate"]).only("tab").at(pos(yaml, "\twith", "\t")).help("spaces");
}

#[test]
fn two_yaml_documents_point_at_the_separator() {
    let yaml =
        "stages:\n  a:\n    op: read_table\n    with: {path: data.csv}\n---\nstages:\n  b:\n    op: read_table\n";
    let p = project(yaml);
    bad(&p, &["validate"]).only("one YAML document").at(pos(yaml, "---", "---")).help("---");
}

#[test]
fn alias_bomb_fails_fast_with_exit_2() {
    // Billion laughs: 9 levels of 10 aliases each would expand to 10^10 scalars.
    let mut yaml = String::from("params:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        yaml.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
    }
    yaml.push_str("stages:\n  s:\n    op: command\n    out: {o: blob}\n    with: {run: \"echo > ${out.o}\"}\n");
    let p = project(&yaml);
    // Bounded memory and CPU time, so that an unbounded expansion fails this test instead of
    // hanging it or exhausting the machine.
    let out = bounded(&p, &["validate"]);
    assert_no_panic(&out);
    out.expect_code(2);
    let report = Report::parse(&out.stderr);
    let e = report.only("aliases expand to more than");
    e.help("alias bomb");
    // It points at an alias (`*aN`) on one of the bomb's lines.
    let (_, line, col) = e.at.clone().expect("a location");
    let text = yaml.lines().nth(line - 1).expect("line in file");
    assert!((2..=11).contains(&line) && text[col - 1..].starts_with("*a"), "should point at an alias\n{}", e.raw);
}

/// drover's documented limit on nesting (README, "Limits").
const MAX_DEPTH: usize = 64;

/// A pipeline whose `params:` hold a block mapping `levels` deep, one space of indent per level:
/// ` k0:` is in the mapping at level 2 (the file's root is level 1), ` kN:` at level N + 2.
fn deep_params(levels: usize) -> String {
    let mut yaml = String::from("params:\n");
    for i in 0..levels {
        yaml.push_str(&format!("{} k{i}:\n", " ".repeat(1 + i)));
    }
    yaml + &" ".repeat(2 + levels) + "x\nstages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n"
}

#[test]
fn yaml_nested_past_the_limit_is_a_located_error_not_a_stack_overflow() {
    // 5,000 levels of block mapping overflowed the stack (exit 134).
    let yaml = deep_params(5_000);
    let p = project(&yaml);
    let too_deep = format!(" k{}:", MAX_DEPTH + 1 - 2);
    bad(&p, &["validate"])
        .only("YAML nested more than 64 levels deep")
        .at(pos(&yaml, &too_deep, "k"))
        .help("mappings and lists nest at most 64 levels deep; flatten this value");
    // 64 levels are fine.
    p.write("drover.yaml", &deep_params(MAX_DEPTH - 1));
    drover(&p, &["validate"]).expect_code(0);

    // 10,000 levels of block lists on one line (`- - - ...`) overflowed it too. `with:` is
    // level 4 (root, `stages:`, the stage, `with:`), so the first `-` starts level 5.
    let yaml = format!(
        "stages:\n  s:\n    op: command\n    out: {{o: blob}}\n    with:\n      run:\n        {}x\n",
        "- ".repeat(10_000)
    );
    let p = project(&yaml);
    let (line, col) = pos(&yaml, "run:\n        -", "-");
    bad(&p, &["validate"]).only("YAML nested more than 64 levels deep").at((line, col + 2 * (MAX_DEPTH - 4)));
}

#[test]
fn yaml_flow_list_nested_10000_deep_reports_the_depth_limit_not_an_unclosed_bracket() {
    let yaml = format!(
        "stages:\n  s:\n    op: command\n    out: {{o: blob}}\n    with: {{run: {}{}}}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let p = project(&yaml);
    // `{run:` is level 4, so the first `[` starts level 5.
    let (line, col) = pos(&yaml, "{run: [", "[");
    bad(&p, &["validate"])
        .only("YAML nested more than 64 levels deep")
        .at((line, col + MAX_DEPTH - 4))
        .help("at most 64 levels deep");
}

#[test]
fn control_character_is_reported_at_its_place_not_as_an_unclosed_quote() {
    for (c, message, escape) in [
        ('\0', "YAML does not allow the control character U+0000 (NUL)", "`\\0`"),
        ('\u{1b}', "YAML does not allow the control character U+001B (ESC)", "`\\x1b`"),
    ] {
        let yaml = format!(
            "stages:\n  s:\n    op: command\n    out: {{o: blob}}\n    with: {{run: \"echo a{c}b > ${{out.o}}\"}}\n"
        );
        let p = project(&yaml);
        bad(&p, &["validate"])
            .only(message)
            .at(pos(&yaml, &format!("a{c}b"), &c.to_string()))
            .help(&format!("remove it, or write it as the escape {escape} inside a double-quoted string"));
    }
}

#[test]
fn utf8_byte_order_mark_at_the_start_of_a_file_is_ignored() {
    let p = project("\u{feff}params: {lr: 1}\nstages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n");
    p.write("params.yaml", "\u{feff}lr: 2\n");
    let out = drover(&p, &["validate", "-p", "params.yaml"]);
    out.expect_code(0);
    assert_eq!(out.stdout, "drover.yaml: ok (1 stages, 1 after matrix expansion)\n", "{}", out.all());
    // Columns on the first line are counted without it.
    p.write(
        "drover.yaml",
        "\u{feff}parmas: {lr: 1}\nstages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n",
    );
    bad(&p, &["validate"]).only("unknown top-level key `parmas`").at((1, 1));
}

// ---------------------------------------------------------------------------------------------
// Keys, ops, ports and params

#[test]
fn unknown_top_level_key_suggests_the_nearest() {
    let yaml = "parmas: {lr: 1}\nstages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("unknown top-level key `parmas`")
        .at(pos(yaml, "parmas", "parmas"))
        .help("did you mean `params`?");
}

#[test]
fn pipeline_without_stages_points_at_the_start_of_the_file() {
    let yaml = "pipeline: demo\ndescription: nothing to do\n";
    let p = project(yaml);
    bad(&p, &["validate"]).only("no `stages:`").at((1, 1)).help("stages:");
}

#[test]
fn unknown_stage_key_suggests_the_nearest() {
    let yaml = "stages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n    outs: {x: table}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("unknown stage key `outs`")
        .stage("raw")
        .at(pos(yaml, "outs:", "outs"))
        .help("did you mean `out`?");
}

#[test]
fn unknown_op_suggests_the_nearest_in_validate_plan_and_run() {
    let yaml = "stages:\n  raw:\n    op: read_tabel\n    with: {path: data.csv}\n";
    let p = project(yaml);
    for cmd in ["validate", "plan", "run"] {
        bad(&p, &[cmd])
            .only("unknown op `read_tabel`")
            .stage("raw")
            .at(pos(yaml, "read_tabel", "read_tabel"))
            .label("no such op")
            .help("did you mean `read_table`?");
    }
    // A pipeline that does not check records no run.
    let runs = drover(&p, &["runs"]);
    assert!(runs.stdout.contains("no runs yet"), "{}", runs.all());
}

#[test]
fn unknown_op_far_from_every_name_lists_the_ops_instead_of_guessing() {
    let yaml = "stages:\n  raw:\n    op: frobnicate\n";
    let p = project(yaml);
    let report = bad(&p, &["validate"]);
    let e = report.only("unknown op `frobnicate`").at(pos(yaml, "frobnicate", "frobnicate")).help("read_table");
    assert!(!e.help.as_deref().unwrap().contains("did you mean"), "no op is close to `frobnicate`\n{}", e.raw);
}

#[test]
fn unknown_input_port_is_one_error_with_a_hint() {
    let yaml = "stages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n  s:\n    op: sample\n    in: {tabel: raw}\n    with: {n: 1}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("no input port `tabel`")
        .stage("s")
        .at(pos(yaml, "{tabel", "tabel"))
        .help("did you mean `table`?");
}

#[test]
fn unknown_input_port_of_concat_is_one_error_with_a_hint() {
    let yaml = "stages:\n  parts:\n    op: command\n    matrix: {k: [1, 2]}\n    out: {out: table}\n    with: {run: \"echo a > ${out.out}\"}\n  all:\n    op: concat\n    in: {prts: \"parts[*]\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("no input port `prts`")
        .stage("all")
        .at(pos(yaml, "{prts", "prts"))
        .help("did you mean `parts`?");
}

#[test]
fn reference_to_a_missing_output_port_suggests_the_nearest() {
    let yaml = "stages:\n  model:\n    op: command\n    out: {weights: blob}\n    with: {run: \"echo > ${out.weights}\"}\n  use:\n    op: command\n    in: {w: model.weigths}\n    out: {o: blob}\n    with: {run: \"cp ${in.w} ${out.o}\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("stage `model` has no output `weigths`")
        .stage("use")
        .at(pos(yaml, "model.weigths", "model.weigths"))
        .help("did you mean `weights`?");
}

#[test]
fn output_an_op_does_not_declare_is_rejected_with_its_outputs() {
    let yaml = "stages:\n  raw:\n    op: read_table\n    out: {data: table}\n    with: {path: data.csv}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("op `read_table` has no output `data`")
        .stage("raw")
        .at(pos(yaml, "{data:", "data"))
        .help("`out`");
}

#[test]
fn unknown_output_type_suggests_the_nearest() {
    let yaml = "stages:\n  m:\n    op: command\n    out: {res: tabel}\n    with: {run: \"echo a > ${out.res}\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("unknown type `tabel`")
        .stage("m")
        .at(pos(yaml, "tabel", "tabel"))
        .help("did you mean `table`?");
}

#[test]
fn unknown_param_points_at_the_key_and_suggests_the_nearest() {
    let yaml = "stages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n  s:\n    op: sample\n    in: {table: raw}\n    with: {fracton: 0.5}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("`fracton`")
        .stage("s")
        .at(pos(yaml, "{fracton", "fracton"))
        .help("did you mean `fraction`?");
}

#[test]
fn negative_or_wrong_stage_settings_say_what_was_found() {
    let yaml = "\
seed: -3
stages:
  s:
    op: command
    retries: -1
    seed: 1.5
    resources: {gpu: -2}
    out: {o: blob}
    with: {run: \"echo > ${out.o}\"}
  t:
    op: command
    retries: 4294967296
    timeout: soon
    out: {o: blob}
    with: {run: \"echo > ${out.o}\"}
  u:
    op: command
    timeout: .inf
    out: {o: blob}
    with: {run: \"echo > ${out.o}\"}
  v:
    op: command
    timeout: 99999999999999999999d
    out: {o: blob}
    with: {run: \"echo > ${out.o}\"}
";
    let p = project(yaml);
    let report = bad(&p, &["validate"]);
    report.count(8);
    report.error("`seed` must be a non-negative integer; found -3").at(pos(yaml, "seed: -3", "-3"));
    report.error("`retries` must be a non-negative integer; found -1").stage("s").at(pos(yaml, "retries: -1", "-1"));
    report.error("`seed` must be a non-negative integer; found 1.5").stage("s").at(pos(yaml, "1.5", "1.5"));
    report.error("`resources.gpu` must be a non-negative integer; found -2").stage("s").at(pos(yaml, "gpu: -2", "-2"));
    // Past what a count of retries holds, rather than wrapping around to 0.
    report.error("`retries` must be at most 4294967295; found 4294967296").stage("t");
    report.error("`timeout` must be a positive duration; found `soon`").stage("t").at(pos(yaml, "soon", "soon"));
    // Both panicked (a `Duration` cannot hold them).
    report.error("`timeout` must be a positive duration; found infinity").stage("u").at(pos(yaml, ".inf", ".inf"));
    report.error("`timeout` must be a positive duration; found `99999999999999999999d`").stage("v").help("e.g. `30s`");
}

#[test]
fn nan_or_infinite_sample_fraction_points_at_the_value() {
    // JSON has no NaN, so `.nan` reached the op as null: "`sample` needs `n` or `fraction`".
    for (value, found) in [(".nan", "NaN"), (".inf", "infinity"), ("-.inf", "-infinity")] {
        let yaml = format!(
            "stages:\n  raw:\n    op: read_table\n    with: {{path: data.csv}}\n  s:\n    op: sample\n    in: {{table: raw}}\n    with: {{fraction: {value}}}\n"
        );
        let p = project(&yaml);
        bad(&p, &["validate"])
            .only(&format!("stage `s`: `fraction` must be a finite number; found {found}"))
            .at(pos(&yaml, &format!("fraction: {value}"), value))
            .label("not a finite number")
            .help("ops receive params as JSON, which has no NaN or infinity; write a finite number");
    }
    // The same for a param (and every use of it).
    let yaml = "params: {f: .nan}\nstages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n";
    bad(&project(yaml), &["validate"])
        .only("param `f` must be a finite number; found NaN")
        .at(pos(yaml, ".nan", ".nan"));
}

#[test]
fn wrong_param_type_says_what_was_expected() {
    let yaml = "stages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n  s:\n    op: sample\n    in: {table: raw}\n    with: {n: \"five\"}\n";
    let p = project(yaml);
    // `drover ops` calls `n` an integer; the diagnostic should use the same words, and say how
    // to fix it.
    bad(&p, &["validate"])
        .single()
        .stage("s")
        .says("integer")
        .at(pos(yaml, "\"five\"", "\"five\""))
        .label("`n`")
        .help("`n`");
}

#[test]
fn conflicting_params_point_at_the_second() {
    let yaml = "stages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n  s:\n    op: sample\n    in: {table: raw}\n    with: {n: 5, fraction: 0.5}\n";
    let p = project(yaml);
    bad(&p, &["validate"]).only("not both").stage("s").at(pos(yaml, "fraction: 0.5", "0.5")).label("`fraction`");
}

// ---------------------------------------------------------------------------------------------
// Stage references, graph and types

#[test]
fn unknown_stage_reference_is_one_error_with_a_hint() {
    let yaml = "stages:\n  tokens:\n    op: read_table\n    with: {path: data.csv}\n  use:\n    op: sample\n    in: {table: tokesn}\n    with: {n: 1}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("there is no stage `tokesn`")
        .stage("use")
        .at(pos(yaml, "tokesn", "tokesn"))
        .label("bad reference")
        .help("did you mean `tokens`?");
}

#[test]
fn stage_reference_hint_catches_swapped_letters_in_a_short_name() {
    let yaml = "stages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n  use:\n    op: command\n    in: {x: rwa}\n    out: {o: blob}\n    with: {run: \"cp ${in.x} ${out.o}\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"]).only("there is no stage `rwa`").at(pos(yaml, "rwa", "rwa")).help("did you mean `raw`?");
}

#[test]
fn dependency_cycle_prints_the_cycle() {
    let yaml = "stages:\n  a:\n    op: command\n    in: {x: c.o}\n    out: {o: blob}\n    with: {run: \"cp ${in.x} ${out.o}\"}\n  b:\n    op: command\n    in: {x: a.o}\n    out: {o: blob}\n    with: {run: \"cp ${in.x} ${out.o}\"}\n  c:\n    op: command\n    in: {x: b.o}\n    out: {o: blob}\n    with: {run: \"cp ${in.x} ${out.o}\"}\n";
    let p = project(yaml);
    for cmd in ["validate", "plan", "run"] {
        bad(&p, &[cmd])
            .only("dependency cycle: a -> b -> c -> a")
            .stage("a")
            .at(pos(yaml, "  a:", "a"))
            .help("its own output");
    }
}

#[test]
fn stage_reading_its_own_output_is_a_cycle() {
    let yaml = "stages:\n  a:\n    op: command\n    in: {x: a.o}\n    out: {o: blob}\n    with: {run: \"cp ${in.x} ${out.o}\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"]).only("dependency cycle: a -> a").stage("a").at(pos(yaml, "  a:", "a"));
}

#[test]
fn duplicate_stage_names_point_at_the_second_and_give_the_first_line() {
    let yaml = "stages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n  raw:\n    op: read_table\n    with: {path: data.csv}\n";
    let p = project(yaml);
    let second = pos(yaml, "}\n  raw:", "raw");
    // A person reads lines, not byte offsets: the help says where the first one is.
    bad(&p, &["validate"]).only("duplicate").says("`raw`").at(second).help("line 2");
}

#[test]
fn duplicate_stage_names_do_not_hide_other_errors() {
    let yaml = "stages:\n  raw:\n    op: read_tabel\n    with: {path: data.csv}\n  raw:\n    op: read_table\n    with: {path: data.csv}\n";
    let p = project(yaml);
    let report = bad(&p, &["validate"]);
    report.count(2);
    report.error("unknown op `read_tabel`").at(pos(yaml, "read_tabel", "read_tabel"));
    report.error("duplicate").at(pos(yaml, "}\n  raw:", "raw"));
}

#[test]
fn blob_into_a_table_port_names_both_stages_and_types() {
    let yaml = "stages:\n  model:\n    op: command\n    out: {weights: blob}\n    with: {run: \"echo > ${out.weights}\"}\n  s:\n    op: sample\n    in: {table: model.weights}\n    with: {n: 5}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("from stage `model`")
        .stage("s")
        .says("expected table, got blob")
        .at(pos(yaml, "model.weights}", "model.weights"))
        .label("`model` produces blob")
        .help("`sample`");
}

#[test]
fn column_missing_from_the_upstream_table_names_both_stages_and_the_columns() {
    let yaml = "stages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n  pick:\n    op: select\n    in: {table: raw}\n    with: {columns: [prompt, label]}\n";
    let p = project(yaml);
    let report = bad(&p, &["validate"]);
    let e = report.only("`label`").stage("pick").at(pos(yaml, "label]", "label"));
    // Which table lacks it, and what that table has.
    let text = format!("{} {}", e.message, e.help.as_deref().unwrap_or(""));
    for needle in ["`raw`", "prompt", "score"] {
        assert!(text.contains(needle), "should mention {needle}\n{}", e.raw);
    }
}

#[test]
fn errors_downstream_of_a_broken_stage_are_still_reported() {
    let yaml = "stages:\n  raw:\n    op: read_table\n    with: {path: missing.csv}\n  s:\n    op: sample\n    in: {table: raw}\n    with: {fracton: 0.5}\n";
    let p = project(yaml);
    let report = bad(&p, &["validate"]);
    report.count(2);
    report.error("missing.csv").stage("raw");
    report.error("`fracton`").stage("s");
}

// ---------------------------------------------------------------------------------------------
// Files

#[test]
fn missing_input_file_of_read_table_points_at_the_path() {
    let yaml = "stages:\n  raw:\n    op: read_table\n    with: {path: missing.csv}\n";
    let p = project(yaml);
    for cmd in ["validate", "plan", "run"] {
        bad(&p, &[cmd])
            .only("file not found")
            .stage("raw")
            .says("missing.csv")
            .at(pos(yaml, "missing.csv", "missing.csv"))
            .label("`path`")
            .help("pipeline's directory");
    }
}

#[test]
fn missing_pipeline_file_exits_2() {
    let p = Project::new();
    let report = bad(&p, &["validate", "nope.yaml"]);
    let e = &report.errors[0];
    assert!(e.message.contains("cannot read pipeline file nope.yaml"), "{}", report.text);
}

#[test]
fn missing_params_file_exits_2() {
    let yaml = "params: {lr: 1}\nstages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n";
    let p = project(yaml);
    bad(&p, &["validate", "-p", "nope.yaml"]).only("cannot read params file nope.yaml");
}

/// A pipeline that checks, for tests about how files are read.
const VALID: &str = "params: {lr: 1}\nstages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n";

#[test]
fn dev_zero_as_pipeline_or_params_file_stops_at_the_size_limit() {
    // Both read until memory ran out; under the bound, that is a failed test, not a lost machine.
    let p = project(VALID);
    let out = bounded(&p, &["validate", "/dev/zero"]);
    out.expect_code(2);
    let report = Report::parse(&out.stderr);
    assert_eq!(report.headline.as_deref(), Some("1 error in /dev/zero"), "{}", report.text);
    assert_eq!(report.errors.len(), 1, "{}", report.text);
    assert_eq!(report.errors[0].message, "cannot read pipeline file /dev/zero: it is larger than 64 MiB");
    report.errors[0].help("drover reads pipeline and params files of at most 64 MiB (67108864 bytes)");

    let out = bounded(&p, &["validate", "-p", "/dev/zero"]);
    out.expect_code(2);
    Report::parse(&out.stderr)
        .only("cannot read params file /dev/zero: it is larger than 64 MiB")
        .at(pos(VALID, "{lr: 1}", "{"))
        .help("at most 64 MiB");
}

#[test]
fn directory_as_pipeline_file_says_so_and_names_the_file_inside() {
    let p = project(VALID);
    p.write("sub/drover.yaml", VALID);
    let report = bad(&p, &["validate", "sub"]);
    assert_eq!(report.errors.len(), 1, "{}", report.text);
    assert_eq!(report.errors[0].message, "cannot read pipeline file sub: it is a directory");
    report.errors[0].help("pass the YAML file itself, e.g. sub/drover.yaml");
    bad(&p, &["validate", "-p", "sub"]).only("cannot read params file sub: it is a directory");
}

#[test]
fn fifo_as_pipeline_file_is_refused_without_waiting_for_a_writer() {
    use std::os::unix::fs::OpenOptionsExt;
    let p = project(VALID);
    let fifo = p.join("pipe.yaml");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    // A writer that hands a valid pipeline to a drover that opens the FIFO. Opening it for
    // writing waits for a reader.
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, VALID))
    };
    let report = bad(&p, &["validate", "pipe.yaml"]);
    // drover never opened it: release the writer by opening the reading end here.
    let reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).expect("open");
    writer.join().expect("writer thread").expect("write to the FIFO");
    drop(reader);
    assert_eq!(report.errors.len(), 1, "{}", report.text);
    assert_eq!(
        report.errors[0].message,
        "cannot read pipeline file pipe.yaml: it is a named pipe (FIFO), not a regular file"
    );
    report.errors[0].help("write the pipeline to a file: its store (`.drover/`) and relative paths are beside it");
}

#[test]
fn params_file_nested_5000_deep_is_a_located_error_not_a_stack_overflow() {
    // Used in a command, this overflowed the stack (exit 134).
    let yaml = "params: {x: 0}\nstages:\n  s:\n    op: command\n    out: {o: blob}\n    with: {run: \"echo ${params.x} > ${out.o}\"}\n";
    let p = project(yaml);
    let mut params = String::from("x:\n");
    for i in 0..5_000 {
        params.push_str(&format!("{} k{i}:\n", " ".repeat(1 + i)));
    }
    params.push_str(&" ".repeat(5_002));
    params.push_str("1\n");
    p.write("params.yaml", &params);
    // The file's root (holding `x:`) is level 1, and ` kN:` is in the mapping at level N + 2.
    let (line, col) = pos(&params, &format!(" k{}:", MAX_DEPTH + 1 - 2), "k");
    bad(&p, &["run", "-p", "params.yaml"])
        .only(&format!("params file params.yaml:{line}:{col}: YAML nested more than 64 levels deep"))
        .at(pos(yaml, "{x: 0}", "{"))
        .help("at most 64 levels deep");
}

#[test]
fn params_file_number_out_of_range_is_an_error_not_null() {
    let p = project(VALID);
    p.write("params.yaml", "lr: 1e999\n");
    bad(&p, &["validate", "-p", "params.yaml"])
        .only("params file params.yaml:1:5: number `1e999` is out of range")
        .help("quote it to keep it as text");
}

#[test]
fn missing_dep_file_points_at_the_dep() {
    let yaml = "stages:\n  s:\n    op: command\n    deps: [missing.txt]\n    out: {o: blob}\n    with: {run: \"echo > ${out.o}\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("dep file `missing.txt` not found")
        .stage("s")
        .at(pos(yaml, "missing.txt", "missing.txt"))
        .help("missing.txt");
}

#[test]
fn a_dep_naming_the_pipeline_directory_itself_is_rejected() {
    // Deps may lead anywhere (tests/paths.rs), but not to the directory that holds the store.
    let yaml = "stages:\n  s:\n    op: command\n    deps: [data.csv, sub/.., ./]\n    out: {o: blob}\n    with: {run: \"echo > ${out.o}\"}\n";
    let p = project(yaml);
    let report = bad(&p, &["validate"]);
    report.count(2);
    report
        .error("dep `sub/..` is the pipeline's directory itself")
        .stage("s")
        .at(pos(yaml, "sub/..", "sub/.."))
        .help("it holds the store, which changes with every run");
    report.error("dep `./` is the pipeline's directory itself").at(pos(yaml, "./]", "./"));
}

#[test]
fn output_port_named_like_a_path_is_rejected() {
    let yaml = "stages:\n  s:\n    op: command\n    out: {../x: blob}\n    with: {run: \"echo hi\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("invalid output port name `../x`")
        .stage("s")
        .at(pos(yaml, "../x", "../x"))
        .help("not paths");
}

// ---------------------------------------------------------------------------------------------
// Matrix

#[test]
fn empty_matrix_axis_is_one_error() {
    let yaml = "stages:\n  train:\n    op: command\n    matrix: {size: []}\n    out: {m: blob}\n    with: {run: \"echo ${matrix.size} > ${out.m}\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"]).only("matrix axis `size` must be a non-empty list").stage("train").at(pos(yaml, "[]", "["));
}

#[test]
fn matrix_that_is_not_a_mapping_shows_an_example() {
    let yaml =
        "stages:\n  train:\n    op: command\n    matrix: 5\n    out: {m: blob}\n    with: {run: \"echo > ${out.m}\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"]).only("`matrix` must map axis names").stage("train").at(pos(yaml, ": 5", "5")).help("size");
}

#[test]
fn duplicate_matrix_value_points_at_the_repeat() {
    let yaml = "stages:\n  train:\n    op: command\n    matrix: {size: [1, 2, 1]}\n    out: {m: blob}\n    with: {run: \"echo ${matrix.size} > ${out.m}\"}\n";
    let p = project(yaml);
    let (line, col) = pos(yaml, "[1, 2, 1]", ", 1]");
    bad(&p, &["validate"]).only("lists `1` twice").stage("train").at((line, col + 2));
}

#[test]
fn matrix_value_in_a_stage_without_matrix_is_rejected() {
    let yaml =
        "stages:\n  plain:\n    op: command\n    out: {r: blob}\n    with: {run: \"echo ${matrix.size} > ${out.r}\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("`${matrix.size}` names a matrix value, but the stage has no `matrix:`")
        .stage("plain")
        .at(pos(yaml, "${matrix.size}", "${"))
        .help("matrix:");
}

#[test]
fn matrix_axis_typo_suggests_the_nearest() {
    let yaml = "stages:\n  train:\n    op: command\n    matrix: {size: [1, 2]}\n    out: {m: blob}\n    with: {run: \"echo ${matrix.sise} > ${out.m}\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("`${matrix.sise}` names no matrix axis")
        .stage("train")
        .at(pos(yaml, "${matrix.sise}", "${"))
        .help("did you mean `size`?");
}

#[test]
fn reference_to_a_matrix_stage_without_selector_lists_the_expansions() {
    let yaml = "stages:\n  train:\n    op: command\n    matrix: {size: [1, 2]}\n    out: {m: blob}\n    with: {run: \"echo ${matrix.size} > ${out.m}\"}\n  eval:\n    op: command\n    in: {m: train}\n    out: {r: blob}\n    with: {run: \"cat ${in.m} > ${out.r}\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("stage `train` has 2 expansions; say which")
        .stage("eval")
        .at(pos(yaml, "{m: train}", "train"))
        .help("`train[*]`")
        .help("`train[size=1]`")
        .help("`train[size=2]`");
}

#[test]
fn selector_matching_no_expansion_lists_them() {
    let yaml = "stages:\n  train:\n    op: command\n    matrix: {size: [1, 2]}\n    out: {m: blob}\n    with: {run: \"echo ${matrix.size} > ${out.m}\"}\n  eval:\n    op: command\n    in: {m: \"train[size=3]\"}\n    out: {r: blob}\n    with: {run: \"cat ${in.m} > ${out.r}\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("no expansion of `train` matches `[size=3]`")
        .stage("eval")
        .at(pos(yaml, "\"train[size=3]\"", "\""))
        .help("`train[size=2]`");
}

#[test]
fn matrix_of_a_billion_expansions_is_refused_before_expanding() {
    // It filled memory for 16 s before (exit 134); under the bound, that is a failed test.
    let values = (0..1000).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    let yaml = format!(
        "stages:\n  train:\n    op: command\n    matrix: {{a: [{values}], b: [{values}], c: [{values}]}}\n    out: {{m: blob}}\n    with: {{run: \"echo ${{matrix.a}} > ${{out.m}}\"}}\n"
    );
    let p = project(&yaml);
    let out = bounded(&p, &["validate"]);
    out.expect_code(2);
    Report::parse(&out.stderr)
        .only("stage `train`: `matrix` expands to 1,000,000,000 stages; at most 1,000,000")
        .at(pos(&yaml, "matrix:", "matrix"))
        .label("1,000 x 1,000 x 1,000 values of `a`, `b`, `c`")
        .help("a pipeline holds at most that many stages after matrix expansion");
}

// ---------------------------------------------------------------------------------------------
// `${...}` interpolation

#[test]
fn interpolation_naming_nothing_points_at_the_reference() {
    let yaml = "stages:\n  a:\n    op: command\n    out: {m: blob}\n    with: {run: \"echo ${env.HOME} > ${out.m}\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("`${env.HOME}` names nothing")
        .stage("a")
        .at(pos(yaml, "${env.HOME}", "${"))
        .help("${params.NAME}");
}

#[test]
fn interpolation_scope_typo_suggests_params() {
    let yaml = "params: {lr: 0.1}\nstages:\n  a:\n    op: command\n    out: {m: blob}\n    with: {run: \"echo ${parms.lr} > ${out.m}\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("`${parms.lr}`")
        .stage("a")
        .at(pos(yaml, "${parms.lr}", "${"))
        .help("did you mean `${params.lr}`?");
}

#[test]
fn unknown_param_reference_suggests_the_nearest() {
    let yaml = "params: {lr: 0.1}\nstages:\n  a:\n    op: command\n    out: {m: blob}\n    with: {run: \"echo ${params.lrr} > ${out.m}\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("there is no `params.lrr`")
        .stage("a")
        .at(pos(yaml, "${params.lrr}", "${"))
        .help("did you mean `lr`?");
}

#[test]
fn each_bad_reference_in_one_string_gets_its_own_column() {
    let yaml = "params: {lr: 0.1}\nstages:\n  a:\n    op: command\n    out: {m: blob}\n    with: {run: \"echo ${params.lrr} ${env.HOME} > ${out.n}\"}\n";
    let p = project(yaml);
    let report = bad(&p, &["validate"]);
    report.count(3);
    report.error("`params.lrr`").at(pos(yaml, "${params.lrr}", "${"));
    report.error("`${env.HOME}`").at(pos(yaml, "${env.HOME}", "${"));
    report.error("`${out.n}`").at(pos(yaml, "${out.n}", "${")).help("`m`");
    let cols: Vec<usize> = report.positions().iter().map(|p| p.1).collect();
    assert!(cols.windows(2).all(|w| w[0] < w[1]), "sorted by column: {cols:?}\n{}", report.text);
}

#[test]
fn unclosed_interpolation_points_at_the_dollar() {
    let yaml = "params: {lr: 0.1}\nstages:\n  a:\n    op: command\n    out: {m: blob}\n    with: {run: \"echo > ${out.m}; echo ${params.lr\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"]).only("unclosed `${`").stage("a").at(pos(yaml, "${params.lr\"", "${")).help("$${");
}

#[test]
fn unclosed_interpolation_before_another_reference_is_reported_as_unclosed() {
    let yaml = "params: {lr: 0.1}\nstages:\n  a:\n    op: command\n    out: {m: blob}\n    with: {run: \"echo ${params.lr > ${out.m}\"}\n";
    let p = project(yaml);
    bad(&p, &["validate"]).only("unclosed `${`").stage("a").at(pos(yaml, "${params.lr >", "${"));
}

// ---------------------------------------------------------------------------------------------
// Command line

#[test]
fn set_of_a_param_that_does_not_exist_suggests_the_nearest() {
    let yaml =
        "params:\n  lr: 0.1\n  fit: {delta: 0.5}\nstages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n";
    let p = project(yaml);
    let report = bad(&p, &["validate", "--set", "lrr=0.2"]);
    let e = report.only("--set lrr=0.2: there is no param `lrr`").help("did you mean `lr`?");
    // It points at the params: their key, or the first of them.
    let at = e.at.as_ref().map(|(_, l, c)| (*l, *c));
    assert!(
        at == Some(pos(yaml, "params:", "params")) || at == Some(pos(yaml, "lr: 0.1", "lr")),
        "should point at `params:`\n{}",
        e.raw
    );
    bad(&p, &["plan", "--set", "fit.dleta=1"]).only("no param `dleta`").help("did you mean `delta`?");
    drover(&p, &["validate", "--set", "fit.delta=1"]).expect_code(0);
}

#[test]
fn set_inside_a_param_that_is_not_a_mapping_names_it() {
    // Each replaced the param silently.
    let yaml = "params:\n  x: 3\n  l: [1, 2]\n  fit: {delta: 0.5}\nstages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n";
    let p = project(yaml);
    bad(&p, &["validate", "--set", "x.y=1"])
        .only("--set x.y=1: param `x` is an integer (3), not a mapping, so it has no `y` to set")
        .at(pos(yaml, "x: 3", "3"))
        .label("declared here")
        .help("set `x` itself (`--set x=VALUE`), or declare it as a mapping");
    bad(&p, &["validate", "--set", "l.0=5"])
        .only("--set l.0=5: param `l` is a list, not a mapping, so it has no `0` to set")
        .at(pos(yaml, "[1, 2]", "["));
    p.write("p.yaml", "fit: {delta: {lo: 1}}\n");
    bad(&p, &["validate", "-p", "p.yaml"])
        .only("p.yaml: param `fit.delta` is a number (0.5), not a mapping, so it has no `lo` to set")
        .at(pos(yaml, "0.5", "0.5"));
    // Replacing a value whole, and filling a mapping, are fine.
    drover(&p, &["validate", "--set", "x=[1]", "--set", "fit.delta=2"]).expect_code(0);
}

#[test]
fn set_with_an_empty_name_or_a_number_out_of_range_is_an_error() {
    let yaml =
        "params:\n  x: 3\n  fit: {delta: 0.5}\nstages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n";
    let p = project(yaml);
    // `x.=1` made a param named ``; `x=1e999` made `x` null.
    for (set, message) in [
        ("x.=1", "--set `x.=1`: the name `x.` has an empty part"),
        ("fit..delta=1", "--set `fit..delta=1`: the name `fit..delta` has an empty part"),
        ("x=1e999", "--set `x=1e999`: number `1e999` is out of range"),
        ("fit.delta=[1, -1e999]", "--set `fit.delta=[1, -1e999]`: number `-1e999` is out of range"),
    ] {
        // The params mapping starts at its first key.
        bad(&p, &["validate", "--set", set]).only(message).at(pos(yaml, "x: 3", "x"));
    }
    // Text that is not YAML at all is still taken as a string.
    drover(&p, &["validate", "--set", "x=a: b: c"]).expect_code(0);
}

#[test]
fn set_nested_past_the_limit_is_an_error() {
    let yaml = "params:\n  x: 3\nstages:\n  raw:\n    op: read_table\n    with: {path: data.csv}\n";
    let p = project(yaml);
    let path = format!("x{}", ".a".repeat(5_000));
    let set = format!("{path}=1");
    bad(&p, &["validate", "--set", &set])
        .only(&format!("--set `{}...`: this nests 5001 levels deep; params nest at most 64", &set[..60]));
    let value = format!("x={}{}", "[".repeat(10_000), "]".repeat(10_000));
    bad(&p, &["validate", "--set", &value]).only("YAML nested more than 64 levels deep");
    // The value's levels count under its name: 1 + 63 is the most.
    let deepest = format!("x={}{}", "[".repeat(63), "]".repeat(63));
    drover(&p, &["validate", "--set", &deepest]).expect_code(0);
    let one_more = format!("x={}{}", "[".repeat(64), "]".repeat(64));
    bad(&p, &["validate", "--set", &one_more]).only("this nests 65 levels deep; params nest at most 64");
}

#[test]
fn param_too_deep_for_the_with_block_it_fills_is_an_error() {
    // Each is within the limit, but the param placed inside `with:` goes past it.
    let yaml = "params: {x: 0}\nstages:\n  s:\n    op: command\n    out: {o: blob}\n    with: {run: \"echo > ${out.o}\", env: {A: \"${params.x}\"}}\n";
    let p = project(yaml);
    p.write("params.yaml", &format!("x: {}{}\n", "[".repeat(63), "]".repeat(63)));
    bad(&p, &["validate", "-p", "params.yaml"])
        .error("`with:` nests more than 64 levels deep once its `${params...}` are filled in")
        .stage("s")
        .at(pos(yaml, "{run", "{"));
}

#[test]
fn target_naming_no_stage_suggests_the_nearest() {
    let yaml = "stages:\n  train:\n    op: read_table\n    with: {path: data.csv}\n";
    let p = project(yaml);
    for cmd in ["plan", "run"] {
        let report = bad(&p, &[cmd, "--target", "trian"]);
        assert_eq!(report.errors.len(), 1, "{}", report.text);
        let e = &report.errors[0];
        assert!(e.message.contains("--target trian: no such stage"), "{}", report.text);
        e.help("did you mean `train`?");
    }
}

// ---------------------------------------------------------------------------------------------
// All errors at once

#[test]
fn several_errors_are_reported_at_once_sorted_by_position() {
    // Errors found while reading the file (keys) and while planning (ops, refs, types) interleave
    // in the file; the report lists them in file order.
    let yaml = "\
pipeline: demo
stages:
  raw:
    op: read_tabel
    with: {path: data.csv}
  model:
    op: command
    out: {weights: blob}
    with: {run: \"echo > ${out.weights}\"}
  s:
    op: sample
    in: {table: model.weights}
    with: {n: 5}
  pick:
    op: select
    in: {table: raw}
    colums: [a]
  last:
    op: command
    deps: [../no-such-dir-beside-the-project/dep.txt]
    timeout: soon
    out: {o: blob}
    with: {run: \"echo > ${out.o}\"}
";
    let p = project(yaml);
    let report = bad(&p, &["validate"]);
    report.count(5);
    let expected = [
        pos(yaml, "read_tabel", "read_tabel"),
        pos(yaml, "model.weights}", "model.weights"),
        pos(yaml, "colums", "colums"),
        pos(yaml, "../no-such-dir", "../no-such-dir"),
        pos(yaml, "soon", "soon"),
    ];
    report.error("unknown op `read_tabel`").at(expected[0]);
    report.error("expected table, got blob").at(expected[1]);
    report.error("unknown stage key `colums`").at(expected[2]);
    report.error("dep file `../no-such-dir-beside-the-project/dep.txt` not found").at(expected[3]);
    report.error("`timeout` must be a positive duration").at(expected[4]);
    assert_eq!(report.positions(), expected, "sorted by position\n{}", report.text);
}

// ---------------------------------------------------------------------------------------------
// Run failures: exit 1 for a stage, 3 for the environment

#[test]
fn failing_stage_exits_1_with_its_last_output_and_skips_only_its_dependents() {
    let yaml = "\
stages:
  bad:
    op: command
    out: {o: blob}
    with: {run: \"for i in $(seq -w 1 40); do echo line$i; done; exit 3\"}
  after:
    op: command
    in: {x: bad.o}
    out: {o: blob}
    with: {run: \"cp ${in.x} ${out.o}\"}
  good:
    op: command
    out: {o: blob}
    with: {run: \"echo fine > ${out.o}\"}
";
    let p = project(yaml);
    let out = drover(&p, &["run"]);
    out.expect_code(1);
    assert!(out.stderr.contains("FAILED  bad"), "names the stage\n{}", out.stderr);
    assert!(out.stderr.contains("exited with status 3"), "says how it failed\n{}", out.stderr);
    assert!(out.stderr.contains("line40"), "shows the last lines of its output\n{}", out.stderr);
    assert!(!out.stderr.contains("line01"), "only the last lines\n{}", out.stderr);
    assert!(out.stderr.contains("1 failed, 1 skipped"), "the dependent is skipped\n{}", out.stderr);
    assert!(!out.stderr.contains("ran     after"), "{}", out.stderr);

    // The independent branch ran and stored its output; the dependent has none.
    let good = drover(&p, &["show", "good"]);
    good.expect_code(0);
    assert!(good.stdout.contains("fine"), "{}", good.all());
    bad(&p, &["show", "after"]).errors[0].help("drover run");

    let last = drover(&p, &["runs", "last"]);
    last.expect_code(0);
    let line = |stage: &str| {
        last.stdout.lines().find(|l| l.split_whitespace().nth(1) == Some(stage)).unwrap_or_default().to_string()
    };
    assert!(line("bad").trim_start().starts_with("failed"), "{}", last.stdout);
    assert!(line("after").trim_start().starts_with("skipped"), "{}", last.stdout);
    assert!(line("good").trim_start().starts_with("ran"), "{}", last.stdout);
}

#[test]
fn cannot_spawn_is_an_environment_failure_exits_3_and_is_not_cached() {
    let yaml = "stages:\n  good:\n    op: command\n    out: {o: blob}\n    with: {run: \"echo fine > ${out.o}\"}\n";
    let p = project(yaml);
    let out = p.cmd(&["run"]).env("PATH", "/nonexistent").output().expect("run drover");
    let out = Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_no_panic(&out);
    out.expect_code(3);
    assert!(out.stderr.contains("good") && out.stderr.contains("cannot start"), "{}", out.stderr);

    // With `sh` back, the stage runs: the environment failure was not cached.
    let again = drover(&p, &["run"]);
    again.expect_code(0);
    assert!(again.stderr.contains("ran     good"), "{}", again.stderr);
}

#[test]
fn store_that_cannot_be_created_exits_3() {
    let yaml = "stages:\n  good:\n    op: command\n    out: {o: blob}\n    with: {run: \"echo fine > ${out.o}\"}\n";
    let p = project(yaml);
    p.write("store", "a file where the store directory should be");
    let out = drover(&p, &["run", "--store", "store"]);
    out.expect_code(3);
    assert!(out.stderr.contains("cannot open store"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------------
// Metrics and notifications

#[test]
fn metrics_naming_what_a_stage_does_not_have_are_errors_at_their_place() {
    let yaml = r#"stages:
  m:
    op: command
    with: { run: "echo x > ${out.out}" }
    out: { out: { type: table, columns: { accuracy: Float64, name: Utf8 } }, log: blob }
    metrics: { table: lg, fail_if: ["accuracy falls"] }
"#;
    let p = project(yaml);
    let r = bad(&p, &["validate"]);
    r.count(2);
    r.error("metrics: the stage has no output `lg`")
        .stage("m")
        .at(pos(yaml, "table: lg", "lg"))
        .help("table outputs: `out`");
    r.error("metrics.fail_if: `accuracy falls` has no comparison (<, <=, > or >=)")
        .at(pos(yaml, "\"accuracy falls\"", "\""))
        .help("`accuracy < -0.01`, `loss > 5%`");

    let yaml = r#"stages:
  m:
    op: command
    with: { run: "echo x > ${out.out}" }
    out: { out: { type: table, columns: { accuracy: Float64, name: Utf8 } } }
    metrics: { columns: [accurcy, name], fail_if: ["acuracy < -0.01"] }
"#;
    let p = project(yaml);
    let r = bad(&p, &["validate"]);
    r.count(3);
    r.error("metrics: output `out` has no column `accurcy`")
        .at(pos(yaml, "accurcy,", "a"))
        .help("did you mean `accuracy`?");
    r.error("metrics: column `name` of `out` holds Utf8, not numbers").at(pos(yaml, "name]", "n")).help("`key:`");
    r.error("metrics.fail_if: `acuracy` names no metric column").at(pos(yaml, "\"acuracy", "\""));

    let yaml = "stages:\n  m:\n    op: command\n    with: { run: \"true\" }\n    metrics: 3\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("`metrics` must be a list of columns or a mapping; found an integer")
        .at(pos(yaml, "3\n", "3"));
}

#[test]
fn a_notify_section_with_a_secret_written_in_it_is_an_error_at_its_line() {
    let yaml = "notify:\n  webhook: { url_env: \"https://hooks.slack.com/services/T0/B0/XYZ\" }\nstages:\n  a: { op: command, with: { run: \"true\" } }\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("`notify.webhook.url_env` must name an environment variable; found `https://hooks.slack.com/services/T0/B0/XYZ`")
        .at(pos(yaml, "\"https:", "\""))
        .help("never written here");

    let yaml = "notify:\n  webhook: { url_env: HOOK }\n  on: [failure, regresion]\nstages:\n  a: { op: command, with: { run: \"true\" } }\n";
    let p = project(yaml);
    bad(&p, &["validate"]).only("`notify`: unknown variant `regresion`").at(pos(yaml, "regresion", "r"));

    let yaml = "notify:\n  webhok: { url_env: HOOK }\nstages:\n  a: { op: command, with: { run: \"true\" } }\n";
    let p = project(yaml);
    bad(&p, &["validate"])
        .only("`notify`: unknown setting `webhok`")
        .at(pos(yaml, "webhok", "w"))
        .help("did you mean `webhook`?");
}
