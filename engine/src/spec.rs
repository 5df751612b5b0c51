//! `PipelineSpec`: the pipeline file as written, with source spans, before anything is checked
//! against ops or other stages.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::diag::{Diags, PipelineErrors, SourceFile, did_you_mean, line_col, list_names};
use crate::op::{Column, PortType, SectionDecl, TableSchema};
use crate::yaml::{self, MAX_DEPTH, Node, NodeKind, Span};

/// Pipeline and params files are read up to this size (64 MiB). The largest pipeline the
/// benchmarks plan, 100,000 stages, is a 20 MiB file; `/dev/zero` given as a file is an error
/// rather than reading until memory runs out.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Keys allowed at the top of a pipeline file.
pub const TOP_KEYS: &[&str] = &["pipeline", "description", "params", "seed", "resources", "stages"];
/// Keys allowed in a stage.
pub const STAGE_KEYS: &[&str] =
    &["op", "description", "in", "with", "out", "deps", "matrix", "retries", "timeout", "resources", "seed", "metrics"];

/// A pipeline as written.
#[derive(Debug)]
pub struct PipelineSpec {
    pub name: String,
    pub file: PathBuf,
    /// The directory commands run in and relative paths resolve against.
    pub dir: PathBuf,
    pub source: SourceFile,
    /// The `params:` mapping (a `Null` node when absent), after overrides.
    pub params: Node,
    /// The top-level sections declared by parts outside the engine (`llms:`), by name, after
    /// overrides; a declared section the file leaves out is absent, unless an override made it.
    pub sections: BTreeMap<String, Node>,
    pub seed: u64,
    /// Capacity of each named resource (`gpu: 1`).
    pub resources: BTreeMap<String, u64>,
    pub stages: Vec<StageSpec>,
    /// Problems found while reading the file; planning adds its own and reports all at once.
    pub errors: Vec<crate::diag::PipelineError>,
}

/// A stage as written.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub name: String,
    pub name_span: Span,
    pub op: String,
    pub op_span: Span,
    pub inputs: Vec<InputSpec>,
    /// The `with:` block, not yet interpolated.
    pub with: Option<Node>,
    pub outputs: Vec<OutputSpec>,
    pub deps: Vec<(String, Span)>,
    /// Matrix axes in source order: name, span, and the value list (maybe a `${params.x}`).
    pub matrix: Vec<(String, Span, Node)>,
    /// The `matrix` key (where an expansion that is too large is reported).
    pub matrix_span: Span,
    pub retries: u32,
    pub timeout: Option<Duration>,
    pub resources: BTreeMap<String, u64>,
    pub seed: Option<u64>,
    /// Entries of declared sections that stages may carry (a stage's `slurm:`), by name: not
    /// in the key.
    pub sections: BTreeMap<String, Node>,
    /// `metrics:`: which columns of which output table are metrics (see [`crate::metrics`]).
    pub metrics: Option<crate::metrics::MetricsSpec>,
}

#[derive(Debug, Clone)]
pub struct InputSpec {
    pub port: String,
    pub port_span: Span,
    /// `stage`, `stage.port`, `stage[*]`, `stage[k=v]`, maybe with `${matrix.k}`.
    pub reference: String,
    pub ref_span: Span,
    /// Written as a YAML list (`[a, b.out, c[*]]`): every item's artifacts, in order, as one
    /// list input. Empty for a single reference.
    pub list: Vec<(String, Span)>,
}

#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub port: String,
    pub port_span: Span,
    pub ty: PortType,
    /// For tables: the extension of the file an op is asked to write (`parquet`, `csv`, `jsonl`).
    pub format: Option<String>,
}

/// Overrides of params from the command line.
#[derive(Debug, Default, Clone)]
pub struct ParamOverrides {
    /// `-p params.yaml` files, in order (later wins).
    pub files: Vec<PathBuf>,
    /// `--set a.b=value`, in order (later wins; after the files).
    pub sets: Vec<String>,
}

/// Reads and parses a pipeline file. Every problem in the file is reported at once.
pub fn load(path: &Path, overrides: &ParamOverrides, sections: &[SectionDecl]) -> Result<PipelineSpec, PipelineErrors> {
    // The store and relative paths are beside the pipeline file: it must be a file, not a pipe.
    let text = match read_text(path, false) {
        Ok(t) => t,
        Err(e) => {
            let source = SourceFile { name: path.display().to_string(), text: Arc::new(String::new()) };
            let mut d = Diags::new(source);
            let help = e.help.unwrap_or_else(|| "pass the file to run, or create drover.yaml in this directory".into());
            d.error(
                None,
                Span::default(),
                format!("cannot read pipeline file {}: {}", path.display(), e.why),
                "",
                Some(help),
            );
            return Err(d.finish().unwrap_err());
        }
    };
    parse_str(path, text, overrides, sections)
}

