//! `drover ops` and `drover schema`, both generated from the ops' own declarations.

use drover_engine::spec::{STAGE_KEYS, TOP_KEYS};
use drover_engine::{OpInfo, OpRegistry, PortDecl, Ports};
use serde_json::{Value, json};

pub fn print_ops(ops: &OpRegistry, as_json: bool) {
    let infos: Vec<OpInfo> = ops.iter().map(|o| o.info()).collect();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&infos).expect("infos serialise"));
        return;
    }
    for info in infos {
        println!("{} (v{}){}", info.name, info.version, if info.deterministic { "" } else { "  [not deterministic]" });
        println!("  {}", info.doc);
        print_ports("in", &info.inputs);
        print_ports("out", &info.outputs);
        let defs = info.params.get("$defs").cloned().unwrap_or(Value::Null);
        let props = info.params.get("properties").and_then(Value::as_object);
        let required: Vec<&str> = info
            .params
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match props {
            Some(props) if !props.is_empty() => {
                println!("  with:");
                for (name, schema) in props {
                    let ty = type_of(schema, &defs);
                    let req = if required.contains(&name.as_str()) { ", required" } else { "" };
                    // A default that is an object of unset fields says nothing.
                    let empty = |d: &&Value| d.as_object().is_some_and(|o| o.values().all(Value::is_null));
                    let default = schema
                        .get("default")
                        .filter(|d| !empty(d))
                        .map(|d| format!(", default {d}"))
                        .unwrap_or_default();
                    let desc = schema.get("description").and_then(Value::as_str).unwrap_or("").replace('\n', " ");
                    println!("    {name}: {ty}{req}{default}  {desc}");
                }
            }
            _ => println!("  with: (none)"),
        }
        println!();
    }
}

fn print_ports(side: &str, ports: &Ports) {
    match ports {
        Ports::Fixed(decls) if decls.is_empty() => println!("  {side}: (none)"),
        Ports::Fixed(decls) => {
            println!("  {side}:");
            for PortDecl { name, ty, doc, optional } in decls {
                println!("    {name}: {ty}{}  {doc}", if *optional { " (optional)" } else { "" });
            }
        }
        Ports::Declared(doc) => println!("  {side}: declared by the stage: {doc}"),
    }
}

/// A short type for people: `integer`, `csv|jsonl|parquet`, `array`, ... (`$ref`s resolved).
fn type_of(schema: &Value, defs: &Value) -> String {
    if let Some(c) = schema.get("const") {
        return c.as_str().map_or_else(|| c.to_string(), str::to_string);
    }
    if let Some(t) = schema.get("type") {
        return match t {
            Value::Array(ts) => {
                ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect::<Vec<_>>().join("|")
            }
            Value::String(s) => s.clone(),
            _ => "value".into(),
        };
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        return e.iter().map(|v| v.as_str().unwrap_or("?")).collect::<Vec<_>>().join("|");
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or("value");
        return match defs.get(name) {
            Some(def) => type_of(def, &Value::Null),
            None => name.to_string(),
        };
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(any) = schema.get(key).and_then(Value::as_array) {
            let parts: Vec<String> = any.iter().map(|s| type_of(s, defs)).filter(|t| t != "null").collect();
            return parts.join("|");
        }
    }

    "value".into()
}

