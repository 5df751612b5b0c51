//! A YAML tree that keeps the source span of every node, built from yaml-rust2's events.
//!
//! Aliases are expanded with a bound on the number of nodes they add (an alias bomb is an
//! error, not an out-of-memory), nesting is bounded by [`MAX_DEPTH`] (so that nothing that walks
//! a tree, here or in serde, can overflow the stack), and duplicate mapping keys, control
//! characters and numbers out of range are errors.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A byte range in the source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub offset: usize,
    pub len: usize,
}

impl Span {
    pub fn new(offset: usize, len: usize) -> Span {
        Span { offset, len }
    }
}

impl From<Span> for miette::SourceSpan {
    fn from(s: Span) -> miette::SourceSpan {
        (s.offset, s.len).into()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub span: Span,
    pub kind: NodeKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in source order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.kind {
            NodeKind::Seq(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Vec<(Node, Node)>> {
        match &mut self.kind {
            NodeKind::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Moves the node out, leaving `Null` with the same span (no deep copy).
    pub fn take(&mut self) -> Node {
        let span = self.span;
        std::mem::replace(self, Node { span, kind: NodeKind::Null })
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.as_map_mut()?.iter_mut().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }

    /// A mapping's value by key.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }

    /// What kind of value this is, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Int(_) => "an integer",
            NodeKind::Float(_) => "a number",
            NodeKind::Str(_) => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    /// The value as an error message quotes it: a number or boolean as written, text in
    /// backticks, otherwise its kind (`a list`).
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Null => "null".into(),
            NodeKind::Bool(b) => b.to_string(),
            NodeKind::Int(i) => i.to_string(),
            NodeKind::Float(f) => describe_float(*f),
            NodeKind::Str(s) => format!("`{s}`"),
            NodeKind::Seq(_) | NodeKind::Map(_) => self.type_name().into(),
        }
    }

    /// Every NaN or infinite number in this subtree, with the nearest mapping key above it.
    /// JSON, which ops receive, has no such numbers: [`Node::to_json`] would make them null.
    pub fn non_finite(&self) -> Vec<(Option<String>, &Node)> {
        fn walk<'n>(node: &'n Node, key: Option<String>, out: &mut Vec<(Option<String>, &'n Node)>) {
            match &node.kind {
                NodeKind::Float(f) if !f.is_finite() => out.push((key, node)),
                NodeKind::Seq(items) => items.iter().for_each(|n| walk(n, key.clone(), out)),
                NodeKind::Map(entries) => entries.iter().for_each(|(k, v)| walk(v, Some(k.key_text()), out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(self, None, &mut out);
        out
    }

    /// The node as JSON (map keys become strings).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            NodeKind::Null => Value::Null,
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Int(i) => Value::from(*i),
            NodeKind::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number).unwrap_or(Value::Null),
            NodeKind::Str(s) => Value::String(s.clone()),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => Value::Object(entries.iter().map(|(k, v)| (k.key_text(), v.to_json())).collect()),
        }
    }

    /// A scalar key as text.
    pub fn key_text(&self) -> String {
        match &self.kind {
            NodeKind::Str(s) => s.clone(),
            NodeKind::Int(i) => i.to_string(),
            NodeKind::Float(f) => f.to_string(),
            NodeKind::Bool(b) => b.to_string(),
            NodeKind::Null => "null".into(),
            _ => "<complex key>".into(),
        }
    }

    /// Finds the node at a path of map keys / sequence indices below this node.
    pub fn at_path(&self, path: &[String]) -> Option<&Node> {
        let mut node = self;
        for seg in path {
            node = match &node.kind {
                NodeKind::Map(_) => node.get(seg)?,
                NodeKind::Seq(items) => items.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// Number of nodes in this subtree, and how many collections deep it nests (0 for a
    /// scalar, 1 for a flat list).
    pub fn size_and_height(&self) -> (usize, usize) {
        let fold = |(size, height): (usize, usize), child: &Node| {
            let (s, h) = child.size_and_height();
            (size + s, height.max(h + 1))
        };
        match &self.kind {
            NodeKind::Seq(items) => items.iter().fold((1, 1), fold),
            NodeKind::Map(entries) => entries.iter().flat_map(|(k, v)| [k, v]).fold((1, 1), fold),
            _ => (1, 0),
        }
    }
}

/// A float as an error message shows it (`NaN`, `infinity`, `1.5`).
fn describe_float(f: f64) -> String {
    match f {
        f if f.is_nan() => "NaN".into(),
        f64::INFINITY => "infinity".into(),
        f64::NEG_INFINITY => "-infinity".into(),
        f => f.to_string(),
    }
}

/// A YAML problem at a place in the source.
#[derive(Clone, Debug, PartialEq)]
pub struct YamlError {
    pub message: String,
    pub span: Span,
    pub help: Option<String>,
    /// The text is not YAML at all (rather than YAML that breaks a rule or a limit of drover's):
    /// `--set name=TEXT` then takes it as a string.
    pub syntax: bool,
}

impl YamlError {
    fn new(message: impl Into<String>, span: Span, help: impl Into<String>) -> YamlError {
        YamlError { message: message.into(), span, help: Some(help.into()), syntax: false }
    }
}

/// At most this many nodes may be created by expanding aliases.
pub const MAX_ALIAS_NODES: usize = 100_000;

/// Mappings and lists nest at most this deep (the root mapping of a file is level 1). Deep
/// enough for any configuration (a mergekit config nests about 6 levels); shallow enough that
/// every recursive walk (building, dropping, `to_json`, interpolation, serde) stays far from
/// the end of the stack, and that a value placed inside another (a param in a stage's `with:`,
/// a `with:` in a run record) stays within serde_json's own limit of 128 levels when it is
/// read back.
pub const MAX_DEPTH: usize = 64;

/// The error for a mapping or list that starts level `MAX_DEPTH + 1`, pointing at it.
fn too_deep(span: Span) -> YamlError {
    YamlError::new(
        format!("YAML nested more than {MAX_DEPTH} levels deep"),
        span,
        format!("mappings and lists nest at most {MAX_DEPTH} levels deep; flatten this value"),
    )
}

/// Parses one YAML document. Every problem is an error (see [`parse_lenient`]).
pub fn parse(source: &str) -> Result<Node, Vec<YamlError>> {
    match parse_lenient(source) {
        (Some(node), errors) if errors.is_empty() => Ok(node),
        (_, errors) => Err(errors),
    }
}

/// Parses one YAML document, going on past problems that leave a usable tree (duplicate keys,
/// extra documents, numbers out of range), so that a caller can report them together with its
/// own. The tree is `None` after a syntax error, a control character, nesting deeper than
/// [`MAX_DEPTH`] or an alias bomb.
pub fn parse_lenient(source: &str) -> (Option<Node>, Vec<YamlError>) {
    if let Some(e) = control_character(source) {
        return (None, vec![e]);
    }
    let mut builder = Builder {
        source,
        lines: LineIndex::new(source),
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        alias_nodes: 0,
        errors: Vec::new(),
        doc_starts: Vec::new(),
        too_deep_at: None,
        stop: false,
    };
    // Event by event rather than through `Parser::load`, which recurses once per level of
    // nesting (a mapping 10,000 levels deep overflowed the stack) and cannot be stopped early.
    let mut parser = Parser::new_from_str(source);
    loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => break,
            Ok((ev, mark)) => builder.on_event(ev, mark),
            Err(e) => {
                let offset = builder.lines.offset(source, e.marker());
                // The scanner's own limit (255 nested `[` or `{`) is reached before the parser
                // emits the first of them: it reads a flow collection to its end first.
                let error = if e.info() == "recursion limit exceeded" {
                    builder.flow_too_deep(offset)
                } else {
                    syntax_error(source, offset, e.info())
                };
                return (None, vec![error]);
            }
        }
        if builder.stop {
            return (None, builder.errors);
        }
    }
    if let Some(&second) = builder.doc_starts.get(1) {
        let len = if source[second..].starts_with("---") { 3 } else { 1 };
        builder.errors.push(YamlError::new(
            "a pipeline file holds one YAML document; found more",
            Span::new(second, len),
            "remove the `---` separator and what follows, or merge the documents",
        ));
    }
    (Some(builder.root.unwrap_or(Node { span: Span::new(0, 0), kind: NodeKind::Null })), builder.errors)
}

/// A syntax error, pointing at its likely cause: a tab used for indentation, or a `[`/`{`
/// never closed, when there is one before the place the parser gave up.
fn syntax_error(source: &str, offset: usize, info: &str) -> YamlError {
    let line_start = source[..offset.min(source.len())].rfind('\n').map_or(0, |i| i + 1);
    let next_line = source[offset.min(source.len())..].find('\n').map(|i| offset + i + 1);
    for start in [Some(line_start), next_line].into_iter().flatten() {
        let line = &source[start.min(source.len())..];
        let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
        if let Some(tab) = line[..indent].find('\t') {
            return YamlError {
                message: "YAML syntax error: a tab in indentation".into(),
                span: Span::new(start + tab, 1),
                help: Some("YAML indents with spaces only; replace the tab with spaces".into()),
                syntax: true,
            };
        }
    }
    // The parser may point at the opening quote itself: include the character there.
    let upto = source[offset.min(source.len())..].chars().next().map_or(source.len(), |c| offset + c.len_utf8());
    let unclosed = unclosed_bracket(&source[..upto]);
    if let Some((at, '"' | '\'')) = unclosed {
        return YamlError {
            message: format!("YAML syntax error: {info}"),
            span: Span::new(at, 1),
            help: Some("this quote is never closed".into()),
            syntax: true,
        };
    }
    if let Some((at, open)) = unclosed {
        let close = if open == '[' { ']' } else { '}' };
        return YamlError {
            message: format!("YAML syntax error: `{open}` is never closed"),
            span: Span::new(at, 1),
            help: Some(format!("close it with `{close}` (the parser stopped later: {info})")),
            syntax: true,
        };
    }
    YamlError { message: format!("YAML syntax error: {info}"), span: Span::new(offset, 1), help: None, syntax: true }
}

/// The first character that YAML allows nowhere (C0 controls but tab and line breaks, DEL, C1
/// controls but NEL, U+FFFE and U+FFFF), as an error. The scanner takes a NUL for the end of
/// the text, which made a NUL inside a string look like an unclosed quote.
fn control_character(source: &str) -> Option<YamlError> {
    let printable = |c: char| {
        matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
            || c >= '\u{10000}'
    };
    let (at, c) = source.char_indices().find(|&(_, c)| !printable(c))?;
    let more = source[at + c.len_utf8()..].chars().filter(|&c| !printable(c)).count();
    let code = c as u32;
    let name = match code {
        0x00 => " (NUL)",
        0x07 => " (BEL)",
        0x08 => " (BS)",
        0x0b => " (VT)",
        0x0c => " (FF)",
        0x1b => " (ESC)",
        0x7f => " (DEL)",
        _ => "",
    };
    let escape = match code {
        0 => "\\0".to_string(),
        0x01..=0xff => format!("\\x{code:02x}"),
        _ => format!("\\u{code:04x}"),
    };
    let more = match more {
        0 => String::new(),
        1 => "; the file has 1 more such character".into(),
        n => format!("; the file has {n} more such characters"),
    };
    Some(YamlError::new(
        format!("YAML does not allow the control character U+{code:04X}{name}"),
        Span::new(at, c.len_utf8()),
        format!("remove it, or write it as the escape `{escape}` inside a double-quoted string{more}"),
    ))
}

/// A quote or bracket, and its byte offset.
type Opening = (usize, char);

/// What is left open at the end of `text`: a quote that starts a quoted scalar, else the last
/// `[` or `{` not closed (comments skipped).
fn unclosed_bracket(text: &str) -> Option<Opening> {
    let (quote, mut stack) = open_brackets(text);
    quote.or_else(|| stack.pop())
}

/// The quote left open at the end of `text`, if any, and every `[` or `{` not closed, outermost
/// first (comments skipped).
fn open_brackets(text: &str) -> (Option<Opening>, Vec<Opening>) {
    let mut stack = Vec::new();
    let mut quote: Option<(usize, char)> = None;
    let mut comment = false;
    let mut prev = '\n';
    for (i, c) in text.char_indices() {
        let before = std::mem::replace(&mut prev, c);
        if comment {
            comment = c != '\n';
            continue;
        }
        match (quote, c) {
            (Some((_, q)), c) if c == q => quote = None,
            (Some(_), _) => {}
            // A quote opens a quoted scalar only where a scalar can start.
            (None, '"' | '\'') if before.is_whitespace() || "[{,:-".contains(before) => quote = Some((i, c)),
            (None, '#') => comment = true,
            (None, '[' | '{') => stack.push((i, c)),
            (None, ']' | '}') => {
                stack.pop();
            }
            _ => {}
        }
    }
    (quote, stack)
}

/// Up to this many keys, duplicate keys are found by scanning.
const SMALL_MAP: usize = 16;

enum Frame {
    Seq { start: usize, anchor: usize, items: Vec<Node> },
    Map { start: usize, anchor: usize, entries: Vec<(Node, Node)>, key: Option<Node>, seen: HashMap<String, usize> },
}

impl Frame {
    fn start(&self) -> usize {
        match self {
            Frame::Seq { start, .. } | Frame::Map { start, .. } => *start,
        }
    }
}

struct Builder<'s> {
    source: &'s str,
    lines: LineIndex,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    alias_nodes: usize,
    errors: Vec<YamlError>,
    /// Where each document starts.
    doc_starts: Vec<usize>,
    /// Where a collection that starts level `MAX_DEPTH + 1` was marked; reported at the next
    /// event, which shows where its text starts (a block mapping is marked at its first `:`).
    too_deep_at: Option<usize>,
    /// The tree cannot be built (too deep, alias bomb): stop reading.
    stop: bool,
}

impl Builder<'_> {
    /// A one-character span at `offset` (the character may take several bytes).
    fn char_span(&self, offset: usize) -> Span {
        Span::new(offset, self.source[offset.min(self.source.len())..].chars().next().map_or(0, char::len_utf8))
    }

    /// The error for flow collections nested past the scanner's limit: it points at the
    /// bracket that starts level `MAX_DEPTH + 1`, counting the block collections around it.
    fn flow_too_deep(&self, offset: usize) -> YamlError {
        let is_flow = |start: usize| matches!(self.source.as_bytes().get(start), Some(b'[' | b'{'));
        let block = self.stack.iter().filter(|f| !is_flow(f.start())).count();
        let (_, open) = open_brackets(&self.source[..offset.min(self.source.len())]);
        let at = MAX_DEPTH.checked_sub(block).and_then(|i| open.get(i)).map_or(offset, |&(at, _)| at);
        too_deep(self.char_span(at))
    }

    fn push_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            // Only the first document counts (a second one is reported).
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, seen, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => {
                    // Small mappings (almost all) are scanned; large ones use a hash map, so
                    // that a mapping of 100,000 stages does not cost 10^10 comparisons.
                    let first = if entries.len() < SMALL_MAP {
                        entries.iter().find(|(p, _)| p.kind == k.kind).map(|(p, _)| p.span.offset)
                    } else {
                        if seen.is_empty() {
                            seen.extend(entries.iter().map(|(p, _)| (p.key_text(), p.span.offset)));
                        }
                        let first = *seen.entry(k.key_text()).or_insert(k.span.offset);
                        (first != k.span.offset).then_some(first)
                    };
                    if let Some(prev_offset) = first {
                        self.errors.push(YamlError::new(
                            format!("duplicate key `{}`", k.key_text()),
                            k.span,
                            format!(
                                "`{}` is first defined on line {}; each key may appear once",
                                k.key_text(),
                                self.lines.line_of(prev_offset)
                            ),
                        ));
                    }
                    entries.push((k, node));
                }
            },
        }
    }