/// Why a pipeline or params file could not be read, and what to do about it.
struct Unreadable {
    why: String,
    help: Option<String>,
}

impl From<std::io::Error> for Unreadable {
    fn from(e: std::io::Error) -> Unreadable {
        Unreadable { why: e.to_string(), help: None }
    }
}

/// Reads a pipeline or params file: UTF-8 text of at most [`MAX_FILE_BYTES`], from a regular
/// file or a device (or, where `pipe_ok`, a pipe such as bash's `<(...)`), without the byte
/// order mark some editors put first (it would become part of the first key).
fn read_text(path: &Path, pipe_ok: bool) -> Result<String, Unreadable> {
    let kind = std::fs::metadata(path)?.file_type();
    if kind.is_dir() {
        let inside = path.join("drover.yaml");
        let help = match inside.is_file() {
            true => format!("pass the YAML file itself, e.g. {}", inside.display()),
            false => "pass the YAML file itself".into(),
        };
        return Err(Unreadable { why: "it is a directory".into(), help: Some(help) });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        // Opening a FIFO waits for a writer: refuse it before that.
        if kind.is_fifo() && !pipe_ok {
            return Err(Unreadable {
                why: "it is a named pipe (FIFO), not a regular file".into(),
                help: Some(
                    "write the pipeline to a file: its store (`.drover/`) and relative paths are beside it".into(),
                ),
            });
        }
        if kind.is_socket() {
            return Err(Unreadable { why: "it is a socket, not a regular file".into(), help: None });
        }
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Unreadable {
            why: format!("it is larger than {} MiB", MAX_FILE_BYTES >> 20),
            help: Some(format!(
                "drover reads pipeline and params files of at most {} MiB ({MAX_FILE_BYTES} bytes); is this the right file?",
                MAX_FILE_BYTES >> 20
            )),
        });
    }
    let mut text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let (line, col) = line_col(std::str::from_utf8(valid).unwrap_or_default(), valid.len());
        Unreadable {
            why: format!("it is not UTF-8 text (a bad byte at line {line}, column {col})"),
            help: Some("save the file as UTF-8".into()),
        }
    })?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

