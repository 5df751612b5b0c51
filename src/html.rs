//! `drover report [RUN] --html PATH`: one self-contained HTML page about a run, rendered from
//! run records and the store, never from live state: what ran and why, a timeline, what failed
//! with the tail of its log, metrics beside the earlier runs of the pipeline with small line
//! charts, the plots its stages produced, and the stage graph.
//!
//! Self-contained: no script, style, font or image is fetched from anywhere; plots are embedded
//! as `data:` URIs inside `<img>` (an SVG a stage wrote cannot run script there), charts and the
//! graph are inline SVG drawn here. The one script is inline: it marks the page rendered once
//! every image has decoded (`data-rendered="ok"`, or `data-rendered="broken"`), which is what
//! a headless browser checks.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use drover_cache::{OutputKind, RunRecord, RunStage, StageOutcome, Store};

use crate::Failure;
use crate::metrics::{num, percent, pick, runs_of, signed};

/// Lines of a failed stage's log the page embeds.
const LOG_TAIL_LINES: usize = 40;
/// Earlier runs whose metrics stand beside this one's.
const HISTORY: usize = 20;
/// A plot larger than this is named, not embedded (a page should open quickly).
const MAX_PLOT_BYTES: u64 = 4 << 20;

pub fn report(store: &Store, pipeline: Option<&str>, run: Option<&str>, out: &Path) -> Result<(), Failure> {
    let runs = runs_of(store, pipeline)?;
    let this = pick(&runs, run)?;
    let history: Vec<&RunRecord> = runs.iter().filter(|r| r.pipeline == this.pipeline && r.id <= this.id).collect();
    let page = render(store, this, &history[history.len().saturating_sub(HISTORY)..]);
    let tmp = out.with_extension("html.tmp");
    std::fs::write(&tmp, page.as_bytes())
        .and_then(|()| std::fs::rename(&tmp, out))
        .map_err(|e| Failure::Environment(format!("cannot write {}: {e}", out.display())))?;
    eprintln!("wrote the report of run {} to {}", this.id, out.display());
    Ok(())
}

/// The page; `history` ends with `run`.
pub fn render(store: &Store, run: &RunRecord, history: &[&RunRecord]) -> String {
    let mut h = String::with_capacity(64 << 10);
    let count = |o: StageOutcome| run.stages.iter().filter(|s| s.outcome == o).count();
    let title = format!("{}: run {}", run.pipeline, run.id);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title><style>{STYLE}</style></head>\n<body>\n",
        esc(&title)
    );
    let _ = write!(
        h,
        "<header><h1>{}</h1><p class=\"status {}\" id=\"status\">{}</p>",
        esc(&run.pipeline),
        esc(&run.status),
        esc(&run.status)
    );
    let trigger = match run.trigger.as_ref().and_then(|t| t.schedule.as_deref()) {
        Some(s) => format!("{} (schedule {s})", run.trigger_kind()),
        None => run.trigger_kind().to_string(),
    };
    let facts = [
        ("run", run.id.clone()),
        ("started", run.started_utc()),
        ("took", humanize_ms(run.duration_ms)),
        ("trigger", trigger),
        ("host", run.host.clone().unwrap_or_else(|| "-".into())),
        ("git revision", run.git_revision.clone().unwrap_or_else(|| "-".into())),
        ("params digest", run.params_digest.as_deref().map_or("-".into(), |d| d[..12.min(d.len())].to_string())),
        (
            "stages",
            format!(
                "{} ran, {} cached, {} failed, {} skipped",
                count(StageOutcome::Ran),
                count(StageOutcome::Cached),
                count(StageOutcome::Failed),
                count(StageOutcome::Skipped) + count(StageOutcome::Interrupted)
            ),
        ),
    ];
    h.push_str("<dl class=\"facts\">");
    for (k, v) in facts {
        let _ = write!(h, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(&v));
    }
    h.push_str("</dl></header>\n");

    section_stages(&mut h, run);
    section_timeline(&mut h, run);
    section_failures(&mut h, store, run);
    section_metrics(&mut h, run, history);
    section_plots(&mut h, store, run);
    section_graph(&mut h, run);

    h.push_str(SCRIPT);
    h.push_str("</body></html>\n");
    h
}

