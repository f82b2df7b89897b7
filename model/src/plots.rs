//! Line plots as PNG files: training curves, the LR range test, the LR schedule.
//!
//! Rendering uses `plotters` on an in-memory RGB buffer; text is drawn by
//! `TextBackend` with `ab_glyph` from a font compiled into the binary
//! (DejaVu Sans, `model/assets/`), so no system font library (fontconfig,
//! freetype) is needed. The buffer is encoded with the `png` crate and written
//! atomically (`<path>.tmp`, then renamed over `<path>`).

use crate::{Error, Result};
use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

/// One named curve of a [`LinePlot`].
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Its legend label.
    pub name: String,
    /// Its `(x, y)` points, in drawing order. Points with a non-finite
    /// coordinate (or `x <= 0` on a log-x plot) are skipped, leaving a gap.
    pub points: Vec<(f64, f64)>,
}

/// A line plot: one or more series on shared axes, with a legend.
#[derive(Clone, Debug)]
pub struct LinePlot<'a> {
    /// The caption at the top.
    pub title: &'a str,
    /// The x-axis description.
    pub x_label: &'a str,
    /// The y-axis description.
    pub y_label: &'a str,
    /// The curves, drawn in order with distinct colours.
    pub series: Vec<Series>,
    /// Whether the x axis is logarithmic (base 10).
    pub log_x: bool,
    /// Vertical dashed markers at these x values, each with its legend label
    /// (e.g. the suggested learning rates of the LR range test).
    pub vlines: Vec<(f64, String)>,
}

/// Width of a line plot in pixels.
pub const PLOT_WIDTH: u32 = 1000;
/// Height of a line plot in pixels.
pub const PLOT_HEIGHT: u32 = 600;

/// The font family name used in text styles (all text uses the embedded font).
pub(crate) const FONT: &str = "sans-serif";

/// DejaVu Sans (Bitstream Vera licence, `model/assets/DejaVuSans-LICENSE.txt`).
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// The embedded font, parsed once.
fn embedded_font() -> Option<&'static FontRef<'static>> {
    static PARSED: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    PARSED.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok()).as_ref()
}

/// Checks that the embedded font parses (it always should: it is compiled in).
pub(crate) fn ensure_font(path: &Path) -> Result<()> {
    embedded_font()
        .map(|_| ())
        .ok_or_else(|| plot_err(path, "the embedded font DejaVuSans.ttf could not be parsed"))
}

/// Width and height in pixels of `text` at pixel size `size` (the font's
/// ascent-to-descent height), the box [`TextBackend`] lays text out in.
pub(crate) fn text_size(text: &str, size: f64) -> (u32, u32) {
    let Some(font) = embedded_font() else { return (0, 0) };
    let f = font.as_scaled(PxScale::from(size as f32));
    let mut w = 0f32;
    let mut prev = None;
    for c in text.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = prev {
            w += f.kern(p, id);
        }
        w += f.h_advance(id);
        prev = Some(id);
    }
    (w.ceil().max(0.0) as u32, (f.ascent() - f.descent()).ceil().max(0.0) as u32)
}

/// A [`BitMapBackend`] whose text is rendered from the embedded font with
/// `ab_glyph`: glyph bearings, kerning and the baseline done right (plotters'
/// own `ab_glyph` feature ignores the left bearing, so "one" came out "on e"),
/// and rotation (the y-axis description) honoured. Everything else is passed through.
pub(crate) struct TextBackend<'a>(pub(crate) BitMapBackend<'a>);