/// Parses pipeline text as if read from `path`.
pub fn parse_str(
    path: &Path,
    text: String,
    overrides: &ParamOverrides,
    sections: &[SectionDecl],
) -> Result<PipelineSpec, PipelineErrors> {
    let source = SourceFile { name: path.display().to_string(), text: Arc::new(text) };
    let mut d = Diags::new(source.clone());
    let (root, yaml_errors) = yaml::parse_lenient(&source.text);
    // Keys of `stages:` are stage names: say so when one is duplicated.
    let stage_keys: Vec<Span> = root
        .as_ref()
        .and_then(|r| r.get("stages"))
        .and_then(Node::as_map)
        .map(|m| m.iter().map(|(k, _)| k.span).collect())
        .unwrap_or_default();
    for e in yaml_errors {
        let message = match e.message.strip_prefix("duplicate key ") {
            Some(name) if stage_keys.contains(&e.span) => format!("duplicate stage name {name}"),
            _ => e.message,
        };
        d.error(None, e.span, message, "here", e.help);
    }
    let Some(mut root) = root else {
        return Err(d.finish().unwrap_err());
    };
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let default_name = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "pipeline".into());
    let mut spec = PipelineSpec {
        name: default_name,
        file: path.to_path_buf(),
        dir,
        source,
        params: Node { span: Span::default(), kind: NodeKind::Null },
        sections: BTreeMap::new(),
        seed: 0,
        resources: BTreeMap::new(),
        stages: Vec::new(),
        errors: Vec::new(),
    };
    let Some(entries) = root.as_map() else {
        d.error(
            None,
            root.span,
            format!("a pipeline file is a mapping with `stages:`; found {}", root.type_name()),
            "expected a mapping",
            Some("start with `pipeline: NAME` and `stages:`".into()),
        );
        return Err(d.finish().unwrap_err());
    };
    for (k, v) in entries {
        match k.as_str().unwrap_or("") {
            "pipeline" => match v.as_str() {
                Some(n) if valid_name(n) => spec.name = n.to_string(),
                _ => d.error(
                    None,
                    v.span,
                    "`pipeline` must be a name of letters, digits, `_` and `-`",
                    "invalid name",
                    None,
                ),
            },
            "description" => {}
            "params" => {
                if !matches!(v.kind, NodeKind::Map(_) | NodeKind::Null) {
                    d.error(
                        None,
                        v.span,
                        format!("`params` must be a mapping; found {}", v.type_name()),
                        "expected a mapping",
                        None,
                    );
                } else {
                    spec.params = v.clone();
                }
            }
            "seed" => spec.seed = expect_u64(&mut d, None, v, "seed").unwrap_or(0),
            "resources" => spec.resources = parse_resources(&mut d, None, v),
            "stages" => {}
            other => match sections.iter().find(|sec| sec.name == other) {
                Some(sec)
                    if !(matches!(v.kind, NodeKind::Map(_) | NodeKind::Null) || sec.scalar && v.as_str().is_some()) =>
                {
                    d.error(
                        None,
                        v.span,
                        format!("`{other}` must be {}; found {}", sec.holds, v.type_name()),
                        "expected a mapping",
                        Some(format!("e.g. `{}`", sec.example)),
                    )
                }
                Some(_) => {
                    spec.sections.insert(other.to_string(), v.clone());
                }
                None => {
                    let keys = TOP_KEYS.iter().copied().chain(sections.iter().map(|s| s.name));
                    d.error(
                        None,
                        k.span,
                        format!("unknown top-level key `{other}`"),
                        "unknown key",
                        Some(
                            did_you_mean(other, keys.clone())
                                .unwrap_or_else(|| format!("valid keys: {}", list_names(keys))),
                        ),
                    )
                }
            },
        }
    }
    // `--set NAME.…` where NAME is a declared section goes to that section; the rest are params.
    let section_of = |set: &str| {
        let head = set.trim_start().split(['.', '=']).next().unwrap_or("");
        sections.iter().find(|sec| sec.name == head && set.trim_start()[head.len()..].starts_with('.'))
    };
    let param_sets: Vec<&String> = overrides.sets.iter().filter(|s| section_of(s).is_none()).collect();
    apply_overrides(&mut d, &mut spec.params, &overrides.files, &param_sets);
    for set in overrides.sets.iter() {
        if let Some(sec) = section_of(set) {
            let node = spec
                .sections
                .entry(sec.name.to_string())
                .or_insert(Node { span: Span::default(), kind: NodeKind::Null });
            apply_section_override(&mut d, sec.name, node, set);
        }
    }
    match root.get_mut("stages") {
        None => d.error(
            None,
            Span::new(root.span.offset, 1),
            "the pipeline has no `stages:`",
            "expected `stages:`",
            Some("add `stages:` with at least one stage".into()),
        ),
        Some(stages) => match stages.as_map_mut() {
            Some(entries) => {
                let mut seen = std::collections::HashSet::new();
                for (k, v) in entries.iter_mut() {
                    if !seen.insert(k.key_text()) {
                        continue; // a duplicate, reported by the YAML layer
                    }
                    if let Some(stage) = parse_stage(&mut d, k, v, sections) {
                        spec.stages.push(stage);
                    }
                }
            }
            None => d.error(
                None,
                stages.span,
                format!("`stages` must be a mapping of stage name to stage; found {}", stages.type_name()),
                "expected a mapping",
                None,
            ),
        },
    }
    spec.errors = d.into_errors();
    Ok(spec)
}