fn section_stages(h: &mut String, run: &RunRecord) {
    h.push_str(
        "<section id=\"stages\"><h2>What ran, and why</h2><table><thead><tr><th>stage</th><th>outcome</th>\
                <th class=\"num\">took</th><th>why</th></tr></thead><tbody>\n",
    );
    for s in &run.stages {
        let why = match s.outcome {
            StageOutcome::Cached => "cached: its inputs, params, deps and op are as stored".to_string(),
            StageOutcome::Skipped | StageOutcome::Interrupted => s.error.clone().unwrap_or_default(),
            _ => s.reasons.join("; "),
        };
        let _ = writeln!(
            h,
            "<tr class=\"{o}\"><td><code>{}</code></td><td>{o}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&s.stage),
            if s.outcome == StageOutcome::Cached { "-".into() } else { humanize_ms(s.duration_ms) },
            esc(&why),
            o = outcome(s.outcome),
        );
    }
    h.push_str("</tbody></table></section>\n");
}

fn section_timeline(h: &mut String, run: &RunRecord) {
    let timed: Vec<(&RunStage, u64)> = run.stages.iter().filter_map(|s| Some((s, s.started_ms?))).collect();
    h.push_str("<section id=\"timeline\"><h2>Timeline</h2>");
    if timed.is_empty() {
        h.push_str("<p>Nothing ran: every stage was cached.</p></section>\n");
        return;
    }
    let end = timed.iter().map(|(s, t)| t + s.duration_ms).max().unwrap_or(1).max(run.duration_ms).max(1) as f64;
    let (label_w, bar_w, row_h) = (220.0, 560.0, 22.0);
    let height = row_h * timed.len() as f64 + 24.0;
    let _ = write!(
        h,
        "<svg class=\"timeline\" viewBox=\"0 0 {} {height}\" width=\"{}\" role=\"img\" aria-label=\"timeline\">",
        label_w + bar_w + 70.0,
        label_w + bar_w + 70.0
    );
    for (i, (s, t)) in timed.iter().enumerate() {
        let y = i as f64 * row_h + 4.0;
        let x = label_w + *t as f64 / end * bar_w;
        let w = (s.duration_ms as f64 / end * bar_w).max(1.5);
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><rect class=\"{}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{}\"><title>{} {}</title></rect>\
             <text x=\"{:.1}\" y=\"{}\" class=\"dim\">{}</text>",
            label_w - 8.0,
            y + 13.0,
            esc(&short(&s.stage, 30)),
            outcome(s.outcome),
            row_h - 6.0,
            esc(&s.stage),
            humanize_ms(s.duration_ms),
            x + w + 4.0,
            y + 13.0,
            humanize_ms(s.duration_ms)
        );
    }
    let _ = write!(
        h,
        "<line x1=\"{label_w}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" class=\"axis\"/><text x=\"{label_w}\" y=\"{}\" class=\"dim\">0s</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" class=\"dim\">{}</text></svg></section>",
        label_w + bar_w,
        height - 18.0,
        height - 18.0,
        height - 4.0,
        label_w + bar_w,
        height - 4.0,
        humanize_ms(end as u64)
    );
    h.push('\n');
}

fn section_failures(h: &mut String, store: &Store, run: &RunRecord) {
    let failed: Vec<&RunStage> = run.stages.iter().filter(|s| s.outcome == StageOutcome::Failed).collect();
    if failed.is_empty() {
        return;
    }
    h.push_str("<section id=\"failures\"><h2>What failed</h2>");
    for s in failed {
        let _ = write!(
            h,
            "<article class=\"failure\"><h3><code>{}</code></h3><p class=\"error\">{}</p>",
            esc(&s.stage),
            esc(s.error.as_deref().unwrap_or("failed"))
        );
        // A self-contained page cannot link into the store: the end of the log comes along.
        match s.log.as_ref().and_then(|rel| std::fs::read(store.root().join(rel)).ok()) {
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
                let _ = write!(
                    h,
                    "<p class=\"dim\">the last {} of {} log lines</p><pre class=\"log\">{}</pre>",
                    tail.len(),
                    lines.len(),
                    esc(&tail.join("\n"))
                );
            }
            None => h.push_str("<p class=\"dim\">no log was kept</p>"),
        }
        h.push_str("</article>");
    }
    h.push_str("</section>\n");
}