    fn on_event(&mut self, ev: Event, mark: Marker) {
        let offset = self.lines.offset(self.source, &mark);
        if let Some(start) = self.too_deep_at {
            self.errors.push(too_deep(self.char_span(start.min(offset))));
            self.stop = true;
            return;
        }
        match ev {
            Event::DocumentStart => self.doc_starts.push(offset),
            Event::Scalar(value, style, anchor, _tag) => {
                let len = self.lines.scalar_len(self.source, offset, &value, style);
                let kind = if style == TScalarStyle::Plain {
                    let kind = resolve_plain(&value);
                    // `1e999` reads as infinity; only `.inf` means it.
                    if matches!(kind, NodeKind::Float(f) if f.is_infinite())
                        && !value.to_ascii_lowercase().ends_with(".inf")
                    {
                        self.errors.push(YamlError::new(
                            format!("number `{value}` is out of range"),
                            Span::new(offset, len),
                            "numbers are 64-bit floats, at most about 1.8e308; quote it to keep it as text",
                        ));
                    }
                    kind
                } else {
                    NodeKind::Str(value)
                };
                self.push_node(Node { span: Span::new(offset, len), kind }, anchor);
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if self.stack.len() >= MAX_DEPTH => {
                self.too_deep_at = Some(offset);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq { start: offset, anchor, items: Vec::new() }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                start: offset,
                anchor,
                entries: Vec::new(),
                key: None,
                seen: HashMap::new(),
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (start, anchor, kind) = match self.stack.pop() {
                    Some(Frame::Seq { start, anchor, items }) => (start, anchor, NodeKind::Seq(items)),
                    Some(Frame::Map { start, anchor, entries, .. }) => (start, anchor, NodeKind::Map(entries)),
                    None => return,
                };
                // yaml-rust2 marks a block mapping where its first key's `:` is; the collection
                // really starts at its first child.
                let first = match &kind {
                    NodeKind::Seq(items) => items.first().map(|n| n.span.offset),
                    NodeKind::Map(entries) => entries.first().map(|(k, _)| k.span.offset),
                    _ => None,
                };
                let start = first.map_or(start, |f| f.min(start));
                // A block collection's end marker is the start of the next token; a span to
                // the first line is enough for labels.
                let line_end = self.lines.line_end(self.source, start);
                let end = offset.max(start + 1).min(line_end.max(start + 1));
                self.push_node(Node { span: Span::new(start, end - start), kind }, anchor);
            }
            Event::Alias(id) => {
                let span = Span::new(offset, 1);
                match self.anchors.get(&id) {
                    Some(node) => {
                        // Sizes and heights are checked before the copy is made.
                        let (size, height) = node.size_and_height();
                        self.alias_nodes += size;
                        if self.alias_nodes > MAX_ALIAS_NODES {
                            self.errors.push(YamlError::new(
                                format!("YAML aliases expand to more than {MAX_ALIAS_NODES} nodes"),
                                span,
                                "this looks like an alias bomb; write the values out or use fewer nested aliases",
                            ));
                            self.stop = true;
                        } else if self.stack.len() + height > MAX_DEPTH {
                            // Each alias of an alias can nest one level deeper than the last.
                            self.errors.push(too_deep(span));
                            self.stop = true;
                        } else {
                            let node = Node { span, kind: node.kind.clone() };
                            self.push_node(node, 0);
                        }
                    }
                    None => self.push_node(Node { span, kind: NodeKind::Null }, 0),
                }
            }
            _ => {}
        }
    }
}

/// Plain scalars follow the YAML 1.2 core schema.
fn resolve_plain(v: &str) -> NodeKind {
    match v {
        "" | "~" | "null" | "Null" | "NULL" => return NodeKind::Null,
        "true" | "True" | "TRUE" => return NodeKind::Bool(true),
        "false" | "False" | "FALSE" => return NodeKind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" => return NodeKind::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return NodeKind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return NodeKind::Float(f64::NAN),
        _ => {}
    }
    if let Ok(i) = v.parse::<i64>() {
        return NodeKind::Int(i);
    }
    if let Some(hex) = v.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return NodeKind::Int(i);
    }
    // Digits, signs, `.` and exponents only: Rust also reads `-inf` and `+nan`, which YAML
    // spells `-.inf` and `.nan` (and takes as text otherwise).
    let looks_numeric = v.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'-' || b == b'+' || b == b'.')
        && v.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
    if looks_numeric && let Ok(f) = v.parse::<f64>() {
        return NodeKind::Float(f);
    }
    NodeKind::Str(v.to_string())
}