/// Stage and pipeline names: letters, digits, `_` and `-` (dots and brackets have meaning in
/// references).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_stage(d: &mut Diags, key: &Node, v: &mut Node, sections: &[SectionDecl]) -> Option<StageSpec> {
    let name = key.key_text();
    if !valid_name(&name) {
        d.error(
            None,
            key.span,
            format!("invalid stage name `{name}`"),
            "invalid name",
            Some("use letters, digits, `_` and `-` (`.` and `[` have meaning in references)".into()),
        );
        return None;
    }
    let st = Some(name.as_str());
    let has_op = v.get("op").is_some();
    let (span, type_name) = (v.span, v.type_name());
    // The stage's nodes are moved into the spec, not copied (10,000 stages' `with:` blocks).
    let Some(entries) = v.as_map_mut() else {
        d.error(
            st,
            span,
            format!("a stage is a mapping with at least `op:`; found {type_name}"),
            "expected a mapping",
            None,
        );
        return None;
    };
    let mut stage = StageSpec {
        name: name.clone(),
        name_span: key.span,
        op: String::new(),
        op_span: key.span,
        inputs: Vec::new(),
        with: None,
        outputs: Vec::new(),
        deps: Vec::new(),
        matrix: Vec::new(),
        matrix_span: key.span,
        retries: 0,
        timeout: None,
        resources: BTreeMap::new(),
        seed: None,
        sections: BTreeMap::new(),
        metrics: None,
    };
    let stage_keys =
        || STAGE_KEYS.iter().copied().chain(sections.iter().filter(|s| s.stage_schema.is_some()).map(|s| s.name));
    for (k, v) in entries {
        let key = k.as_str().unwrap_or("");
        match key {
            "op" => match v.as_str() {
                Some(op) => {
                    stage.op = op.to_string();
                    stage.op_span = v.span;
                }
                None => d.error(
                    st,
                    v.span,
                    format!("`op` must be an op name; found {}", v.type_name()),
                    "expected a name",
                    Some("run `drover ops` to list the ops".into()),
                ),
            },
            "description" => {}
            "in" => match v.as_map() {
                Some(ins) => {
                    for (port, r) in ins {
                        let list: Option<Vec<(String, Span)>> = r
                            .as_seq()
                            .filter(|items| !items.is_empty())
                            .and_then(|items| items.iter().map(|i| Some((i.as_str()?.to_string(), i.span))).collect());
                        match (r.as_str(), list) {
                            (Some(reference), _) => stage.inputs.push(InputSpec {
                                port: port.key_text(),
                                port_span: port.span,
                                reference: reference.to_string(),
                                ref_span: r.span,
                                list: Vec::new(),
                            }),
                            (None, Some(list)) => stage.inputs.push(InputSpec {
                                port: port.key_text(),
                                port_span: port.span,
                                reference: String::new(),
                                ref_span: r.span,
                                list,
                            }),
                            (None, None) => d.error(
                                st,
                                r.span,
                                format!(
                                    "input `{}` must name a stage (`stage`, `stage.port`, `stage[*]`) or list stages; found {}",
                                    port.key_text(),
                                    r.type_name()
                                ),
                                "expected a stage reference",
                                None,
                            ),
                        }
                    }
                }
                None => d.error(
                    st,
                    v.span,
                    format!("`in` must map port names to stages; found {}", v.type_name()),
                    "expected a mapping",
                    Some("e.g. `in: { data: points }`".into()),
                ),
            },
            "with" => {
                if matches!(v.kind, NodeKind::Map(_) | NodeKind::Null) {
                    stage.with = Some(v.take());
                } else {
                    d.error(
                        st,
                        v.span,
                        format!("`with` must be a mapping of params; found {}", v.type_name()),
                        "expected a mapping",
                        None,
                    );
                }
            }
            "out" => match v.as_map() {
                Some(outs) => {
                    for (port, ty) in outs {
                        if let Some(o) = parse_output(d, st, port, ty) {
                            stage.outputs.push(o);
                        }
                    }
                }
                None => d.error(
                    st,
                    v.span,
                    format!("`out` must map port names to types; found {}", v.type_name()),
                    "expected a mapping",
                    Some("e.g. `out: { metrics: table }`".into()),
                ),
            },
            "deps" => match v.as_seq() {
                Some(items) => {
                    for item in items {
                        match item.as_str() {
                            Some(p) => stage.deps.push((p.to_string(), item.span)),
                            None => d.error(
                                st,
                                item.span,
                                format!("a dep is a file path; found {}", item.type_name()),
                                "expected a path",
                                None,
                            ),
                        }
                    }
                }
                None => d.error(
                    st,
                    v.span,
                    format!("`deps` must be a list of file paths; found {}", v.type_name()),
                    "expected a list",
                    None,
                ),
            },
            "matrix" => match v.as_map_mut() {
                Some(axes) if !axes.is_empty() => {
                    stage.matrix_span = k.span;
                    for (axis, values) in axes.iter_mut() {
                        stage.matrix.push((axis.key_text(), axis.span, values.take()));
                    }
                }
                _ => d.error(
                    st,
                    v.span,
                    "`matrix` must map axis names to non-empty lists of values",
                    "expected a mapping of lists",
                    Some("e.g. `matrix: { size: [1, 2, 4] }`".into()),
                ),
            },
            "retries" => match expect_u64(d, st, v, "retries").map(u32::try_from) {
                Some(Ok(n)) => stage.retries = n,
                Some(Err(_)) => d.error(
                    st,
                    v.span,
                    format!("`retries` must be at most {}; found {}", u32::MAX, v.describe()),
                    "too many",
                    None,
                ),
                None => {}
            },
            "timeout" => stage.timeout = parse_duration(d, st, v),
            "resources" => stage.resources = parse_resources(d, st, v),
            "seed" => stage.seed = expect_u64(d, st, v, "seed"),
            "metrics" => stage.metrics = crate::metrics::parse_spec(d, st, k.span, v),
            other => match sections.iter().find(|sec| sec.name == other && sec.stage_schema.is_some()) {
                Some(sec) if !matches!(v.kind, NodeKind::Map(_) | NodeKind::Null) => d.error(
                    st,
                    v.span,
                    format!("`{other}` must be a mapping of settings; found {}", v.type_name()),
                    "expected a mapping",
                    Some(format!("e.g. `{}`", sec.example)),
                ),
                Some(_) => {
                    stage.sections.insert(other.to_string(), v.take());
                }
                None => d.error(
                    st,
                    k.span,
                    format!("unknown stage key `{other}`"),
                    "unknown key",
                    Some(
                        did_you_mean(other, stage_keys())
                            .unwrap_or_else(|| format!("valid keys: {}", list_names(stage_keys()))),
                    ),
                ),
            },
        }
    }
    if stage.op.is_empty() && !has_op {
        d.error(
            st,
            key.span,
            "stage has no `op:`",
            "missing `op`",
            Some("add e.g. `op: command` (run `drover ops` for the list)".into()),
        );
    }
    Some(stage)
}