fn section_metrics(h: &mut String, run: &RunRecord, history: &[&RunRecord]) {
    if run.metrics.is_empty() {
        return;
    }
    let base = history.iter().rev().find(|r| r.id < run.id && r.status == "ok");
    let earlier = history.len().saturating_sub(1);
    let _ = write!(
        h,
        "<section id=\"metrics\"><h2>Metrics</h2><p class=\"dim\">this run beside {earlier} earlier run{} of <code>{}</code>; \
         the change is against {}</p><table><thead><tr><th>metric</th><th class=\"num\">value</th><th class=\"num\">change</th>\
         <th class=\"num\">change %</th><th>over the runs</th></tr></thead><tbody>",
        if earlier == 1 { "" } else { "s" },
        esc(&run.pipeline),
        base.map_or_else(
            || "no earlier successful run".to_string(),
            |b| format!("the last successful run, {}", esc(&b.id))
        )
    );
    for (name, value) in &run.metrics {
        let (change, rel) = match base.and_then(|b| b.metrics.get(name)) {
            Some(b) => (signed(value - b), percent(*b, *value)),
            None => ("-".into(), "-".into()),
        };
        let series: Vec<Option<f64>> = history.iter().map(|r| r.metrics.get(name).copied()).collect();
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code></td><td class=\"num metric-value\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(name),
            num(*value),
            change,
            rel,
            sparkline(&series)
        );
    }
    h.push_str("</tbody></table></section>\n");
}

/// A small line chart of a metric over the runs (gaps where a run lacks it), the last point
/// marked.
fn sparkline(series: &[Option<f64>]) -> String {
    let (w, ht) = (160.0, 28.0);
    let values: Vec<f64> = series.iter().flatten().copied().collect();
    if values.len() < 2 {
        return "<span class=\"dim\">first value</span>".into();
    }
    let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let step = w / (series.len().max(2) - 1) as f64;
    let point = |i: usize, v: f64| (i as f64 * step, 3.0 + (ht - 6.0) * (1.0 - (v - lo) / span));
    let mut s =
        format!("<svg class=\"spark\" viewBox=\"0 0 {w} {ht}\" width=\"{w}\" height=\"{ht}\"><polyline points=\"");
    for (i, v) in series.iter().enumerate() {
        if let Some(v) = v {
            let (x, y) = point(i, *v);
            let _ = write!(s, "{x:.1},{y:.1} ");
        }
    }
    s.push_str("\"/>");
    if let Some((i, Some(v))) = series.iter().enumerate().next_back() {
        let (x, y) = point(i, *v);
        let _ = write!(s, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.5\"/>");
    }
    s.push_str("</svg>");
    s
}

