//! Figures for scaling-law fits (observed points, fitted curves, a compute-optimal frontier), drawn once by a
//! function generic over the plotters backend and written as SVG and PNG.
//!
//! Text is set in DejaVu Sans, embedded in the binary and registered with plotters as the `sans-serif` family
//! the first time a figure is drawn: plotters is built with `ab_glyph`, which loads no system fonts. The SVG
//! output names the family `sans-serif` and leaves the glyphs to the viewer; the PNG output rasterises DejaVu Sans.
//!
//! Log axes are drawn in log10 space on a linear plotters axis with our own tick positions and labels
//! (`1e18`, `1e19`, ...), rather than with plotters' `log_scale()`, whose tick algorithm gives no ticks at all
//! on a range narrower than one decade.

use std::fmt;
use std::iter::Copied;
use std::ops::Range;
use std::path::Path;
use std::slice::Iter;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Size in pixels of the SVG figure.
pub const SVG_SIZE: (u32, u32) = (960, 640);
/// Size in pixels of the PNG figure: the SVG layout scaled by 1.5.
pub const PNG_SIZE: (u32, u32) = (1440, 960);
/// Scale of the PNG layout (fonts, margins, strokes, markers) relative to the SVG one.
const PNG_SCALE: f64 = 1.5;

/// Aimed-for number of labelled ticks on a linear x and y axis.
const X_TICKS: f64 = 8.0;
const Y_TICKS: f64 = 7.0;
/// Upper bound on the ticks generated for one axis, whatever the data.
const MAX_TICKS: usize = 1000;

/// A figure: axes with a title and labels, and the series drawn on them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figure {
    /// Title at the top; empty = none.
    pub title: String,
    /// Label under the x axis; empty = none.
    pub x_label: String,
    /// Label left of the y axis; empty = none.
    pub y_label: String,
    /// Logarithmic x axis; points with x <= 0 are then left out.
    pub log_x: bool,
    /// Logarithmic y axis; points with y <= 0 are then left out.
    pub log_y: bool,
    /// The series, drawn in order (later ones on top).
    pub series: Vec<Series>,
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesStyle {
    /// Filled circles, one per point.
    Points,
    /// A solid line through the points, in the given order.
    Line,
    /// A dashed line through the points, in the given order.
    DashedLine,
}

/// One series of a [`Figure`].
///
/// Points with a non-finite coordinate (or a non-positive one on a log axis) are left out; a line is broken
/// where such a point sits between two drawable ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry; None (or an empty string) = not in the legend.
    pub label: Option<String>,
    /// How the series is drawn.
    pub style: SeriesStyle,
    /// Colour of the line, of the points without a colour of their own, and of the legend entry.
    pub color: (u8, u8, u8),
    /// Per-point colours for [`SeriesStyle::Points`] (same length as `points`); empty = all `color`. Points
    /// past the end of a shorter list take `color`; ignored by the line styles.
    pub point_colors: Vec<(u8, u8, u8)>,
    /// The data, as (x, y).
    pub points: Vec<(f64, f64)>,
}

/// Why a figure could not be drawn or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotError(pub String);

impl fmt::Display for PlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PlotError {}

/// Draws `fig` as an SVG document of [`SVG_SIZE`] pixels.
pub fn render_svg(fig: &Figure) -> Result<String, PlotError> {
    let mut svg = String::new();
    draw(fig, SVGBackend::with_string(&mut svg, SVG_SIZE), 1.0)?;
    Ok(svg)
}

/// Draws `fig` and writes it to `path` as an SVG file of [`SVG_SIZE`] pixels.
pub fn write_svg(fig: &Figure, path: &Path) -> Result<(), PlotError> {
    let svg = render_svg(fig)?;
    std::fs::write(path, svg).map_err(|e| PlotError(format!("cannot write {}: {e}", path.display())))
}

/// Draws `fig` and writes it to `path` as a PNG file of [`PNG_SIZE`] pixels (the SVG layout scaled by 1.5).
///
/// `path` must end in `.png`: plotters picks the encoder from the extension. If drawing fails, a partly
/// written file is removed.
pub fn write_png(fig: &Figure, path: &Path) -> Result<(), PlotError> {
    let is_png = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(PlotError(format!("PNG output path must end in .png: {}", path.display())));
    }
    let result = draw(fig, BitMapBackend::new(path, PNG_SIZE), PNG_SCALE);
    if result.is_err() {
        // The bitmap backend saves what it has when dropped; do not leave a half-drawn figure behind.
        let _ = std::fs::remove_file(path);
    }
    result
}