fn parse_output(d: &mut Diags, st: Option<&str>, port: &Node, ty: &Node) -> Option<OutputSpec> {
    let name = port.key_text();
    if !valid_name(&name) {
        d.error(
            st,
            port.span,
            format!("invalid output port name `{name}`"),
            "invalid name",
            Some("port names are letters, digits, `_` and `-`; outputs are files drover places, not paths".into()),
        );
        return None;
    }
    let (kind, kind_span, format, columns) = match &ty.kind {
        NodeKind::Str(s) => (s.clone(), ty.span, None, None),
        NodeKind::Map(_) => {
            let kind = ty.get("type").and_then(Node::as_str).unwrap_or("").to_string();
            let format = ty.get("format").and_then(Node::as_str).map(str::to_string);
            let columns = ty.get("columns").and_then(Node::as_map).map(|cols| {
                cols.iter().map(|(c, t)| Column::new(c.key_text(), t.as_str().unwrap_or("any"))).collect::<Vec<_>>()
            });
            (kind, ty.get("type").map_or(ty.span, |n| n.span), format, columns)
        }
        _ => (String::new(), ty.span, None, None),
    };
    let ty = match kind.as_str() {
        "table" => PortType::Table(TableSchema { columns }),
        "blob" => PortType::Blob,
        "dir" => PortType::Dir,
        other => {
            let help = did_you_mean(other, ["table", "blob", "dir"])
                .unwrap_or_else(|| "an output is `table`, `blob` or `dir` (or `{ type: table, format: csv }`)".into());
            d.error(
                st,
                kind_span,
                format!("output `{name}`: unknown type `{other}`"),
                "expected table, blob or dir",
                Some(help),
            );
            PortType::Blob // keeps `${out.NAME}` valid, so one typo is one error
        }
    };
    if let Some(f) = &format
        && !matches!(f.as_str(), "parquet" | "csv" | "jsonl")
    {
        d.error(
            st,
            kind_span,
            format!("output `{name}`: unknown table format `{f}`"),
            "bad format",
            Some("formats: parquet, csv, jsonl (all are stored as Parquet)".into()),
        );
    }
    Some(OutputSpec { port: name, port_span: port.span, ty, format })
}

fn expect_u64(d: &mut Diags, st: Option<&str>, v: &Node, what: &str) -> Option<u64> {
    match v.kind {
        NodeKind::Int(i) if i >= 0 => Some(i as u64),
        _ => {
            d.error(
                st,
                v.span,
                format!("`{what}` must be a non-negative integer; found {}", v.describe()),
                "expected an integer",
                None,
            );
            None
        }
    }
}