fn section_plots(h: &mut String, store: &Store, run: &RunRecord) {
    let mut plots = Vec::new();
    for s in run.stages.iter().filter(|s| matches!(s.outcome, StageOutcome::Ran | StageOutcome::Cached)) {
        let Some(record) = s.key.as_ref().and_then(|k| store.get_record(k)) else { continue };
        for (port, out) in &record.outputs {
            if out.kind != OutputKind::Blob {
                continue;
            }
            let path = store.object_path(&out.hash);
            let head = read_head(&path);
            let mime = if head.starts_with(b"\x89PNG\r\n\x1a\n") {
                "image/png"
            } else if is_svg(&head) {
                "image/svg+xml"
            } else {
                continue;
            };
            // The SVG and PNG of one figure: the vector one is enough.
            if mime == "image/png" && port.strip_suffix("_png").is_some_and(|svg| record.outputs.contains_key(svg)) {
                continue;
            }
            plots.push((s.stage.clone(), port.clone(), mime, path, out.size));
        }
    }
    if plots.is_empty() {
        return;
    }
    h.push_str("<section id=\"plots\"><h2>Plots</h2>");
    for (stage, port, mime, path, size) in plots {
        let _ = write!(h, "<figure><figcaption><code>{}.{}</code></figcaption>", esc(&stage), esc(&port));
        match (size <= MAX_PLOT_BYTES).then(|| std::fs::read(&path).ok()).flatten() {
            Some(bytes) => {
                let _ = write!(
                    h,
                    "<img alt=\"{}.{}\" src=\"data:{mime};base64,{}\">",
                    esc(&stage),
                    esc(&port),
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                );
            }
            None => {
                let _ = write!(
                    h,
                    "<p class=\"dim\">{size} bytes: too large to embed (drover export {stage}.{port} FILE)</p>"
                );
            }
        }
        h.push_str("</figure>");
    }
    h.push_str("</section>\n");
}

fn read_head(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; 512];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut buf)).unwrap_or(0);
    buf.truncate(n);
    buf
}

fn is_svg(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let t = text.trim_start();
    t.starts_with("<svg") || (t.starts_with("<?xml") && t.contains("<svg"))
}

/// The stage graph, laid out in layers (a stage one layer right of its deepest input), edges
/// as curves, boxes coloured by outcome.
fn section_graph(h: &mut String, run: &RunRecord) {
    let index: BTreeMap<&str, usize> = run.stages.iter().enumerate().map(|(i, s)| (s.stage.as_str(), i)).collect();
    let mut layer = vec![0usize; run.stages.len()];
    // Records list stages in plan order (inputs first), so one pass settles every layer.
    for (i, s) in run.stages.iter().enumerate() {
        layer[i] = s.inputs.iter().filter_map(|u| index.get(u.as_str())).map(|&u| layer[u] + 1).max().unwrap_or(0);
    }
    let layers = layer.iter().max().map_or(0, |m| m + 1);
    let mut rows = vec![0usize; layers];
    let mut at = vec![(0.0, 0.0); run.stages.len()];
    let (box_w, box_h, gap_x, gap_y) = (170.0, 34.0, 60.0, 14.0);
    for (i, &l) in layer.iter().enumerate() {
        at[i] = (10.0 + l as f64 * (box_w + gap_x), 10.0 + rows[l] as f64 * (box_h + gap_y));
        rows[l] += 1;
    }
    let width = 20.0 + layers as f64 * (box_w + gap_x) - gap_x;
    let height = 20.0 + rows.iter().max().copied().unwrap_or(1) as f64 * (box_h + gap_y) - gap_y;
    let _ = write!(
        h,
        "<section id=\"graph\"><h2>Graph</h2><svg class=\"dag\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" role=\"img\" aria-label=\"stage graph\">"
    );
    for (i, s) in run.stages.iter().enumerate() {
        for u in s.inputs.iter().filter_map(|u| index.get(u.as_str())) {
            let (x1, y1) = (at[*u].0 + box_w, at[*u].1 + box_h / 2.0);
            let (x2, y2) = (at[i].0, at[i].1 + box_h / 2.0);
            let mid = (x1 + x2) / 2.0;
            let _ = write!(
                h,
                "<path class=\"edge\" d=\"M{x1:.1},{y1:.1} C{mid:.1},{y1:.1} {mid:.1},{y2:.1} {x2:.1},{y2:.1}\"/>"
            );
        }
    }
    for (i, s) in run.stages.iter().enumerate() {
        let (x, y) = at[i];
        let _ = write!(
            h,
            "<g class=\"node {o}\"><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{box_w}\" height=\"{box_h}\" rx=\"5\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><title>{} ({o})</title></g>",
            x + box_w / 2.0,
            y + box_h / 2.0 + 4.0,
            esc(&short(&s.stage, 24)),
            esc(&s.stage),
            o = outcome(s.outcome)
        );
    }
    h.push_str("</svg></section>\n");
}