impl DrawingBackend for TextBackend<'_> {
    type ErrorType = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }
    fn ensure_prepared(&mut self) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.ensure_prepared()
    }
    fn present(&mut self) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.present()
    }
    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_pixel(point, color)
    }
    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_line(from, to, style)
    }
    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> std::result::Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        Ok(text_size(text, style.size()))
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> std::result::Result<(), DrawingErrorKind<Self::ErrorType>> {
        let color = style.color();
        let Some(font) = embedded_font() else { return Ok(()) };
        if color.alpha == 0.0 || text.is_empty() {
            return Ok(());
        }
        let scale = PxScale::from(style.size() as f32);
        let f = font.as_scaled(scale);
        let (w, h) = text_size(text, style.size());
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Center => -(w as i32) / 2,
            HPos::Right => -(w as i32),
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -(h as i32) / 2,
            VPos::Bottom => -(h as i32),
        };
        let trans = style.transform();
        let mut caret = 0f32;
        let mut prev = None;
        let mut result: std::result::Result<(), DrawingErrorKind<Self::ErrorType>> = Ok(());
        for c in text.chars() {
            let id = f.glyph_id(c);
            if let Some(p) = prev {
                caret += f.kern(p, id);
            }
            prev = Some(id);
            let glyph = id.with_scale_and_position(scale, ab_glyph::point(caret, f.ascent()));
            caret += f.h_advance(id);
            let Some(outline) = font.outline_glyph(glyph) else { continue };
            let b = outline.px_bounds();
            let (bx, by) = (b.min.x as i32, b.min.y as i32);
            outline.draw(|x, y, cov| {
                if result.is_err() || cov <= 0.0 {
                    return;
                }
                let (tx, ty) = trans.transform(bx + x as i32 + dx, by + y as i32 + dy);
                let px = BackendColor { alpha: color.alpha * cov.min(1.0) as f64, rgb: color.rgb };
                result = self.0.draw_pixel((pos.0 + tx, pos.1 + ty), px);
            });
            std::mem::replace(&mut result, Ok(()))?;
        }
        Ok(())
    }
}

/// A [`Error::Plot`] for `path`.
pub(crate) fn plot_err(path: &Path, msg: impl ToString) -> Error {
    Error::Plot { path: path.to_path_buf(), msg: msg.to_string() }
}

/// Encodes a `width x height` RGB8 buffer as PNG and writes it to `path` atomically
/// ([`crate::checkpoint::write_atomic`]: `<path>.tmp`, then renamed over `path`).
pub(crate) fn write_png_atomic(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    debug_assert_eq!(rgb.len(), width as usize * height as usize * 3);
    if path.file_name().is_none() {
        return Err(plot_err(path, "the path has no file name"));
    }
    let mut encoded = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut encoded, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let png_err = |e: png::EncodingError| plot_err(path, format!("PNG encoding: {e}"));
        let mut writer = enc.write_header().map_err(png_err)?;
        writer.write_image_data(rgb).map_err(png_err)?;
        writer.finish().map_err(png_err)?;
    }
    crate::checkpoint::write_atomic(path, &encoded)
}

/// Series colours (matplotlib's "tab10").
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Marker colours, chosen to stand apart from the first series colours.
const MARKER_PALETTE: [RGBColor; 4] =
    [RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(44, 160, 44), RGBColor(0, 0, 0)];

/// Writes `plot` as a [`PLOT_WIDTH`] x [`PLOT_HEIGHT`] PNG at `path`, atomically.
///
/// Axis ranges are fitted to the finite points and markers. Non-finite points
/// (and `x <= 0` on a log-x axis) are skipped; a series with no points left
/// is listed in the legend as "(no data)"; a single point is drawn as a dot.
/// Errors (an unwritable path, a missing directory) are returned, never panics.
pub fn write_line_plot(path: &Path, plot: &LinePlot) -> Result<()> {
    ensure_font(path)?;
    let (w, h) = (PLOT_WIDTH, PLOT_HEIGHT);
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = TextBackend(BitMapBackend::with_buffer(&mut buf, (w, h))).into_drawing_area();
        draw_line_plot(&root, plot).map_err(|e| plot_err(path, e))?;
        root.present().map_err(|e| plot_err(path, e))?;
    }
    write_png_atomic(path, w, h, &buf)
}

type Root<'b> = DrawingArea<TextBackend<'b>, plotters::coord::Shift>;

/// Whether a point can be placed on the axes.
fn valid(p: (f64, f64), log_x: bool) -> bool {
    p.0.is_finite() && p.1.is_finite() && (!log_x || p.0 > 0.0)
}