fn parse_resources(d: &mut Diags, st: Option<&str>, v: &Node) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    match v.as_map() {
        Some(entries) => {
            for (k, n) in entries {
                if let Some(x) = expect_u64(d, st, n, &format!("resources.{}", k.key_text())) {
                    out.insert(k.key_text(), x);
                }
            }
        }
        None => d.error(
            st,
            v.span,
            "`resources` must map resource names to counts",
            "expected a mapping",
            Some("e.g. `resources: { gpu: 1 }`".into()),
        ),
    }
    out
}

/// `90`, `90s`, `10m`, `2h`, `1h30m`.
fn parse_duration(d: &mut Diags, st: Option<&str>, v: &Node) -> Option<Duration> {
    let parsed = match &v.kind {
        NodeKind::Int(i) if *i > 0 => Some(Duration::from_secs(*i as u64)),
        NodeKind::Float(f) if *f > 0.0 => Duration::try_from_secs_f64(*f).ok(),
        NodeKind::Str(s) => parse_duration_str(s),
        _ => None,
    };
    if parsed.is_none() {
        d.error(
            st,
            v.span,
            format!("`timeout` must be a positive duration; found {}", v.describe()),
            "expected a duration",
            Some("e.g. `30s`, `10m`, `2h`, `1h30m`, or seconds as a number".into()),
        );
    }
    parsed
}

pub fn parse_duration_str(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        total += n * match c {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            'd' => 86400.0,
            _ => return None,
        };
        any = true;
    }
    if !num.is_empty() {
        total += num.parse::<f64>().ok()?;
        any = true;
    }
    // `99999999999999999999d` does not fit in a `Duration`: not a duration, rather than a panic.
    (any && total > 0.0).then(|| Duration::try_from_secs_f64(total).ok()).flatten()
}

fn apply_overrides(d: &mut Diags, params: &mut Node, files: &[PathBuf], sets: &[&String]) {
    for file in files {
        // A pipe is fine here: `-p <(make-params)`.
        let text = match read_text(file, true) {
            Ok(t) => t,
            Err(e) => {
                d.error(
                    None,
                    params.span,
                    format!("cannot read params file {}: {}", file.display(), e.why),
                    "params defined here",
                    e.help,
                );
                continue;
            }
        };
        match yaml::parse(&text) {
            Ok(node) => {
                let mut node = node;
                set_spans(&mut node, params.span);
                merge(d, params, node, &file.display().to_string(), "");
            }
            Err(errs) => {
                for e in errs {
                    let (line, col) = line_col(&text, e.span.offset);
                    d.error(
                        None,
                        params.span,
                        format!("params file {}:{line}:{col}: {}", file.display(), e.message),
                        "params defined here",
                        e.help,
                    );
                }
            }
        }
    }
    for set in sets {
        let parsed = split_set(set).and_then(|(segs, value)| Ok((set_value(value, segs.len())?, segs)));
        let (value, segs) = match parsed {
            Ok(parsed) => parsed,
            Err((message, help)) => {
                d.error(None, params.span, format!("--set `{}`: {message}", shorten(set)), "params defined here", help);
                continue;
            }
        };
        // Build `{a: {b: value}}` and merge it like a params file.
        let mut node = value;
        for seg in segs.iter().rev() {
            node = Node {
                span: params.span,
                kind: NodeKind::Map(vec![(Node { span: params.span, kind: NodeKind::Str(seg.to_string()) }, node)]),
            };
        }
        set_spans(&mut node, params.span);
        merge(d, params, node, &format!("--set {set}"), "");
    }
}

/// A problem with one `--set`: the message and a hint.
type SetError = (String, Option<String>);

/// `a.b=VALUE` as its path of names and its value's text. Every name must be there (`a.=1`
/// would create a param named ``).
fn split_set(set: &str) -> Result<(Vec<&str>, &str), SetError> {
    let example = || Some("e.g. `--set fit.delta=0.01`".to_string());
    let Some((path, value)) = set.split_once('=') else {
        return Err(("expected `name=value`".into(), example()));
    };
    let path = path.trim();
    let segs: Vec<&str> = path.split('.').collect();
    if segs.iter().any(|s| s.trim().is_empty()) {
        return Err((format!("the name `{path}` has an empty part"), example()));
    }
    Ok((segs, value))
}