fn outcome(o: StageOutcome) -> &'static str {
    match o {
        StageOutcome::Cached => "cached",
        StageOutcome::Ran => "ran",
        StageOutcome::Failed => "failed",
        StageOutcome::Skipped => "skipped",
        StageOutcome::Interrupted => "interrupted",
    }
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max { s.to_string() } else { format!("{}…", s.chars().take(max - 1).collect::<String>()) }
}

fn humanize_ms(ms: u64) -> String {
    drover_engine::exec::humanize(std::time::Duration::from_millis(ms))
}

/// Text for HTML, in an element or an attribute.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#1d2330}\
h1{margin:0 0 .2em}h2{margin-top:1.8em;border-bottom:1px solid #d9dde5;padding-bottom:.2em}\
code{font:13px ui-monospace,Menlo,Consolas,monospace}.dim{color:#6b7280;font-size:12px}\
.status{display:inline-block;padding:.1em .6em;border-radius:4px;font-weight:600;color:#fff;background:#6b7280}\
.status.ok{background:#15803d}.status.failed{background:#b91c1c}.status.interrupted{background:#b45309}\
.facts{display:grid;grid-template-columns:max-content 1fr;gap:.1em 1em;margin:.8em 0}.facts dt{color:#6b7280}.facts dd{margin:0}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #eceef2;vertical-align:top}\
.num{text-align:right;font-variant-numeric:tabular-nums}tr.failed td{background:#fef2f2}tr.cached td{color:#6b7280}\
svg text{font:11px system-ui,sans-serif;fill:#1d2330}svg .dim{fill:#6b7280}.axis{stroke:#9ca3af}\
rect.ran,.node.ran rect{fill:#60a5fa}rect.failed,.node.failed rect{fill:#f87171}rect.cached,.node.cached rect{fill:#e5e7eb}\
.node.skipped rect,.node.interrupted rect{fill:#fde68a}.node rect{stroke:#374151;stroke-width:.8}.edge{fill:none;stroke:#9ca3af;stroke-width:1.2}\
.spark polyline{fill:none;stroke:#2563eb;stroke-width:1.5}.spark circle{fill:#2563eb}\
.error{color:#b91c1c;white-space:pre-wrap}pre.log{background:#111827;color:#e5e7eb;padding:.8em;overflow:auto;max-height:28em;font-size:12px}\
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eceef2}";

/// Marks the page once every image has decoded, so that a headless browser (and a test) can
/// tell a page that rendered from one with a broken plot.
const SCRIPT: &str = "<script>\
window.addEventListener('error',function(e){document.body.dataset.errors=(document.body.dataset.errors||'')+e.message+';'});\
window.addEventListener('load',function(){var imgs=Array.prototype.slice.call(document.images);\
Promise.all(imgs.map(function(i){return i.decode().then(function(){return true},function(){return false})}))\
.then(function(ok){document.body.dataset.rendered=ok.every(Boolean)?'ok':'broken'})});\
</script>\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_elements_and_attributes() {
        assert_eq!(esc(r#"<b a="1">'&'</b>"#), "&lt;b a=&quot;1&quot;&gt;&#39;&amp;&#39;&lt;/b&gt;");
    }

    #[test]
    fn a_sparkline_spans_its_box_and_marks_the_last_point() {
        let s = sparkline(&[Some(1.0), None, Some(3.0), Some(2.0)]);
        assert_eq!(
            s,
            "<svg class=\"spark\" viewBox=\"0 0 160 28\" width=\"160\" height=\"28\"><polyline points=\"0.0,25.0 106.7,3.0 160.0,14.0 \"/>\
             <circle cx=\"160.0\" cy=\"14.0\" r=\"2.5\"/></svg>"
        );
        assert_eq!(sparkline(&[Some(1.0)]), "<span class=\"dim\">first value</span>");
    }
}
