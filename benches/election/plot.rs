//! Pictures of what the tables say, drawn by the run itself into SVG files (by default
//! `docs/benchmarks/`, beside the page that shows them): the distribution (CDF) of the
//! graceful handover and crash failover samples per backend, a line per library, and
//! the contention section's timeline of who led when.
//!
//! SVG only, through plotters' SVG backend without its font feature: text is written
//! as SVG `<text>` and laid out by whatever shows the picture, so the run needs no
//! system font. File names are stable (`handover-kube.svg`, `crash-kube.svg`,
//! `contention.svg`), so the page links them once.

use std::path::{Path, PathBuf};

use leaderelection_testkit::checker::{Report, Violation};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{Figure, ETCD_ELECTION, ETCD_NATIVE, ETCD_RECORD, KUBE};
use leaderelection_bench_driver::stats::fmt_secs;

/// The repository root: the benchmark package is `benches/` in it.
fn repo_root() -> PathBuf {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench.parent().unwrap_or(bench).to_path_buf()
}

/// Where the pictures go without `--plots`: `docs/benchmarks/`, beside the page.
pub fn default_dir() -> PathBuf {
    repo_root().join("docs").join("benchmarks")
}

/// The directory of `--plots DIR`: a relative one is taken from the repository root,
/// since cargo runs the benchmark in `benches/`.
pub fn resolve(dir: &str) -> PathBuf {
    let dir = Path::new(dir);
    if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        repo_root().join(dir)
    }
}

/// A Markdown image of a written picture: relative to `docs/` when it is under it (as
/// docs/benchmarks.md links it), else its path.
fn image(alt: &str, path: &Path) -> String {
    let docs = repo_root().join("docs");
    let link = path.strip_prefix(&docs).unwrap_or(path);
    format!("![{alt}]({})\n", link.display())
}

/// Writes one picture, creating its directory; says on standard error what it wrote
/// or why it could not, and returns the Markdown image (empty on failure).
fn write(
    dir: &Path,
    file: &str,
    alt: &str,
    draw: impl FnOnce(&Path) -> Result<(), String>,
) -> String {
    let path = dir.join(file);
    let written = std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
        .and_then(|()| draw(&path));
    match written {
        Ok(()) => {
            eprintln!("  wrote {}", path.display());
            image(alt, &path)
        }
        Err(e) => {
            eprintln!("  no picture {}: {e}", path.display());
            String::new()
        }
    }
}

fn drawing<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// A backend's name as a file name's part.
fn slug(backend: &str) -> String {
    match backend {
        KUBE => "kube".into(),
        ETCD_RECORD => "etcd-record".into(),
        ETCD_NATIVE => "etcd-native".into(),
        ETCD_ELECTION => "etcd-election".into(),
        other => other
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect(),
    }
}

// ---- colours and text -------------------------------------------------------------

/// Ours: black, drawn thicker.
const OURS: RGBColor = RGBColor(0, 0, 0);
/// The peers, in the order of the tables: Okabe and Ito's colour-blind safe palette
/// (without its yellow, too light on white).
const PEERS: [RGBColor; 7] = [
    RGBColor(213, 94, 0),
    RGBColor(0, 114, 178),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
];
const GRID: RGBColor = RGBColor(225, 225, 225);
const MUTED: RGBColor = RGBColor(110, 110, 110);
const TERM: [RGBColor; 2] = [RGBColor(66, 133, 196), RGBColor(31, 87, 148)];
const FROZEN: RGBColor = RGBColor(175, 175, 175);
const OVERLAP: RGBColor = RGBColor(220, 0, 0);
const SLOW: RGBColor = RGBColor(255, 236, 170);
const RESTART: RGBColor = RGBColor(0, 140, 70);

fn font(size: f64) -> TextStyle<'static> {
    ("sans-serif", size).into_font().color(&BLACK)
}

fn bold(size: f64) -> TextStyle<'static> {
    FontDesc::new(FontFamily::SansSerif, size, FontStyle::Bold).color(&BLACK)
}

fn anchored(style: TextStyle<'static>, h: HPos) -> TextStyle<'static> {
    style.pos(Pos::new(h, VPos::Center))
}

/// A tick of a time axis: `100 µs`, `2 ms`, `1.5 s`.
fn fmt_tick(s: f64) -> String {
    let (v, unit) = if s >= 1.0 {
        (s, "s")
    } else if s >= 1e-3 {
        (s * 1e3, "ms")
    } else {
        (s * 1e6, "µs")
    };
    let text = format!("{v:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {unit}")
}

/// `head: rest` split at the first colon: a table's caption as a title and a subtitle.
fn split_title(title: &str) -> (&str, &str) {
    title.split_once(": ").unwrap_or((title, ""))
}

// ---- failover distributions -------------------------------------------------------

/// One library's samples on one backend.
struct Curve<'a> {
    library: &'a str,
    ours: bool,
    /// Seconds, in the order taken; may be empty (not measured) or hold values ≤ 0.
    samples: &'a [f64],
    /// The table's note, shown for a library without samples.
    note: &'a str,
}