/// A `--set` value: YAML (`0.1`, `[1, 2]`, `{a: 1}`), or the text itself when it is not YAML at
/// all (`--set msg=a: b`). A value that is YAML but breaks a rule (a number out of range, too
/// deep) is an error. `levels` is how deep the value is placed: the names of its path.
fn set_value(text: &str, levels: usize) -> Result<Node, SetError> {
    let node = match yaml::parse_lenient(text) {
        (Some(node), errs) if errs.is_empty() => node,
        (None, errs) if errs.iter().all(|e| e.syntax) => {
            Node { span: Span::default(), kind: NodeKind::Str(text.into()) }
        }
        (_, errs) => {
            let e = errs.into_iter().next().expect("a tree is missing only with an error");
            return Err((e.message, e.help));
        }
    };
    let (_, height) = node.size_and_height();
    if levels + height > MAX_DEPTH {
        let message = format!("this nests {} levels deep; params nest at most {MAX_DEPTH}", levels + height);
        return Err((message, None));
    }
    Ok(node)
}

/// A `--set` as a message quotes it: long ones (a path thousands of names long) cut short.
fn shorten(set: &str) -> String {
    match set.char_indices().nth(60) {
        Some((end, _)) => format!("{}...", &set[..end]),
        None => set.to_string(),
    }
}

/// `--set NAME.ENTRY=MAPPING` replaces an entry of a section (or adds one), as `--set
/// llms.default={...}` replaces an endpoint; `--set NAME.ENTRY.FIELD=VALUE` sets one field. What
/// the fields mean is checked by the section's owner.
fn apply_section_override(d: &mut Diags, name: &str, section: &mut Node, set: &str) {
    let (path, value) = set.split_once('=').unwrap_or((set, ""));
    let segs: Vec<&str> = path.trim().split('.').skip(1).collect();
    if segs.is_empty() || segs.iter().any(|s| s.is_empty()) || !set.contains('=') {
        d.error(
            None,
            section.span,
            format!("--set `{set}`: expected `{name}.ENTRY=MAPPING` or `{name}.ENTRY.FIELD=VALUE`"),
            format!("{name} defined here"),
            Some(format!("e.g. `--set {name}.default.FIELD=VALUE`")),
        );
        return;
    }
    let mut value = match set_value(value, segs.len()) {
        Ok(value) => value,
        Err((message, help)) => {
            d.error(
                None,
                section.span,
                format!("--set `{}`: {message}", shorten(set)),
                format!("{name} defined here"),
                help,
            );
            return;
        }
    };
    let span = section.span;
    set_spans(&mut value, span);
    let mut node = &mut *section;
    for seg in &segs {
        if !matches!(node.kind, NodeKind::Map(_)) {
            node.kind = NodeKind::Map(Vec::new());
        }
        let NodeKind::Map(entries) = &mut node.kind else { unreachable!("made a map above") };
        let at = match entries.iter().position(|(k, _)| k.key_text() == *seg) {
            Some(i) => i,
            None => {
                let key = Node { span, kind: NodeKind::Str(seg.to_string()) };
                entries.push((key, Node { span, kind: NodeKind::Null }));
                entries.len() - 1
            }
        };
        node = &mut entries[at].1;
    }
    *node = value;
}

fn set_spans(node: &mut Node, span: Span) {
    node.span = span;
    match &mut node.kind {
        NodeKind::Seq(items) => items.iter_mut().for_each(|n| set_spans(n, span)),
        NodeKind::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            set_spans(k, span);
            set_spans(v, span);
        }),
        _ => {}
    }
}