/// JSON Schema (draft 2020-12) of a pipeline file: the grammar, plus each op's `with:` schema
/// selected by its `op:` name.
pub fn pipeline_schema(ops: &OpRegistry) -> Value {
    let port_type = json!({
        "oneOf": [
            {"enum": ["table", "blob", "dir"]},
            {"type": "object", "additionalProperties": false, "required": ["type"], "properties": {
                "type": {"enum": ["table", "blob", "dir"]},
                "format": {"enum": ["parquet", "csv", "jsonl"], "description": "file format the op writes a table in (stored as Parquet)"},
                "columns": {"type": "object", "additionalProperties": {"type": "string"}, "description": "column name -> Arrow type"}
            }}
        ]
    });
    let mut per_op = Vec::new();
    let mut defs = serde_json::Map::new();
    for op in ops.iter() {
        let info = op.info();
        let mut params = info.params.clone();
        if let Some(d) = params.as_object_mut().and_then(|o| o.remove("$defs")).and_then(|d| d.as_object().cloned()) {
            defs.extend(d);
        }
        if let Some(o) = params.as_object_mut() {
            o.remove("$schema");
        }
        per_op.push(json!({
            "if": {"properties": {"op": {"const": info.name}}, "required": ["op"]},
            "then": {"properties": {"with": params}}
        }));
    }
    let names: Vec<&str> = ops.names().collect();
    let stage_props = json!({
        "op": {"enum": names, "description": "the op this stage runs (`drover ops` lists them)"},
        "description": {"type": "string"},
        "in": {"type": "object", "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}, "description": "port -> `stage`, `stage.port`, `stage[*]` or `stage[axis=value]`, or a list of them (one list input)"},
        "with": {"type": "object", "description": "the op's params; `${params.x}` and `${matrix.k}` interpolate"},
        "out": {"type": "object", "additionalProperties": port_type, "description": "declared outputs (ops with declared ports, e.g. command)"},
        "deps": {"type": "array", "items": {"type": "string"}, "description": "files or directories whose content enters the key: relative to the pipeline directory, or absolute; symlinks followed"},
        "matrix": {"type": "object", "additionalProperties": {"oneOf": [{"type": "array", "minItems": 1}, {"type": "string"}]}, "description": "axis -> values; the stage expands to one run per combination"},
        "retries": {"type": "integer", "minimum": 0},
        "timeout": {"oneOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": "^([0-9.]+[smhd]?)+$"}], "description": "e.g. 30s, 10m, 2h"},
        "resources": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}, "description": "e.g. {gpu: 1}"},
        "seed": {"type": "integer", "minimum": 0},
        "metrics": {"oneOf": [
            {"type": "array", "items": {"type": "string"}, "description": "columns of the output table `out` (or the only one) whose last row holds metrics"},
            {"type": "object", "additionalProperties": false, "properties": {
                "table": {"type": "string", "description": "the output port whose table holds the metrics"},
                "key": {"type": "string", "description": "one metric per row, named STAGE.KEYVALUE.COLUMN; without it, the last row's, named STAGE.COLUMN"},
                "columns": {"type": "array", "items": {"type": "string"}, "description": "default: every numeric column"},
                "fail_if": {"type": "array", "items": {"type": "string"}, "description": "regressions, on the change since the baseline run: `accuracy < -0.01`, `loss > 5%` (names relative to the stage)"}
            }}
        ], "description": "which columns of which output table are metrics (`drover metrics show`)"}
    });
    debug_assert_eq!(stage_props.as_object().map(|o| o.len()), Some(STAGE_KEYS.len()));
    let mut stage_props = stage_props;
    // Sections a stage may carry too (`slurm:`), as their owners describe them.
    for section in ops.sections() {
        if let Some(schema) = &section.stage_schema {
            stage_props[section.name] = schema.clone();
        }
    }
    let mut top_props = json!({
        "pipeline": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
        "description": {"type": "string"},
        "params": {"type": "object", "description": "defaults; override with -p FILE and --set a.b=v"},
        "seed": {"type": "integer", "minimum": 0},
        "resources": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}, "description": "capacity of each resource"},
        "stages": {"type": "object", "propertyNames": {"pattern": "^[A-Za-z0-9_-]+$"}, "additionalProperties": {"$ref": "#/$defs/stage"}}
    });
    debug_assert_eq!(top_props.as_object().map(|o| o.len()), Some(TOP_KEYS.len()));
    // The sections other parts own (`llms:`), each with its own schema; their `$defs` join ours.
    for section in ops.sections() {
        let mut schema = section.schema.clone();
        if let Some(obj) = schema.as_object_mut()
            && let Some(d) = obj.remove("$defs").and_then(|d| d.as_object().cloned())
        {
            defs.extend(d);
        }
        top_props[section.name] = schema;
    }
    defs.insert("stage".into(), json!({"type": "object", "additionalProperties": false, "required": ["op"], "properties": stage_props, "allOf": per_op}));
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "drover pipeline",
        "type": "object",
        "additionalProperties": false,
        "required": ["stages"],
        "properties": top_props,
        "$defs": defs
    })
}