/// Draws a figure of the failover section (`stem`: `handover` or `crash`) as one
/// picture per backend, a CDF line per library, and returns their Markdown images
/// (and a blank line after them).
pub(crate) fn figure(dir: &Path, stem: &str, fig: &Figure) -> String {
    let mut backends: Vec<&str> = Vec::new();
    for r in &fig.rows {
        if !backends.contains(&r.backend.as_str()) {
            backends.push(&r.backend);
        }
    }
    let (head, rest) = split_title(&fig.title);
    let mut out = String::new();
    for backend in backends {
        let curves: Vec<Curve> = fig
            .rows
            .iter()
            .filter(|r| r.backend == backend)
            .map(|r| Curve {
                library: &r.library,
                ours: r.ours,
                samples: r.outcome.samples.values(),
                note: &r.note,
            })
            .collect();
        if curves.iter().all(|c| c.samples.is_empty()) {
            continue;
        }
        let title = format!("{head} — {backend}");
        let file = format!("{stem}-{}.svg", slug(backend));
        out.push_str(&write(dir, &file, &title, |path| {
            cdf(path, &title, rest, &curves)
        }));
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// The x range of a log axis over the samples: whole decades around the positive
/// ones.
fn decades(curves: &[Curve]) -> (f64, f64) {
    let positive = curves
        .iter()
        .flat_map(|c| c.samples.iter().copied())
        .filter(|v| *v > 0.0 && v.is_finite());
    let (min, max) = positive.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !min.is_finite() {
        return (1e-3, 1.0);
    }
    let lo = 10f64.powf(min.log10().floor());
    let hi = 10f64.powf(max.log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

fn cdf(path: &Path, title: &str, subtitle: &str, curves: &[Curve]) -> Result<(), String> {
    const WIDTH: u32 = 1000;
    const HEADER: u32 = 62;
    const CHART: u32 = 460;
    const ENTRY: u32 = 21;
    let legend = 16 + ENTRY * curves.len() as u32;
    let root = SVGBackend::new(path, (WIDTH, HEADER + CHART + legend)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let (header, rest) = root.split_vertically(HEADER);
    let (chart_area, legend_area) = rest.split_vertically(CHART);
    header
        .draw(&Text::new(
            title.to_string(),
            (20, 18),
            anchored(bold(19.0), HPos::Left),
        ))
        .map_err(drawing)?;
    let n = curves.iter().map(|c| c.samples.len()).max().unwrap_or(0);
    header
        .draw(&Text::new(
            format!("{subtitle}; {n} elections per library"),
            (20, 44),
            anchored(font(15.0).color(&MUTED), HPos::Left),
        ))
        .map_err(drawing)?;

    let (lo, hi) = decades(curves);
    let mut chart = ChartBuilder::on(&chart_area)
        .margin_left(12)
        .margin_right(36)
        .margin_top(8)
        .x_label_area_size(46)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (lo * (1.0 - 1e-9)..hi * (1.0 + 1e-9)).log_scale(),
            0f64..1f64,
        )
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .light_line_style(GRID.mix(0.6))
        .bold_line_style(GRID)
        .x_labels(12)
        .y_labels(11)
        .y_max_light_lines(1)
        .x_label_formatter(&|x| fmt_tick(*x))
        .y_label_formatter(&|y| format!("{:.0} %", y * 100.0))
        .x_desc("time (log scale)")
        .y_desc("elections at or below")
        .label_style(font(14.0))
        .axis_desc_style(font(15.0))
        .draw()
        .map_err(drawing)?;
    // The two quantiles of the tables.
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        chart
            .draw_series(DashedLineSeries::new(
                [(lo, q), (hi, q)],
                6,
                4,
                MUTED.mix(0.8).stroke_width(1),
            ))
            .map_err(drawing)?;
        let (x, y) = chart.backend_coord(&(hi, q));
        root.draw(&Text::new(
            label,
            (x + 4, y),
            anchored(font(13.0).color(&MUTED), HPos::Left),
        ))
        .map_err(drawing)?;
    }

    let mut peers = PEERS.iter().cycle();
    let mut entries = Vec::new();
    for c in curves {
        let color = if c.ours {
            OURS
        } else {
            *peers.next().unwrap_or(&MUTED)
        };
        let width = if c.ours { 3 } else { 2 };
        let mut v: Vec<f64> = c.samples.to_vec();
        v.sort_by(f64::total_cmp);
        // Only samples ≤ 0 (a crash failover can end before the lease ran out) lie
        // below the axis, which starts at the decade of the smallest positive one.
        let clamped = v.iter().filter(|x| **x < lo).count();
        let len = v.len() as f64;
        // The empirical CDF as steps: at each sample, up by one share.
        let mut points = Vec::with_capacity(2 * v.len() + 1);
        for (i, x) in v.iter().enumerate() {
            let x = x.max(lo);
            points.push((x, i as f64 / len));
            points.push((x, (i + 1) as f64 / len));
        }
        if !points.is_empty() {
            points.push((hi, 1.0));
        }
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(width)))
            .map_err(drawing)?;
        let text = if v.is_empty() {
            let mut note: String = c.note.chars().take(90).collect();
            if note.len() < c.note.len() {
                note.push('…');
            }
            format!("{}: no samples ({note})", c.library)
        } else {
            let q = |p: f64| v[((p * len).ceil() as usize).clamp(1, v.len()) - 1];
            let mut t = format!(
                "{}: n {}, p50 {}, p99 {}",
                c.library,
                v.len(),
                fmt_secs(q(0.5)),
                fmt_secs(q(0.99))
            );
            if clamped > 0 {
                t.push_str(&format!(" ({clamped} ≤ 0, drawn at the left edge)"));
            }
            t
        };
        entries.push((color, width, text));
    }
    for (i, (color, width, text)) in entries.into_iter().enumerate() {
        let y = 8 + (i as u32 * ENTRY + ENTRY / 2) as i32;
        legend_area
            .draw(&PathElement::new(
                [(80, y), (116, y)],
                color.stroke_width(width),
            ))
            .map_err(drawing)?;
        legend_area
            .draw(&Text::new(text, (126, y), anchored(font(15.0), HPos::Left)))
            .map_err(drawing)?;
    }
    root.present().map_err(drawing)
}

// ---- contention timeline ----------------------------------------------------------

/// Draws the contention section's timeline (`contention.svg`): per library, a row per
/// replica slot with a bar per term, the SIGSTOPs, SIGKILLs and restarts, the slow
/// stretch of the API server, and the checker's overlaps (two leaders at once) in red.
/// Returns its Markdown image.
pub(crate) fn contention(
    dir: &Path,
    title: &str,
    subtitle: &str,
    replicas: usize,
    runs: &[(String, Report)],
) -> String {
    if runs.is_empty() {
        return String::new();
    }
    let (head, _) = split_title(title);
    write(dir, "contention.svg", head, |path| {
        timeline(path, title, subtitle, replicas, runs)
    })
}

/// Seconds from the window's start.
fn since(r: &Report, at: tokio::time::Instant) -> f64 {
    at.saturating_duration_since(r.opened).as_secs_f64()
}

/// The slot of an identity `r{slot}-{start}/{term}`, as contention.rs names them.
fn slot_of(identity: &str) -> Option<usize> {
    identity
        .strip_prefix('r')?
        .split(['-', '/'])
        .next()?
        .parse()
        .ok()
}

/// What the fault log says happened to the replicas and the server.
#[derive(Default)]
struct Faults {
    /// (slot, from, to): a replica frozen by SIGSTOP.
    frozen: Vec<(usize, f64, f64)>,
    /// (slot, at).
    kills: Vec<(usize, f64)>,
    restarts: Vec<(usize, f64)>,
    slow: Vec<(f64, f64)>,
}

impl Faults {
    /// Reads contention.rs's fault notes.
    fn of(r: &Report, end: f64) -> Self {
        let mut f = Faults::default();
        let mut stopped: Vec<(usize, f64)> = Vec::new();
        let mut slow_from = None;
        for (at, what) in &r.fault_log {
            let at = at.as_secs_f64();
            if let Some(id) = what.strip_prefix("SIGSTOP the leader ") {
                stopped.extend(slot_of(id).map(|s| (s, at)));
            } else if let Some(id) = what.strip_prefix("SIGCONT ") {
                if let Some(s) = slot_of(id) {
                    if let Some(i) = stopped.iter().position(|(slot, _)| *slot == s) {
                        let (_, from) = stopped.remove(i);
                        f.frozen.push((s, from, at));
                    }
                }
            } else if let Some(id) = what.strip_prefix("SIGKILL the leader ") {
                f.kills.extend(slot_of(id).map(|s| (s, at)));
            } else if let Some(slot) = what.strip_prefix("restart slot ") {
                f.restarts.extend(slot.parse().ok().map(|s| (s, at)));
            } else if what.starts_with("API server latency") {
                slow_from = Some(at);
            } else if what.starts_with("API server fast again") {
                f.slow.extend(slow_from.take().map(|from| (from, at)));
            }
        }
        f.frozen
            .extend(stopped.into_iter().map(|(s, from)| (s, from, end)));
        f.slow.extend(slow_from.map(|from| (from, end)));
        f
    }
}

/// The overlaps the checker found, as spans of seconds: from the second term's start
/// to the first one's end (or the second's, if it ended first).
fn overlaps(r: &Report, end: f64) -> Vec<(f64, f64)> {
    r.violations
        .iter()
        .filter_map(|v| match v {
            Violation::Overlap { first, second } => {
                let from = since(r, second.start);
                let to = [first.end, second.end]
                    .into_iter()
                    .map(|e| e.map_or(end, |e| since(r, e)))
                    .fold(end, f64::min);
                Some((from, to.max(from)))
            }
            _ => None,
        })
        .collect()
}

fn timeline(
    path: &Path,
    title: &str,
    subtitle: &str,
    replicas: usize,
    runs: &[(String, Report)],
) -> Result<(), String> {
    const WIDTH: u32 = 1200;
    const HEADER: u32 = 100;
    const ROW: u32 = 24;
    const CAPTION: u32 = 24;
    const AXIS: u32 = 48;
    const LABELS: u32 = 56;
    let panel = CAPTION + ROW * replicas as u32 + 10;
    let height = HEADER + panel * runs.len() as u32 + AXIS;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let (header, mut body) = root.split_vertically(HEADER);
    header
        .draw(&Text::new(
            "Safety under contention: who led when",
            (20, 18),
            anchored(bold(19.0), HPos::Left),
        ))
        .map_err(drawing)?;
    let line2 = split_title(title).1;
    header
        .draw(&Text::new(
            format!("{line2}; {subtitle}"),
            (20, 44),
            anchored(font(14.0).color(&MUTED), HPos::Left),
        ))
        .map_err(drawing)?;
    legend(&header, 74)?;

    let window = runs
        .iter()
        .map(|(_, r)| r.window.as_secs_f64())
        .fold(1.0, f64::max);
    let rows = replicas as f64;
    // Row `slot` from the top: its centre on the y axis (0 at the bottom).
    let centre = |slot: usize| rows - slot as f64 - 0.5;
    // At least a few pixels wide, so that an overlap of milliseconds shows.
    let min_width = window / 400.0;
    for (i, (library, r)) in runs.iter().enumerate() {
        let last = i + 1 == runs.len();
        let (area, rest) = body.split_vertically(panel + if last { AXIS } else { 0 });
        body = rest;
        let end = r.window.as_secs_f64();
        let spans = overlaps(r, end);
        let caption = format!(
            "{library}: {} terms, {} overlaps, worst leaderless gap {}, led {:.1} %",
            r.intervals,
            spans.len(),
            fmt_secs(r.worst_gap.as_secs_f64()),
            r.leader_share() * 100.0
        );
        let color: &'static RGBColor = if spans.is_empty() { &BLACK } else { &OVERLAP };
        area.draw(&Text::new(
            caption,
            (LABELS as i32 + 12, CAPTION as i32 / 2 + 2),
            anchored(bold(15.0).color(color), HPos::Left),
        ))
        .map_err(drawing)?;
        let mut chart = ChartBuilder::on(&area)
            .margin_top(CAPTION)
            .margin_right(24)
            .margin_left(12)
            .margin_bottom(10)
            .y_label_area_size(LABELS)
            .x_label_area_size(if last { AXIS } else { 0 })
            .build_cartesian_2d(0f64..window, 0f64..rows)
            .map_err(drawing)?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_y_mesh()
            .y_labels(0)
            .x_labels(if window > 30.0 { 13 } else { 7 })
            .x_label_formatter(&|x| format!("{x:.0} s"))
            .light_line_style(GRID.mix(0.0))
            .bold_line_style(GRID)
            .label_style(font(14.0))
            .axis_desc_style(font(15.0));
        if last {
            mesh.x_desc("seconds since the replicas started");
        }
        mesh.draw().map_err(drawing)?;
        let faults = Faults::of(r, end);
        chart
            .draw_series(
                faults
                    .slow
                    .iter()
                    .map(|&(a, b)| Rectangle::new([(a, 0.0), (b, rows)], SLOW.mix(0.7).filled())),
            )
            .map_err(drawing)?;
        // Terms, alternating two blues per slot so that one term's end and the next
        // one's start show.
        let mut count = vec![0usize; replicas];
        let mut bars = Vec::new();
        for t in &r.terms {
            let Some(slot) = slot_of(&t.identity).filter(|s| *s < replicas) else {
                continue;
            };
            let from = since(r, t.start);
            let to = t
                .end
                .map_or(end, |e| since(r, e))
                .max(from + window / 1000.0);
            let y = centre(slot);
            bars.push(Rectangle::new(
                [(from, y - 0.32), (to, y + 0.32)],
                TERM[count[slot] % 2].filled(),
            ));
            count[slot] += 1;
        }
        chart.draw_series(bars).map_err(drawing)?;
        chart
            .draw_series(
                faults
                    .frozen
                    .iter()
                    .filter(|f| f.0 < replicas)
                    .map(|&(slot, a, b)| {
                        let y = centre(slot);
                        Rectangle::new([(a, y - 0.18), (b, y + 0.18)], FROZEN.filled())
                    }),
            )
            .map_err(drawing)?;
        chart
            .draw_series(spans.iter().map(|&(a, b)| {
                Rectangle::new(
                    [(a, 0.0), (b.max(a + min_width), rows)],
                    OVERLAP.mix(0.45).filled(),
                )
            }))
            .map_err(drawing)?;
        chart
            .draw_series(
                faults
                    .kills
                    .iter()
                    .filter(|k| k.0 < replicas)
                    .map(|&(slot, at)| Cross::new((at, centre(slot)), 6, BLACK.stroke_width(2))),
            )
            .map_err(drawing)?;
        chart
            .draw_series(
                faults
                    .restarts
                    .iter()
                    .filter(|k| k.0 < replicas)
                    .map(|&(slot, at)| {
                        TriangleMarker::new((at, centre(slot)), 6, RESTART.filled())
                    }),
            )
            .map_err(drawing)?;
        chart
            .plotting_area()
            .draw(&Rectangle::new(
                [(0.0, 0.0), (window, rows)],
                GRID.stroke_width(1),
            ))
            .map_err(drawing)?;
        for slot in 0..replicas {
            let (x, y) = chart.backend_coord(&(0.0, centre(slot)));
            root.draw(&Text::new(
                format!("r{slot}"),
                (x - 8, y),
                anchored(font(14.0), HPos::Right),
            ))
            .map_err(drawing)?;
        }
    }
    root.present().map_err(drawing)
}

/// The timeline's key, on one line at `y` of the header.
fn legend(area: &DrawingArea<SVGBackend, Shift>, y: i32) -> Result<(), String> {
    let mut x = 20;
    let text = anchored(font(14.0), HPos::Left);
    let label = |x: &mut i32, what: &str| -> Result<(), String> {
        area.draw(&Text::new(what.to_string(), (*x + 26, y), text.clone()))
            .map_err(drawing)?;
        // The viewer lays the text out: about 6 px a character at this size.
        *x += 26 + what.chars().count() as i32 * 6 + 28;
        Ok(())
    };
    let swatch = |x: i32, color: RGBAColor, h: i32| {
        Rectangle::new([(x, y - h), (x + 20, y + h)], color.filled())
    };
    for (i, color) in TERM.iter().enumerate() {
        let left = x + 10 * i as i32;
        area.draw(&Rectangle::new(
            [(left, y - 7), (left + 10, y + 7)],
            color.filled(),
        ))
        .map_err(drawing)?;
    }
    label(
        &mut x,
        "terms: the replica believes it leads (a row per replica slot)",
    )?;
    area.draw(&swatch(x, FROZEN.to_rgba(), 4))
        .map_err(drawing)?;
    label(&mut x, "frozen by SIGSTOP")?;
    area.draw(&Cross::new((x + 10, y), 6, BLACK.stroke_width(2)))
        .map_err(drawing)?;
    label(&mut x, "SIGKILL")?;
    area.draw(&TriangleMarker::new((x + 10, y), 6, RESTART.filled()))
        .map_err(drawing)?;
    label(&mut x, "restart")?;
    area.draw(&swatch(x, SLOW.mix(0.7), 9)).map_err(drawing)?;
    label(&mut x, "API server slowed")?;
    area.draw(&swatch(x, OVERLAP.mix(0.45), 9))
        .map_err(drawing)?;
    label(&mut x, "overlap: two leaders at once")?;
    Ok(())
}