/// The viridis colour map (perceptually uniform, dark purple to yellow) at `t` in [0, 1]; `t` is clamped, and
/// NaN counts as 0. Linear interpolation between nine anchors of matplotlib's map.
pub fn viridis(t: f64) -> (u8, u8, u8) {
    const ANCHORS: [(f64, f64, f64); 9] = [
        (68.0, 1.0, 84.0),
        (71.0, 45.0, 123.0),
        (59.0, 82.0, 139.0),
        (44.0, 114.0, 142.0),
        (33.0, 144.0, 140.0),
        (39.0, 173.0, 129.0),
        (93.0, 200.0, 99.0),
        (170.0, 220.0, 50.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let pos = t * (ANCHORS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(ANCHORS.len() - 2);
    let f = pos - i as f64;
    let (a, b) = (ANCHORS[i], ANCHORS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round().clamp(0.0, 255.0) as u8;
    (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Registers DejaVu Sans as plotters' `sans-serif` family, once per process.
fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font could not be loaded".to_string())
        })
        .clone()
        .map_err(PlotError)
}

/// Maps a plotters error into a [`PlotError`] that says what was being done.
fn fail<E: fmt::Display>(what: &'static str) -> impl FnOnce(E) -> PlotError {
    move |e| PlotError(format!("cannot draw the {what}: {e}"))
}

fn rgb((r, g, b): (u8, u8, u8)) -> RGBColor {
    RGBColor(r, g, b)
}

/// A value in axis space (log10 of it on a log axis), or None where it cannot be drawn.
fn to_axis(v: f64, log: bool) -> Option<f64> {
    match (v.is_finite(), log) {
        (false, _) => None,
        (true, false) => Some(v),
        (true, true) => (v > 0.0).then(|| v.log10()),
    }
}

/// One series with its data in axis space.
struct Prepared<'f> {
    series: &'f Series,
    label: Option<&'f str>,
    /// Drawable points, with their colours.
    points: Vec<((f64, f64), RGBColor)>,
    /// Runs of consecutive drawable points, for the line styles.
    runs: Vec<Vec<(f64, f64)>>,
}

fn prepare(fig: &Figure) -> Vec<Prepared<'_>> {
    fig.series
        .iter()
        .map(|s| {
            let mut points = Vec::new();
            let mut runs = vec![Vec::new()];
            for (i, &(x, y)) in s.points.iter().enumerate() {
                match (to_axis(x, fig.log_x), to_axis(y, fig.log_y)) {
                    (Some(x), Some(y)) => {
                        points.push(((x, y), rgb(s.point_colors.get(i).copied().unwrap_or(s.color))));
                        if let Some(run) = runs.last_mut() {
                            run.push((x, y));
                        }
                    }
                    _ => runs.push(Vec::new()),
                }
            }
            runs.retain(|r| r.len() >= 2);
            let label = s.label.as_deref().map(str::trim).filter(|l| !l.is_empty());
            Prepared { series: s, label, points, runs }
        })
        .collect()
}

/// One axis in axis space: its range and its ticks. Implements plotters' [`Ranged`] so that the tick
/// positions and labels are ours.
#[derive(Debug, Clone)]
struct Axis {
    lo: f64,
    hi: f64,
    /// Labelled ticks (bold grid lines): position in axis space, label.
    major: Vec<(f64, String)>,
    /// Unlabelled light grid lines.
    minor: Vec<f64>,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64>, log: bool, target_ticks: f64) -> Axis {
        let (lo, hi) = padded_range(values, log);
        let (major, minor) = if log { log_ticks(lo, hi, target_ticks) } else { linear_ticks(lo, hi, target_ticks) };
        Axis { lo, hi, major, minor }
    }
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        // Halves keep the differences finite even for ranges near the ends of f64.
        let t = (v / 2.0 - self.lo / 2.0) / (self.hi / 2.0 - self.lo / 2.0);
        let px = f64::from(limit.0) + t * (f64::from(limit.1) - f64::from(limit.0));
        if px.is_nan() {
            return limit.0;
        }
        // Keep far-off coordinates from turning into huge rasterisation work.
        px.clamp(-1.0e6, 1.0e6).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.major.iter().map(|(p, _)| *p).collect()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for Axis {
    fn format(v: &f64) -> String {
        format_number(*v, 0.0, !(1e-3..1e5).contains(&v.abs()))
    }

    fn format_ext(&self, v: &f64) -> String {
        match self.major.iter().find(|(p, _)| p.to_bits() == v.to_bits()) {
            Some((_, label)) => label.clone(),
            None => Self::format(v),
        }
    }
}

/// The range of `values` (in axis space) with 5% padding on each side; a degenerate range is widened
/// (by half a decade each way on a log axis, by 10% of the value or by 1 on a linear one), and no data
/// gives 0..1 (1..10 on a log axis).
fn padded_range(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    // On a log axis the values are log10s, so an absolute width is a relative one in the data.
    let tiny = if log { 1e-9 } else { lo.abs().max(hi.abs()) * 1e-9 };
    if hi - lo <= tiny {
        let mid = lo / 2.0 + hi / 2.0;
        let half = if log {
            0.5
        } else if mid == 0.0 {
            1.0
        } else {
            mid.abs() * 0.1
        };
        lo = (mid - half).max(f64::MIN);
        hi = (mid + half).min(f64::MAX);
    }
    let pad = (hi / 2.0 - lo / 2.0) * 0.1;
    ((lo - pad).max(f64::MIN), (hi + pad).min(f64::MAX))
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `target` steps over a range of
/// `2 * half_span` (halved so that no range of finite numbers overflows), with its leading digit; None when the
/// span is not a positive finite number.
fn nice_step(half_span: f64, target: f64) -> Option<(f64, u8)> {
    let raw = half_span / (target / 2.0);
    if !(raw.is_finite() && raw > 0.0) {
        return None;
    }
    let mag = 10f64.powf(raw.log10().floor());
    if !(mag.is_finite() && mag > 0.0) {
        return None;
    }
    let (digit, step) = match raw / mag {
        m if m <= 1.0 => (1, mag),
        m if m <= 2.0 => (2, 2.0 * mag),
        m if m <= 5.0 => (5, 5.0 * mag),
        _ => (1, 10.0 * mag),
    };
    step.is_finite().then_some((step, digit))
}

/// Multiples of `step` within lo..=hi, give or take rounding (at most [`MAX_TICKS`] + 1 of them).
fn multiples(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let (first, last) = ((lo / step - 1e-9).ceil(), (hi / step + 1e-9).floor());
    if !(first.is_finite() && last.is_finite()) || last < first {
        return Vec::new();
    }
    let n = (last - first).min(MAX_TICKS as f64) as usize;
    let slack = step * 1e-9;
    (0..=n).map(|i| (first + i as f64) * step).filter(|v| (lo - slack..=hi + slack).contains(v)).collect()
}

/// Shortest decimal (or scientific, `1.5e6`) form of `v` within `tol` of it.
fn format_number(v: f64, tol: f64, scientific: bool) -> String {
    if v.abs() <= tol {
        return "0".to_string();
    }
    for p in 0..=8 {
        let s = if scientific { format!("{v:.p$e}") } else { format!("{v:.p$}") };
        if s.parse::<f64>().is_ok_and(|back| (back - v).abs() <= tol) {
            return s;
        }
    }
    if scientific { format!("{v:e}") } else { format!("{v}") }
}

/// Whether the labels of an axis whose largest tick is `largest` in magnitude are better in scientific form.
fn wants_scientific(largest: f64) -> bool {
    largest >= 1e5 || (largest > 0.0 && largest < 1e-3)
}

type Ticks = (Vec<(f64, String)>, Vec<f64>);

/// Labelled ticks at nice multiples, and light lines at a fifth (a quarter for steps of 2) of their spacing.
fn linear_ticks(lo: f64, hi: f64, target: f64) -> Ticks {
    let Some((step, digit)) = nice_step(hi / 2.0 - lo / 2.0, target) else {
        return (Vec::new(), Vec::new());
    };
    let values = multiples(lo, hi, step);
    let scientific = wants_scientific(values.iter().fold(0.0, |m: f64, v| m.max(v.abs())));
    let tol = step * 1e-6;
    let major = values.iter().map(|&v| (v, format_number(v, tol, scientific))).collect();
    let minor_step = step / if digit == 2 { 4.0 } else { 5.0 };
    let minor =
        multiples(lo, hi, minor_step).into_iter().filter(|v| ((v / step).round() * step - v).abs() > tol).collect();
    (major, minor)
}

/// Label of m·10^k: plain decimal or `m`e`k`.
fn pow10_label(m: u32, k: i32, scientific: bool) -> String {
    if scientific {
        return format!("{m}e{k}");
    }
    let v = f64::from(m) * 10f64.powi(k);
    format!("{v:.prec$}", prec = k.min(0).unsigned_abs() as usize)
}

/// Ticks of a log axis whose range lo..hi is in log10 space: whole decades when at least three fit (thinned
/// to about eight, light lines at 2..9 or at the skipped decades), else 1-2-5 in each decade when at least
/// three of those fit, else about `target` nice linear steps in value space (a range of a decade or less, such
/// as losses between 2 and 5).
fn log_ticks(lo: f64, hi: f64, target: f64) -> Ticks {
    let eps = (hi - lo) * 1e-9;
    let (k0, k1) = (lo.floor().max(-400.0) as i32, hi.ceil().min(400.0) as i32);
    let position = |(m, k): (u32, i32)| f64::from(m).log10() + f64::from(k);
    let at = |mantissas: &[u32]| -> Vec<(u32, i32)> {
        (k0..=k1)
            .flat_map(|k| mantissas.iter().map(move |&m| (m, k)))
            .filter(|&mk| (lo - eps..=hi + eps).contains(&position(mk)))
            .collect()
    };
    let labelled = |ticks: Vec<(u32, i32)>| -> Vec<(f64, String)> {
        let scientific = ticks.iter().any(|&(_, k)| !(-3..=4).contains(&k));
        ticks.into_iter().map(|mk| (position(mk), pow10_label(mk.0, mk.1, scientific))).collect()
    };

    let decades = at(&[1]);
    if decades.len() >= 3 {
        let stride = decades.len().div_ceil(8) as i32;
        let (major, skipped): (Vec<_>, Vec<_>) = decades.into_iter().partition(|&(_, k)| k.rem_euclid(stride) == 0);
        let minor = if stride == 1 { at(&[2, 3, 4, 5, 6, 7, 8, 9]) } else { skipped };
        return (labelled(major), minor.into_iter().map(position).collect());
    }
    let one_two_five = at(&[1, 2, 5]);
    if one_two_five.len() >= 3 {
        return (labelled(one_two_five), at(&[3, 4, 6, 7, 8, 9]).into_iter().map(position).collect());
    }
    // About a decade or less: evenly spaced values, placed at their logarithms.
    let (vlo, vhi) = (10f64.powf(lo), 10f64.powf(hi));
    let Some((step, _)) = nice_step(vhi / 2.0 - vlo / 2.0, target) else {
        return (Vec::new(), Vec::new());
    };
    let values: Vec<f64> = multiples(vlo, vhi, step).into_iter().filter(|v| *v > 0.0).collect();
    let scientific = wants_scientific(values.iter().fold(0.0, |m: f64, v| m.max(*v)));
    let major = values.iter().map(|&v| (v.log10(), format_number(v, step * 1e-6, scientific))).collect();
    (major, Vec::new())
}

/// A dashed line through `run`, with dashes of `dash` pixels and gaps of `gap`.
fn dashed(
    run: &[(f64, f64)],
    dash: i32,
    gap: i32,
    style: ShapeStyle,
) -> DashedLineSeries<Copied<Iter<'_, (f64, f64)>>, i32> {
    DashedLineSeries::new(run.iter().copied(), dash, gap, style)
}

/// Draws `fig` on `backend`; `scale` multiplies every size (fonts, margins, strokes, markers) so that the
/// same layout can be drawn at several resolutions.
fn draw<DB: DrawingBackend>(fig: &Figure, backend: DB, scale: f64) -> Result<(), PlotError> {
    ensure_font()?;
    let px = |v: f64| ((v * scale).round() as i32).max(1);
    let font = |size: f64| TextStyle::from(FontDesc::new(FontFamily::SansSerif, size * scale, FontStyle::Normal));

    let prepared = prepare(fig);
    let all_points = || prepared.iter().flat_map(|p| p.points.iter().map(|&(xy, _)| xy));
    let x_axis = Axis::new(all_points().map(|(x, _)| x), fig.log_x, X_TICKS);
    let y_axis = Axis::new(all_points().map(|(_, y)| y), fig.log_y, Y_TICKS);
    let no_data = all_points().next().is_none();

    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(fail("background"))?;
    let (width, height) = root.dim_in_pixel();

    // Label areas sized from the text they hold. Plotters sets tick labels twice the tick length from the
    // axis and the axis label at the outer edge of the area.
    let tick_font = font(16.0);
    let desc_font = font(18.0);
    let tick_len = px(5.0);
    let text_size = |text: &str, style: &TextStyle| {
        root.estimate_text_size(text, style).map(|(w, h)| (w as i32, h as i32)).map_err(fail("text"))
    };
    let mut y_tick_width = 0;
    for (_, label) in &y_axis.major {
        y_tick_width = y_tick_width.max(text_size(label, &tick_font)?.0);
    }
    let tick_height = text_size("0123456789e", &tick_font)?.1;
    let desc_height = text_size("Xg", &desc_font)?.1;
    let desc_room = |label: &str| if label.trim().is_empty() { 0 } else { desc_height + px(12.0) };
    let y_area = (2 * tick_len + y_tick_width + px(8.0) + desc_room(&fig.y_label)).min(width as i32 * 2 / 5);
    let x_area = (2 * tick_len + tick_height + px(8.0) + desc_room(&fig.x_label)).min(height as i32 * 2 / 5);

    let mut builder = ChartBuilder::on(&root);
    builder.margin(px(16.0)).margin_right(px(32.0)).x_label_area_size(x_area).y_label_area_size(y_area);
    if !fig.title.trim().is_empty() {
        builder.caption(fig.title.trim(), font(26.0));
    }
    let mut chart = builder.build_cartesian_2d(x_axis, y_axis).map_err(fail("chart"))?;

    let mut mesh = chart.configure_mesh();
    mesh.label_style(tick_font.clone())
        .axis_desc_style(desc_font.clone())
        .bold_line_style(BLACK.mix(0.14).stroke_width(1))
        .light_line_style(BLACK.mix(0.05).stroke_width(1))
        .axis_style(BLACK.stroke_width(px(1.0) as u32))
        .set_all_tick_mark_size(tick_len);
    if !fig.x_label.trim().is_empty() {
        mesh.x_desc(fig.x_label.trim());
    }
    if !fig.y_label.trim().is_empty() {
        mesh.y_desc(fig.y_label.trim());
    }
    mesh.draw().map_err(fail("axes"))?;

    let radius = px(3.0);
    let stroke = px(2.0) as u32;
    let line_style = move |c: RGBColor| c.stroke_width(stroke);
    let (dash, gap) = (px(8.0), px(5.0));
    let legend_len = px(28.0);
    for p in &prepared {
        let color = rgb(p.series.color);
        match p.series.style {
            SeriesStyle::Points => {
                if p.points.is_empty() && p.label.is_none() {
                    continue;
                }
                let anno = chart
                    .draw_series(p.points.iter().map(|&(xy, c)| Circle::new(xy, radius, c.filled())))
                    .map_err(fail("points"))?;
                if let Some(label) = p.label {
                    anno.label(label)
                        .legend(move |(x, y)| Circle::new((x + legend_len / 2, y), radius, color.filled()));
                }
            }
            SeriesStyle::Line => {
                let mut runs = p.runs.iter();
                if let Some(label) = p.label {
                    // The legend entry goes with the first run, or with an empty series when nothing is drawable.
                    let anno = match runs.next() {
                        Some(run) => chart.draw_series(LineSeries::new(run.iter().copied(), line_style(color))),
                        None => chart.draw_series(std::iter::empty::<PathElement<(f64, f64)>>()),
                    }
                    .map_err(fail("line"))?;
                    anno.label(label)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + legend_len, y)], line_style(color)));
                }
                for run in runs {
                    chart.draw_series(LineSeries::new(run.iter().copied(), line_style(color))).map_err(fail("line"))?;
                }
            }
            SeriesStyle::DashedLine => {
                let mut runs = p.runs.iter();
                if let Some(label) = p.label {
                    let anno = match runs.next() {
                        Some(run) => chart.draw_series(dashed(run, dash, gap, line_style(color))),
                        None => chart.draw_series(std::iter::empty::<PathElement<(f64, f64)>>()),
                    }
                    .map_err(fail("dashed line"))?;
                    anno.label(label).legend(move |(x, y)| {
                        DashedPathElement::new(vec![(x, y), (x + legend_len, y)], dash, gap, line_style(color))
                    });
                }
                for run in runs {
                    chart.draw_series(dashed(run, dash, gap, line_style(color))).map_err(fail("dashed line"))?;
                }
            }
        }
    }

    if no_data {
        let area = chart.plotting_area().strip_coord_spec();
        let (w, h) = area.dim_in_pixel();
        let grey = BLACK.mix(0.45);
        let style = font(20.0).color(&grey).pos(Pos::new(HPos::Center, VPos::Center));
        area.draw_text("no data", &style, (w as i32 / 2, h as i32 / 2)).map_err(fail("empty-figure note"))?;
    }

    if prepared.iter().any(|p| p.label.is_some()) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .margin(px(10.0))
            .legend_area_size(px(40.0))
            .label_font(font(16.0))
            .background_style(WHITE.filled())
            .border_style(BLACK.mix(0.6).stroke_width(px(1.0) as u32))
            .draw()
            .map_err(fail("legend"))?;
    }

    root.present().map_err(|e| PlotError(format!("cannot write the figure: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scaling-law figure as `scaling_law_fit` draws it: runs coloured by model size, one fitted curve per
    /// size, and the compute-optimal frontier.
    fn scaling_figure() -> Figure {
        let sizes = [1e7, 3e7, 1e8, 3e8, 1e9];
        let loss = |n: f64, c: f64| {
            let d = c / (6.0 * n);
            1.7 + 400.0 / n.powf(0.34) + 410.0 / d.powf(0.28)
        };
        let mut series = Vec::new();
        let mut points = Vec::new();
        let mut point_colors = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let color = viridis(i as f64 / (sizes.len() - 1) as f64);
            let computes: Vec<f64> = (0..=12).map(|j| 6.0 * n * 2e8 * 10f64.powf(j as f64 / 4.0)).collect();
            for &c in computes.iter().step_by(3) {
                points.push((c, loss(n, c) * 1.01));
                point_colors.push(color);
            }
            series.push(Series {
                label: Some(format!("fit N={n:.0e}")),
                style: SeriesStyle::Line,
                color,
                point_colors: Vec::new(),
                points: computes.iter().map(|&c| (c, loss(n, c))).collect(),
            });
        }
        series.insert(
            0,
            Series {
                label: Some("observed runs".to_string()),
                style: SeriesStyle::Points,
                color: (90, 90, 90),
                point_colors,
                points,
            },
        );
        series.push(Series {
            label: Some("compute-optimal frontier".to_string()),
            style: SeriesStyle::DashedLine,
            color: (214, 39, 40),
            point_colors: Vec::new(),
            points: (0..=8)
                .map(|j| {
                    let c = 1e16 * 10f64.powf(j as f64 / 2.0);
                    let n = sizes
                        .iter()
                        .copied()
                        .fold(sizes[0], |best, n| if loss(n, c) < loss(best, c) { n } else { best });
                    (c, loss(n, c))
                })
                .collect(),
        });
        Figure {
            title: "Scaling law fit: loss vs compute".to_string(),
            x_label: "training compute C (FLOPs)".to_string(),
            y_label: "validation loss".to_string(),
            log_x: true,
            log_y: true,
            series,
        }
    }

    fn png_dimensions(bytes: &[u8]) -> (u32, u32) {
        assert!(bytes.len() > 24, "PNG too short: {} bytes", bytes.len());
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR");
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        (be(&bytes[16..20]), be(&bytes[20..24]))
    }

    /// Writes `fig` as SVG and PNG under `dir`, checks the PNG header, and returns the SVG text.
    fn write_both(fig: &Figure, dir: &Path, name: &str) -> String {
        let svg_path = dir.join(format!("{name}.svg"));
        let png_path = dir.join(format!("{name}.png"));
        write_svg(fig, &svg_path).unwrap();
        write_png(fig, &png_path).unwrap();
        assert_eq!(png_dimensions(&std::fs::read(&png_path).unwrap()), PNG_SIZE);
        let svg = std::fs::read_to_string(&svg_path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(r#"width="960" height="640""#));
        svg
    }

    #[test]
    fn scaling_figure_renders_to_svg_and_png() {
        let fig = scaling_figure();
        let dir = tempfile::tempdir().unwrap();
        let svg = write_both(&fig, dir.path(), "scaling");

        assert!(svg.contains("Scaling law fit: loss vs compute"));
        assert!(svg.contains("training compute C (FLOPs)"));
        assert!(svg.contains("validation loss"));
        for label in ["observed runs", "fit N=1e7", "fit N=1e9", "compute-optimal frontier"] {
            assert!(svg.contains(label), "legend label {label:?} missing");
        }
        // One filled circle per observed run, plus its legend marker.
        let observed = fig.series[0].points.len();
        assert_eq!(svg.matches("<circle").count(), observed + 1);
        // The per-point colours are used: viridis' first and last colours both appear as fills.
        assert!(svg.contains(r##"fill="#440154""##));
        assert!(svg.contains(r##"fill="#FDE725""##) || svg.contains(r##"fill="#fde725""##));
        // Lines are polylines; the dashed frontier is many short ones in its own colour.
        assert!(svg.matches(r##"stroke="#D62728""##).count() + svg.matches(r##"stroke="#d62728""##).count() > 10);
        // Log-axis tick labels in the 1e18 style.
        assert!(svg.contains(">\n1e18\n<") || svg.contains(">1e18<"), "no 1e18 tick label");

        if let Some(out) = std::env::var_os("DROVER_PLOT_EXAMPLE_DIR") {
            let out = Path::new(&out);
            write_svg(&fig, &out.join("plot_example.svg")).unwrap();
            write_png(&fig, &out.join("plot_example.png")).unwrap();
        }
    }

    #[test]
    fn render_svg_matches_written_file() {
        let fig = scaling_figure();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.svg");
        write_svg(&fig, &path).unwrap();
        assert_eq!(render_svg(&fig).unwrap(), std::fs::read_to_string(&path).unwrap());
    }

    #[test]
    fn degenerate_inputs_draw_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let series = |style, points: Vec<(f64, f64)>| Series {
            label: Some("s".to_string()),
            style,
            color: (31, 119, 180),
            point_colors: Vec::new(),
            points,
        };
        let figure = |log: bool, series: Vec<Series>| Figure {
            title: "degenerate".to_string(),
            x_label: "x".to_string(),
            y_label: "y".to_string(),
            log_x: log,
            log_y: log,
            series,
        };
        let nan = f64::NAN;
        let cases = [
            ("empty", figure(false, Vec::new())),
            ("empty_log", figure(true, Vec::new())),
            ("untitled", Figure::default()),
            ("nan_only", figure(false, vec![series(SeriesStyle::Points, vec![(nan, nan), (f64::INFINITY, 1.0)])])),
            ("nan_line", figure(true, vec![series(SeriesStyle::DashedLine, vec![(nan, 1.0), (2.0, nan)])])),
            ("one_point", figure(false, vec![series(SeriesStyle::Points, vec![(3.0, 4.0)])])),
            ("one_point_log", figure(true, vec![series(SeriesStyle::Line, vec![(1e20, 2.5)])])),
            ("same_x", figure(false, vec![series(SeriesStyle::Line, vec![(5.0, 1.0), (5.0, 2.0), (5.0, 3.0)])])),
            ("zero_everywhere", figure(false, vec![series(SeriesStyle::Points, vec![(0.0, 0.0), (0.0, 0.0)])])),
            (
                "non_positive_on_log",
                figure(
                    true,
                    vec![series(
                        SeriesStyle::Line,
                        vec![(0.0, 1.0), (-1.0, 2.0), (10.0, 0.0), (100.0, 3.0), (1000.0, 4.0)],
                    )],
                ),
            ),
            ("huge_range", figure(false, vec![series(SeriesStyle::Line, vec![(-1e308, f64::MAX), (1e308, -1e308)])])),
            (
                "tiny_log_range",
                figure(true, vec![series(SeriesStyle::Points, vec![(1e18, 2.0), (1.0000001e18, 2.0000001)])]),
            ),
            (
                "short_colors",
                figure(
                    false,
                    vec![Series {
                        point_colors: vec![(1, 2, 3)],
                        ..series(SeriesStyle::Points, vec![(1.0, 1.0), (2.0, 2.0)])
                    }],
                ),
            ),
        ];
        for (name, fig) in &cases {
            let svg = write_both(fig, dir.path(), name);
            assert!(svg.contains("degenerate") || fig.title.is_empty(), "{name}: title missing");
        }
        let no_data = render_svg(&cases[3].1).unwrap();
        assert!(no_data.contains("no data"), "an all-NaN figure should say so");
        assert!(no_data.contains(">\ns\n<"), "a labelled series with no drawable points keeps its legend entry");
        assert!(!render_svg(&cases[5].1).unwrap().contains("no data"));
    }

    #[test]
    fn png_path_must_end_in_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("figure.jpg");
        let err = write_png(&scaling_figure(), &path).unwrap_err();
        assert!(err.to_string().contains(".png"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no").join("such").join("dir");
        assert!(write_svg(&scaling_figure(), &missing.join("f.svg")).is_err());
        assert!(write_png(&scaling_figure(), &missing.join("f.png")).is_err());
    }

    #[test]
    fn viridis_runs_from_purple_to_yellow() {
        assert_eq!(viridis(0.0), (68, 1, 84));
        assert_eq!(viridis(1.0), (253, 231, 37));
        assert_eq!(viridis(-3.0), viridis(0.0));
        assert_eq!(viridis(7.0), viridis(1.0));
        assert_eq!(viridis(f64::NAN), viridis(0.0));
        assert_eq!(viridis(0.5), (33, 144, 140));
        // Perceptually ordered: luminance rises strictly along the map.
        let luminance = |(r, g, b): (u8, u8, u8)| 0.2126 * f64::from(r) + 0.7152 * f64::from(g) + 0.0722 * f64::from(b);
        let samples: Vec<f64> = (0..=50).map(|i| luminance(viridis(f64::from(i) / 50.0))).collect();
        assert!(samples.windows(2).all(|w| w[1] > w[0]), "{samples:?}");
    }

    #[test]
    fn log_ticks_label_decades() {
        let (major, minor) = log_ticks(17.8, 21.2, 8.0);
        let labels: Vec<&str> = major.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["1e18", "1e19", "1e20", "1e21"]);
        assert_eq!(major[1].0, 19.0);
        assert_eq!(minor.len(), 3 + 8 * 3, "7e17..9e17, then 2..9 in the decades 1e18..1e20");

        // Many decades are thinned to about eight labels, with the skipped decades as light lines.
        let (major, minor) = log_ticks(-0.5, 20.5, 8.0);
        assert!((3..=10).contains(&major.len()), "{major:?}");
        assert_eq!(major.len() + minor.len(), 21);

        // Between one and two decades: 1-2-5 steps, in plain decimals for moderate values.
        let labels: Vec<String> = log_ticks(0.2, 1.9, 8.0).0.into_iter().map(|(_, l)| l).collect();
        assert_eq!(labels, ["2", "5", "10", "20", "50"]);
        let labels: Vec<String> = log_ticks(-2.9, -1.1, 8.0).0.into_iter().map(|(_, l)| l).collect();
        assert_eq!(labels, ["0.002", "0.005", "0.01", "0.02", "0.05"]);

        // Narrower than a decade still gets labelled ticks.
        let (major, _) = log_ticks(2.0f64.log10(), 4.0f64.log10(), 8.0);
        let labels: Vec<&str> = major.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["2", "2.5", "3", "3.5", "4"]);
        assert!((major[1].0 - 2.5f64.log10()).abs() < 1e-12);
        let (major, _) = log_ticks(18.50, 18.55, 8.0);
        assert!(major.len() >= 4, "{major:?}");
        assert!(major.iter().all(|(p, l)| (18.50..=18.55).contains(p) && l.contains("e18")), "{major:?}");
    }

    #[test]
    fn linear_ticks_are_nice_and_compact() {
        let labels = |lo, hi| -> Vec<String> { linear_ticks(lo, hi, 8.0).0.into_iter().map(|(_, l)| l).collect() };
        assert_eq!(labels(-0.05, 1.05), ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        assert_eq!(labels(0.0, 3.5e6), ["0", "5e5", "1e6", "1.5e6", "2e6", "2.5e6", "3e6", "3.5e6"]);
        assert_eq!(labels(2.02, 2.09), ["2.02", "2.03", "2.04", "2.05", "2.06", "2.07", "2.08", "2.09"]);
        assert!(linear_ticks(0.0, f64::INFINITY, 8.0).0.is_empty());
    }

    #[test]
    fn ranges_are_padded_and_widened() {
        let (lo, hi) = padded_range([0.0, 10.0].into_iter(), false);
        assert!((lo + 0.5).abs() < 1e-12 && (hi - 10.5).abs() < 1e-12, "{lo} {hi}");
        assert_eq!(padded_range(std::iter::empty(), false), (0.0, 1.0));
        let (lo, hi) = padded_range([5.0, 5.0].into_iter(), false);
        assert!(lo < 4.6 && hi > 5.4, "{lo} {hi}");
        let (lo, hi) = padded_range([0.0].into_iter(), false);
        assert!(lo <= -1.0 && hi >= 1.0, "{lo} {hi}");
        let (lo, hi) = padded_range([18.0].into_iter(), true);
        assert!(lo <= 17.5 && hi >= 18.5, "{lo} {hi}");
        let (lo, hi) = padded_range([-1e308, 1e308].into_iter(), false);
        assert!(lo.is_finite() && hi.is_finite() && lo < hi);
    }
}