/// Deep-merges `over` into `base`, the params mapping (or one inside it, at `path`). Overriding
/// a param that does not exist is an error (a typo would otherwise be silently ignored), and so
/// is setting fields inside a param that is not a mapping (`--set x.y=1` where `x: 3` would
/// otherwise silently replace `x`).
fn merge(d: &mut Diags, base: &mut Node, over: Node, origin: &str, path: &str) {
    let NodeKind::Map(over_entries) = over.kind else {
        base.kind = over.kind;
        return;
    };
    if matches!(base.kind, NodeKind::Null) {
        base.kind = NodeKind::Map(Vec::new());
    }
    let base_span = base.span;
    let NodeKind::Map(base_entries) = &mut base.kind else {
        unreachable!("merge is called on the params mapping and recurses only into mappings")
    };
    for (k, v) in over_entries {
        let name = k.key_text();
        let full = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
        match base_entries.iter_mut().find(|(bk, _)| bk.key_text() == name) {
            Some((_, bv)) => match (&v.kind, &bv.kind) {
                (NodeKind::Map(_), NodeKind::Map(_)) => merge(d, bv, v, origin, &full),
                (
                    NodeKind::Map(fields),
                    NodeKind::Bool(_) | NodeKind::Int(_) | NodeKind::Float(_) | NodeKind::Str(_) | NodeKind::Seq(_),
                ) => {
                    let field = fields.first().map_or(String::new(), |(f, _)| f.key_text());
                    let what = match bv.kind {
                        NodeKind::Seq(_) => bv.type_name().to_string(),
                        _ => format!("{} ({})", bv.type_name(), bv.describe()),
                    };
                    d.error(
                        None,
                        bv.span,
                        format!("{origin}: param `{full}` is {what}, not a mapping, so it has no `{field}` to set"),
                        "declared here",
                        Some(format!("set `{full}` itself (`--set {full}=VALUE`), or declare it as a mapping")),
                    );
                }
                _ => bv.kind = v.kind,
            },
            None => {
                let names: Vec<String> = base_entries.iter().map(|(k, _)| k.key_text()).collect();
                let help = did_you_mean(&name, names.iter().map(String::as_str)).unwrap_or_else(|| {
                    format!(
                        "declare it under `params:` first (params here: {})",
                        list_names(names.iter().map(String::as_str))
                    )
                });
                d.error(
                    None,
                    base_span,
                    format!("{origin}: there is no param `{name}` to override"),
                    "params defined here",
                    Some(help),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team_section() -> SectionDecl {
        SectionDecl {
            name: "team",
            holds: "a mapping of member name to settings",
            example: "team: { ann: { role: lead } }",
            schema: serde_json::json!({"type": "object"}),
            env: Some("TEAM"),
            stage_schema: None,
            check: None,
            scalar: false,
        }
    }

    #[test]
    fn a_declared_section_is_carried_and_overridden_generically() {
        let text = "team: { ann: { role: lead } }\nstages: { a: { op: x } }\n".to_string();
        let o = ParamOverrides { files: vec![], sets: vec!["team.ann.level=3".into(), "team.bob={role: dev}".into()] };
        let spec = parse_str(Path::new("p.yaml"), text, &o, &[team_section()]).unwrap();
        assert_eq!(
            spec.sections["team"].to_json(),
            serde_json::json!({"ann": {"role": "lead", "level": 3}, "bob": {"role": "dev"}})
        );
    }

    #[test]
    fn an_undeclared_section_is_an_unknown_key_and_a_malformed_one_says_what_it_holds() {
        // Problems of the file are kept on the spec, for the planner to report with its own.
        let errors = |text: &str| -> Vec<(String, Option<String>)> {
            let spec = parse_str(Path::new("p.yaml"), text.into(), &ParamOverrides::default(), &[team_section()])
                .expect("a tree");
            spec.errors.iter().map(|e| (e.message.clone(), e.help.clone())).collect()
        };
        assert_eq!(
            errors("teams: {}\nstages: {}\n"),
            [("unknown top-level key `teams`".to_string(), Some("did you mean `team`?".to_string()))]
        );
        assert_eq!(
            errors("team: 3\nstages: {}\n"),
            [(
                "`team` must be a mapping of member name to settings; found an integer".to_string(),
                Some("e.g. `team: { ann: { role: lead } }`".to_string())
            )]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_str("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration_str("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration_str("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration_str("10x"), None);
        assert_eq!(parse_duration_str(""), None);
    }

    #[test]
    fn set_overrides_nested_params_and_rejects_unknown_ones() {
        let text = "params: { fit: { delta: 1 } }\nstages: { a: { op: command } }\n".to_string();
        let o = ParamOverrides { files: vec![], sets: vec!["fit.delta=0.5".into()] };
        let spec = parse_str(Path::new("p.yaml"), text.clone(), &o, &[]).unwrap();
        assert_eq!(spec.params.get("fit").unwrap().get("delta").unwrap().kind, NodeKind::Float(0.5));
        let o = ParamOverrides { files: vec![], sets: vec!["fit.delat=0.5".into()] };
        let spec = parse_str(Path::new("p.yaml"), text, &o, &[]).unwrap();
        assert!(spec.errors[0].message.contains("no param `delat`"), "{:?}", spec.errors);
        assert_eq!(spec.errors[0].help.as_deref(), Some("did you mean `delta`?"));
    }
}