/// The maximal runs of consecutive valid points (a skipped point breaks the line).
fn runs(points: &[(f64, f64)], log_x: bool) -> Vec<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for &p in points {
        if valid(p, log_x) {
            cur.push(p);
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `min..max` of `values`, or `None` if there are none.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// A linear axis range around `lo..=hi`, padded by `frac` of the span; a
/// (near-)degenerate range is widened so the axis has a sensible scale.
fn linear_range(ext: Option<(f64, f64)>, frac: f64) -> Range<f64> {
    let Some((lo, hi)) = ext else { return 0.0..1.0 };
    let mid = 0.5 * (lo + hi);
    let span = hi - lo;
    // lo and hi are finite, so span is finite or infinite, never NaN.
    if !span.is_finite() || span <= mid.abs() * 1e-9 {
        let pad = if mid != 0.0 { (mid.abs() * 0.1).min(f64::MAX / 4.0) } else { 1.0 };
        return (mid - pad)..(mid + pad);
    }
    let pad = span * frac;
    (lo - pad)..(hi + pad)
}

/// A log axis range around `lo..=hi` (both > 0), padded by `frac` of the
/// span in decades; a degenerate range is widened to a factor of 2 each side.
fn log_range(ext: Option<(f64, f64)>, frac: f64) -> Range<f64> {
    let Some((lo, hi)) = ext else { return 1.0..10.0 };
    let (llo, lhi) = (lo.log10(), hi.log10());
    let span = lhi - llo;
    if span <= 1e-9 {
        return (lo / 2.0)..(hi * 2.0);
    }
    10f64.powf(llo - span * frac)..10f64.powf(lhi + span * frac)
}

/// A compact tick label: up to 4 significant decimals, scientific when tiny or huge.
fn fmt_num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { format!("{v}") };
    }
    if !(1e-3..1e5).contains(&v.abs()) {
        return fmt_sci(v);
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// Scientific notation with up to 3 significant digits: "1e-5", "2.5e-4".
fn fmt_sci(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return fmt_num(v);
    }
    let s = format!("{v:.2e}");
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let mant = if mant.contains('.') { mant.trim_end_matches('0').trim_end_matches('.') } else { mant };
    format!("{mant}e{exp}")
}

/// One legend entry: its label, colour and whether the line is dashed.
struct LegendEntry {
    label: String,
    color: RGBColor,
    dashed: bool,
}

fn draw_line_plot(root: &Root<'_>, plot: &LinePlot) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let log_x = plot.log_x;
    let series_runs: Vec<Vec<Vec<(f64, f64)>>> = plot.series.iter().map(|s| runs(&s.points, log_x)).collect();
    let all_points = || series_runs.iter().flatten().flatten();
    let vlines: Vec<(f64, &str, bool)> = plot
        .vlines
        .iter()
        .map(|(x, l)| (*x, l.as_str(), x.is_finite() && (!log_x || *x > 0.0)))
        .collect();

    let x_ext = extent(all_points().map(|p| p.0).chain(vlines.iter().filter(|v| v.2).map(|v| v.0)));
    let y_ext = extent(all_points().map(|p| p.1));
    let x_range = if log_x { log_range(x_ext, 0.02) } else { linear_range(x_ext, 0.02) };
    let y_range = linear_range(y_ext, 0.05);
    if !(x_range.start.is_finite() && x_range.end.is_finite() && y_range.start.is_finite() && y_range.end.is_finite()) {
        return Err("the data's range is too large to plot".into());
    }

    if log_x {
        draw_chart(root, plot, &series_runs, &vlines, x_range.clone().log_scale(), x_range, y_range)
    } else {
        draw_chart(root, plot, &series_runs, &vlines, x_range.clone(), x_range, y_range)
    }
}

#[allow(clippy::too_many_arguments)]
fn draw_chart<X>(
    root: &Root<'_>,
    plot: &LinePlot,
    series_runs: &[Vec<Vec<(f64, f64)>>],
    vlines: &[(f64, &str, bool)],
    x_spec: X,
    x_range: Range<f64>,
    y_range: Range<f64>,
) -> std::result::Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let err = |e: &dyn std::fmt::Display| e.to_string();
    // A log axis reaching small or large values labels every tick in
    // scientific notation, so "1e-4" is not followed by "0.001".
    let sci_x = plot.log_x && (x_range.start < 1e-3 || x_range.end >= 1e5);
    let mut chart = ChartBuilder::on(root)
        .caption(plot.title, (FONT, 26))
        .margin(15)
        .margin_right(30)
        .x_label_area_size(55)
        .y_label_area_size(85)
        .build_cartesian_2d(x_spec, y_range.clone())
        .map_err(|e| err(&e))?;

    chart
        .configure_mesh()
        .x_desc(plot.x_label)
        .y_desc(plot.y_label)
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 15))
        .x_label_formatter(&|v| if sci_x { fmt_sci(*v) } else { fmt_num(*v) })
        .y_label_formatter(&|v| fmt_num(*v))
        .x_labels(12)
        .y_labels(10)
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(|e| err(&e))?;

    let mut legend = Vec::new();
    for (i, (s, runs)) in plot.series.iter().zip(series_runs).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let style = color.stroke_width(2);
        for run in runs {
            if run.len() == 1 {
                chart.draw_series(std::iter::once(Circle::new(run[0], 3, color.filled()))).map_err(|e| err(&e))?;
            } else {
                chart.draw_series(LineSeries::new(run.iter().copied(), style)).map_err(|e| err(&e))?;
            }
        }
        let label = if runs.is_empty() { format!("{} (no data)", s.name) } else { s.name.clone() };
        legend.push(LegendEntry { label, color, dashed: false });
    }
    for (i, &(x, label, shown)) in vlines.iter().enumerate() {
        let color = MARKER_PALETTE[i % MARKER_PALETTE.len()];
        if shown {
            let pts = vec![(x, y_range.start), (x, y_range.end)];
            chart
                .draw_series(DashedLineSeries::new(pts, 10, 6, color.stroke_width(2)))
                .map_err(|e| err(&e))?;
        }
        let label = if shown { label.to_string() } else { format!("{label} (not shown)") };
        legend.push(LegendEntry { label, color, dashed: true });
    }
    if !legend.is_empty() {
        draw_legend(&chart.plotting_area().strip_coord_spec(), &legend, series_runs, vlines, plot.log_x, &x_range, &y_range)?;
    }
    Ok(())
}