/// Byte offsets of line starts, so a marker's (line, column) becomes a byte offset without
/// rescanning the source (a pipeline of 100,000 stages has millions of markers).
struct LineIndex {
    starts: Vec<usize>,
    /// Whether each line is pure ASCII (then a column in characters is a column in bytes).
    ascii: Vec<bool>,
}

impl LineIndex {
    fn new(source: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(source.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i + 1));
        let ascii = (0..starts.len())
            .map(|l| {
                let end = starts.get(l + 1).map_or(source.len(), |next| next - 1);
                source.as_bytes()[starts[l]..end].is_ascii()
            })
            .collect();
        LineIndex { starts, ascii }
    }

    /// The 1-based line of a byte offset.
    fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset)
    }

    /// Where the line holding `offset` ends (its newline, or the end of the source).
    fn line_end(&self, source: &str, offset: usize) -> usize {
        self.starts.get(self.line_of(offset)).map_or(source.len(), |next| next - 1)
    }

    /// The marker's byte offset (yaml-rust2 counts lines from 1 and columns in characters).
    /// Constant time on ASCII lines: a one-line mapping of 200,000 params has as many markers.
    fn offset(&self, source: &str, mark: &Marker) -> usize {
        let line = mark.line().saturating_sub(1);
        let start = self.starts.get(line).copied().unwrap_or(source.len());
        let end = self.starts.get(line + 1).map_or(source.len(), |next| next - 1);
        if self.ascii.get(line).copied().unwrap_or(true) {
            return start + mark.col().min(end - start);
        }
        let text = &source[start..end];
        start + text.char_indices().nth(mark.col()).map_or(text.len(), |(i, _)| i)
    }

    /// A scalar's span length: its source text on its first line.
    fn scalar_len(&self, source: &str, offset: usize, value: &str, style: TScalarStyle) -> usize {
        let len = match style {
            TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => value.len() + 2,
            TScalarStyle::Literal | TScalarStyle::Folded => 1,
            _ => value.len(),
        };
        len.min(self.line_end(source, offset).saturating_sub(offset)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_at_values() {
        let src = "a: 1\nbé: hello\nc: [x, 'y']\n";
        let root = parse(src).unwrap();
        let b = root.get("bé").unwrap();
        assert_eq!(&src[b.span.offset..b.span.offset + b.span.len], "hello");
        let c = root.get("c").unwrap().as_seq().unwrap();
        assert_eq!(&src[c[1].span.offset..c[1].span.offset + c[1].span.len], "'y'");
        assert_eq!(root.get("a").unwrap().kind, NodeKind::Int(1));
    }

    #[test]
    fn plain_scalars_resolve_like_yaml_1_2() {
        let root = parse("a: 1.5e-3\nb: true\nc: ~\nd: 007x\ne: '1'\n").unwrap();
        assert_eq!(root.get("a").unwrap().kind, NodeKind::Float(1.5e-3));
        assert_eq!(root.get("b").unwrap().kind, NodeKind::Bool(true));
        assert_eq!(root.get("c").unwrap().kind, NodeKind::Null);
        assert_eq!(root.get("d").unwrap().kind, NodeKind::Str("007x".into()));
        assert_eq!(root.get("e").unwrap().kind, NodeKind::Str("1".into()));
        let root = parse("a: -inf\nb: +nan\nc: -.inf\nd: 1e3\n").unwrap();
        assert_eq!(root.get("a").unwrap().kind, NodeKind::Str("-inf".into()));
        assert_eq!(root.get("b").unwrap().kind, NodeKind::Str("+nan".into()));
        assert_eq!(root.get("c").unwrap().kind, NodeKind::Float(f64::NEG_INFINITY));
        assert_eq!(root.get("d").unwrap().kind, NodeKind::Float(1000.0));
    }

    #[test]
    fn aliases_expand() {
        let root = parse("base: &b {x: 1}\nother: *b\n").unwrap();
        assert_eq!(root.get("other").unwrap().get("x").unwrap().kind, NodeKind::Int(1));
    }

    #[test]
    fn alias_bomb_is_an_error_not_an_oom() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let errs = parse(&src).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("aliases expand to more than"), "{errs:?}");
    }

    #[test]
    fn duplicate_keys_are_reported() {
        let errs = parse("stages:\n  a: 1\n  a: 2\n").unwrap_err();
        assert_eq!(errs[0].message, "duplicate key `a`");
        assert_eq!(errs[0].span.offset, 17); // the second `a`
    }

    /// The text at an error's span.
    fn at<'s>(src: &'s str, e: &YamlError) -> &'s str {
        &src[e.span.offset..e.span.offset + e.span.len]
    }

    #[test]
    fn nesting_deeper_than_the_cap_is_an_error_at_the_collection_that_goes_too_deep() {
        // The root mapping is level 1; `kN:` starts level N + 1.
        let block = |levels: usize| {
            (0..levels).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect::<String>() + &" ".repeat(levels) + "x\n"
        };
        assert!(parse(&block(MAX_DEPTH)).is_ok());
        for levels in [MAX_DEPTH + 1, 10_000] {
            let src = block(levels);
            let errs = parse(&src).unwrap_err();
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert_eq!(errs[0].message, format!("YAML nested more than {MAX_DEPTH} levels deep"));
            assert_eq!(at(&src, &errs[0]), "k");
            assert_eq!(src[errs[0].span.offset..].split(':').next(), Some(format!("k{MAX_DEPTH}").as_str()));
        }
        // Flow collections: below the scanner's own limit of 255 and far above it.
        for brackets in [MAX_DEPTH + 1, 300, 10_000] {
            let src = format!("a: {}{}\n", "[".repeat(brackets), "]".repeat(brackets));
            let errs = parse(&src).unwrap_err();
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert_eq!(errs[0].message, format!("YAML nested more than {MAX_DEPTH} levels deep"), "{brackets}");
            // `a:` is level 1, so the bracket that starts level MAX_DEPTH + 1 is the MAX_DEPTH-th.
            assert_eq!(errs[0].span, Span::new(3 + MAX_DEPTH - 1, 1), "{brackets}");
        }
    }

    #[test]
    fn aliases_cannot_nest_past_the_cap() {
        // Each line nests the previous one a level deeper, in few nodes (no alias bomb).
        let mut src = String::from("a0: &a0 [x]\n");
        for i in 1..100 {
            src.push_str(&format!("a{i}: &a{i} [*a{}]\n", i - 1));
        }
        let errs = parse(&src).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].message, format!("YAML nested more than {MAX_DEPTH} levels deep"));
        assert_eq!(at(&src, &errs[0]), "*");
        let (_, height) = parse(&src[..src.find(&format!("a{}:", MAX_DEPTH - 1)).unwrap()]).unwrap().size_and_height();
        assert_eq!(height, MAX_DEPTH);
    }

    #[test]
    fn control_characters_are_errors_at_their_place() {
        let src = "a: \"x\0y\"\nb: \u{1b}\n";
        let errs = parse(src).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].message, "YAML does not allow the control character U+0000 (NUL)");
        assert_eq!(errs[0].span, Span::new(5, 1));
        assert_eq!(
            errs[0].help.as_deref(),
            Some(
                "remove it, or write it as the escape `\\0` inside a double-quoted string; the file has 1 more such character"
            )
        );
        let errs = parse("a: \u{9f}\n").unwrap_err();
        assert_eq!(errs[0].message, "YAML does not allow the control character U+009F");
        assert_eq!(errs[0].span, Span::new(3, 2));
        assert!(parse("a: \"tab\there\"\r\nb: \u{85}é\n").is_ok());
    }

    #[test]
    fn numbers_out_of_range_are_errors_and_inf_is_not() {
        let src = "a: 1e999\nb: -1e999\nc: .inf\nd: '1e999'\n";
        let (root, errs) = parse_lenient(src);
        assert_eq!(
            errs.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["number `1e999` is out of range", "number `-1e999` is out of range"]
        );
        assert_eq!(at(src, &errs[1]), "-1e999");
        let root = root.unwrap();
        assert_eq!(root.get("c").unwrap().kind, NodeKind::Float(f64::INFINITY));
        assert_eq!(root.get("d").unwrap().kind, NodeKind::Str("1e999".into()));
    }

    #[test]
    fn non_finite_numbers_are_found_with_their_key() {
        let root = parse("a: .nan\nb: {c: [1, -.inf]}\nd: 1.5\n").unwrap();
        let found: Vec<(Option<String>, String)> =
            root.non_finite().into_iter().map(|(k, n)| (k, n.describe())).collect();
        assert_eq!(found, [(Some("a".into()), "NaN".into()), (Some("c".into()), "-infinity".into())]);
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let errs = parse("a: [1, 2\nb: c\n").unwrap_err();
        assert!(errs[0].message.starts_with("YAML syntax error"), "{errs:?}");
    }
}