/// Draws the legend box in the corner of the plotting area that covers the
/// fewest data points.
fn draw_legend(
    area: &Root<'_>,
    entries: &[LegendEntry],
    series_runs: &[Vec<Vec<(f64, f64)>>],
    vlines: &[(f64, &str, bool)],
    log_x: bool,
    x_range: &Range<f64>,
    y_range: &Range<f64>,
) -> std::result::Result<(), String> {
    let (aw, ah) = area.dim_in_pixel();
    let text_style = (FONT, 15).into_font().color(&BLACK);
    let (pad, swatch, row_h) = (8i32, 30i32, 20i32);
    let text_w = entries.iter().map(|e| text_size(&e.label, 15.0).0 as i32).max().unwrap_or(0);
    let box_w = (pad * 3 + swatch + text_w).min(aw as i32);
    let box_h = (pad * 2 + row_h * entries.len() as i32).min(ah as i32);

    // Fraction of the plot (0..1 from the left / from the bottom) of a data point.
    let fx = |x: f64| {
        if log_x {
            (x.log10() - x_range.start.log10()) / (x_range.end.log10() - x_range.start.log10())
        } else {
            (x - x_range.start) / (x_range.end - x_range.start)
        }
    };
    let fy = |y: f64| (y - y_range.start) / (y_range.end - y_range.start);
    let (bw, bh) = (box_w as f64 / aw.max(1) as f64, box_h as f64 / ah.max(1) as f64);
    let margin = 10i32;
    // Corners in preference order: (left?, top?).
    let corners = [(false, true), (true, true), (false, false), (true, false)];
    let cost = |(left, top): (bool, bool)| {
        let (mx, my) = (margin as f64 / aw.max(1) as f64, margin as f64 / ah.max(1) as f64);
        let (x0, x1) = if left { (0.0, bw + 2.0 * mx) } else { (1.0 - bw - 2.0 * mx, 1.0) };
        let (y0, y1) = if top { (1.0 - bh - 2.0 * my, 1.0) } else { (0.0, bh + 2.0 * my) };
        let inside = |p: &(f64, f64)| {
            let (u, v) = (fx(p.0), fy(p.1));
            u >= x0 && u <= x1 && v >= y0 && v <= y1
        };
        let pts = series_runs.iter().flatten().flatten().filter(|p| inside(p)).count();
        let lines = vlines.iter().filter(|v| v.2 && (x0..=x1).contains(&fx(v.0))).count();
        pts + lines * 1000
    };
    let (left, top) = corners.iter().copied().min_by_key(|&c| cost(c)).unwrap_or((false, true));
    let x0 = if left { margin } else { aw as i32 - margin - box_w };
    let y0 = if top { margin } else { ah as i32 - margin - box_h };

    let e = |e: &dyn std::fmt::Display| e.to_string();
    area.draw(&Rectangle::new([(x0, y0), (x0 + box_w, y0 + box_h)], WHITE.mix(0.85).filled())).map_err(|x| e(&x))?;
    area.draw(&Rectangle::new([(x0, y0), (x0 + box_w, y0 + box_h)], RGBColor(160, 160, 160).stroke_width(1)))
        .map_err(|x| e(&x))?;
    for (i, entry) in entries.iter().enumerate() {
        let cy = y0 + pad + row_h * i as i32 + row_h / 2;
        let sx = x0 + pad;
        let style = entry.color.stroke_width(2);
        if entry.dashed {
            for k in 0..3 {
                let a = sx + k * 11;
                area.draw(&PathElement::new(vec![(a, cy), ((a + 7).min(sx + swatch), cy)], style)).map_err(|x| e(&x))?;
            }
        } else {
            area.draw(&PathElement::new(vec![(sx, cy), (sx + swatch, cy)], style)).map_err(|x| e(&x))?;
        }
        let ts = text_style.pos(plotters::style::text_anchor::Pos::new(HPos::Left, VPos::Center));
        area.draw(&Text::new(entry.label.as_str(), (sx + swatch + pad, cy), ts)).map_err(|x| e(&x))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A path `name` in a fresh folder that is removed when the returned guard drops (kept,
    /// and its path printed, with KEEP_PLOTS set, to look at the plots).
    fn tmp(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let mut dir = tempfile::tempdir().unwrap();
        if std::env::var_os("KEEP_PLOTS").is_some() {
            dir.disable_cleanup(true);
            eprintln!("KEEP_PLOTS: {}", dir.path().join(name).display());
        }
        let path = dir.path().join(name);
        (dir, path)
    }

    /// Decodes an RGB8 PNG: (width, height, pixels).
    pub(crate) fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn distinct_colours(rgb: &[u8]) -> usize {
        let mut set: Vec<[u8; 3]> = rgb.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
        set.sort_unstable();
        set.dedup();
        set.len()
    }

    fn lr_plot(rng: &mut impl Rng) -> LinePlot<'static> {
        let n = 200;
        let lr = |i: usize| 1e-5 * 10f64.powf(5.0 * i as f64 / (n - 1) as f64);
        let noisy: Vec<(f64, f64)> = (0..n)
            .map(|i| {
                let t = i as f64 / n as f64;
                (lr(i), 2.3 - 1.2 * t + 4.0 * (t - 0.8).max(0.0).powi(2) * 10.0 + rng.random_range(-0.1..0.1))
            })
            .collect();
        let smooth: Vec<(f64, f64)> = noisy
            .iter()
            .scan(None, |acc: &mut Option<f64>, &(x, y)| {
                let s = acc.map_or(y, |a| 0.9 * a + 0.1 * y);
                *acc = Some(s);
                Some((x, s))
            })
            .collect();
        LinePlot {
            title: "LR range test",
            x_label: "learning rate",
            y_label: "training loss",
            series: vec![Series { name: "loss".into(), points: noisy }, Series { name: "smoothed loss".into(), points: smooth }],
            log_x: true,
            vlines: vec![(0.2, "LRMAX 2.00e-1".into()), (0.02, "LRMIN 2.00e-2".into())],
        }
    }

    #[test]
    fn plots_line_plot_writes_decodable_png() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (_dir, path) = tmp("lr.png");
        write_line_plot(&path, &lr_plot(&mut rng)).unwrap();
        let (w, h, rgb) = decode_png(&path);
        assert_eq!((w, h), (PLOT_WIDTH, PLOT_HEIGHT));
        assert!(distinct_colours(&rgb) > 10, "the plot is (nearly) one colour");
        // The series colours appear.
        for c in [PALETTE[0], PALETTE[1], MARKER_PALETTE[0]] {
            assert!(rgb.chunks_exact(3).any(|p| p == [c.0, c.1, c.2]), "colour {c:?} missing");
        }
        assert!(!path.with_file_name("lr.png.tmp").exists(), "the temporary file was left behind");
    }

    #[test]
    fn plots_linear_plot_with_two_random_series() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let series = (0..2)
            .map(|k| Series {
                name: format!("series {k}"),
                points: (0..30).map(|i| (i as f64, rng.random_range(0.0..100.0))).collect(),
            })
            .collect();
        let plot = LinePlot { title: "Random", x_label: "x", y_label: "y", series, log_x: false, vlines: vec![(12.5, "marker".into())] };
        let (_dir, path) = tmp("random.png");
        write_line_plot(&path, &plot).unwrap();
        let (w, h, rgb) = decode_png(&path);
        assert_eq!((w, h), (PLOT_WIDTH, PLOT_HEIGHT));
        assert!(distinct_colours(&rgb) > 10);
    }

    #[test]
    fn plots_nan_inf_empty_and_single_point_do_not_panic() {
        type Case = (bool, Vec<Series>, Vec<(f64, String)>);
        let cases: Vec<Case> = vec![
            // NaN / inf mixed in, an empty series, a marker at NaN.
            (
                false,
                vec![
                    Series {
                        name: "gappy".into(),
                        points: vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 2.0), (f64::INFINITY, 3.0), (3.0, f64::NEG_INFINITY), (4.0, 0.5), (5.0, 0.7)],
                    },
                    Series { name: "empty".into(), points: vec![] },
                ],
                vec![(f64::NAN, "nan marker".into())],
            ),
            // Nothing at all.
            (false, vec![], vec![]),
            (true, vec![Series { name: "empty".into(), points: vec![] }], vec![]),
            // Only invalid points; on log x, x <= 0 is invalid.
            (true, vec![Series { name: "bad".into(), points: vec![(0.0, 1.0), (-1.0, 2.0), (f64::NAN, f64::NAN)] }], vec![(-3.0, "neg".into())]),
            // A single point, linear and log; a constant series; a huge value.
            (false, vec![Series { name: "one".into(), points: vec![(1.0, 0.25)] }], vec![]),
            (true, vec![Series { name: "one".into(), points: vec![(1e-3, 0.0)] }], vec![(1e-3, "same x".into())]),
            (false, vec![Series { name: "flat".into(), points: vec![(0.0, 5.0), (1.0, 5.0), (2.0, 5.0)] }], vec![]),
            (false, vec![Series { name: "nearly flat".into(), points: vec![(0.0, 1.0), (1.0, 1.0 + 1e-15)] }], vec![]),
            (false, vec![Series { name: "huge".into(), points: vec![(0.0, -1e300), (1.0, 1e300), (2.0, f64::MAX)] }], vec![]),
            // Only a marker.
            (true, vec![], vec![(0.01, "lr".into())]),
        ];
        for (i, (log_x, series, vlines)) in cases.into_iter().enumerate() {
            let (_dir, path) = tmp(&format!("edge-{i}.png"));
            let plot = LinePlot { title: "edge case", x_label: "x", y_label: "y", series, log_x, vlines };
            match write_line_plot(&path, &plot) {
                Ok(()) => {
                    let (w, h, _) = decode_png(&path);
                    assert_eq!((w, h), (PLOT_WIDTH, PLOT_HEIGHT), "case {i}");
                }
                Err(e) => assert!(matches!(e, Error::Plot { .. }), "case {i}: {e}"),
            }
        }
    }

    #[test]
    fn plots_bad_path_is_err() {
        let plot = LinePlot { title: "t", x_label: "x", y_label: "y", series: vec![], log_x: false, vlines: vec![] };
        let path = std::env::temp_dir().join("model-plots-no-such-dir-8c1f").join("x.png");
        let e = write_line_plot(&path, &plot).unwrap_err();
        assert!(e.to_string().contains("model-plots-no-such-dir-8c1f"), "{e}");
        let e = write_line_plot(Path::new("/"), &plot).unwrap_err();
        assert!(matches!(e, Error::Plot { .. }), "{e}");
    }

    #[test]
    fn plots_tick_labels_are_compact() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(0.30000000000000004), "0.3");
        assert_eq!(fmt_num(2.5), "2.5");
        assert_eq!(fmt_num(1e-5), "1e-5");
        assert_eq!(fmt_num(2.5e-4), "2.5e-4");
        assert_eq!(fmt_num(-0.00001), "-1e-5");
        assert_eq!(fmt_num(12345.0), "12345");
        assert_eq!(fmt_num(1e6), "1e6");
        assert_eq!(fmt_sci(0.01), "1e-2");
        assert_eq!(fmt_sci(1.0), "1e0");
        assert_eq!(fmt_sci(0.0), "0");
    }

    /// Renders the example plot to /tmp/viz-example-plot.png for a person to look at:
    /// `cargo test -p model --release --lib plots -- --ignored`.
    #[test]
    #[ignore]
    fn plots_render_example() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        write_line_plot(Path::new("/tmp/viz-example-plot.png"), &lr_plot(&mut rng)).unwrap();
        let series = |name: &str, f: &dyn Fn(f64) -> f64| Series { name: name.into(), points: (1..=24).map(|e| (e as f64, f(e as f64))).collect() };
        write_line_plot(
            Path::new("/tmp/viz-example-plot-acc.png"),
            &LinePlot {
                title: "Accuracy",
                x_label: "epoch",
                y_label: "accuracy (%)",
                series: vec![series("train", &|e| 100.0 - 60.0 * (-e / 5.0).exp()), series("test", &|e| 96.0 - 60.0 * (-e / 6.0).exp())],
                log_x: false,
                vlines: vec![],
            },
        )
        .unwrap();
    }
}
