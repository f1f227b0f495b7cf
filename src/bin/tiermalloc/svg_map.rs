//! `tiermalloc inspect PATH --map FILE.svg`: a picture of a persistent heap's region. The
//! region is drawn as rows of equal byte spans, left to right, top to bottom; each extent the
//! library's scan finds (`tiermalloc::extent_map`) is a group of rectangles coloured by what it
//! holds, carrying its offset, length and state as `data-` attributes and a tooltip. The
//! largest free extent (consecutive free extents together, as the heap coalesces them) is
//! outlined, and it and the fragmentation (1 - largest free / free) are stated in text.

use tiermalloc::report::Bytes;
use tiermalloc::{ExtentKind, HeapReport, MapExtent};

const WIDTH: f64 = 1024.0;
const ROWS: u64 = 32;
const ROW_HEIGHT: f64 = 14.0;
const ROW_GAP: f64 = 4.0;
const TOP: f64 = 86.0;
const LEFT: f64 = 8.0;

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn style(kind: ExtentKind) -> (&'static str, &'static str) {
    match kind {
        ExtentKind::Superblock => ("superblock", "#7f7f7f"),
        ExtentKind::Block => ("block", "#d62728"),
        ExtentKind::Slab { .. } => ("slab", "#ff7f0e"),
        ExtentKind::Free => ("free", "#2ca02c"),
        ExtentKind::Damaged => ("damaged", "#000000"),
    }
}

/// The rectangles covering bytes `[start, end)`: one per row they touch.
fn rects(start: u64, end: u64, row_bytes: u64, attrs: &str) -> String {
    let mut out = String::new();
    let mut at = start;
    while at < end {
        let row = at / row_bytes;
        let row_end = ((row + 1) * row_bytes).min(end);
        let x = LEFT + (at - row * row_bytes) as f64 * WIDTH / row_bytes as f64;
        let w = (row_end - at) as f64 * WIDTH / row_bytes as f64;
        let y = TOP + row as f64 * (ROW_HEIGHT + ROW_GAP);
        out += &format!(
            "<rect x=\"{x:.3}\" y=\"{y:.1}\" width=\"{w:.3}\" height=\"{ROW_HEIGHT}\"{attrs}/>"
        );
        at = row_end;
    }
    out
}

/// The largest run of consecutive free extents: (offset, bytes).
pub fn largest_free(map: &[MapExtent]) -> (u64, u64) {
    let (mut best, mut run) = ((0, 0), (0, 0));
    for e in map {
        if e.kind != ExtentKind::Free {
            run = (0, 0);
            continue;
        }
        if run.1 == 0 {
            run.0 = e.offset;
        }
        run.1 += e.len;
        if run.1 > best.1 {
            best = run;
        }
    }
    best
}

/// The SVG document for the heap of `path`, from its check report and extent map.
pub fn render(path: &str, report: &HeapReport, map: &[MapExtent]) -> String {
    let row_bytes = report.region_len.div_ceil(ROWS).max(1);
    let height = TOP + ROWS as f64 * (ROW_HEIGHT + ROW_GAP) + 8.0;
    let (largest_at, largest) = largest_free(map);
    let fragmentation = match report.free_bytes {
        0 => 0.0,
        free => 1.0 - largest as f64 / free as f64,
    };
    let mut svg = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         data-region-len=\"{}\" data-free=\"{}\" data-in-use=\"{}\" \
         data-largest-free=\"{largest}\" \
         data-largest-free-offset=\"{largest_at}\" data-fragmentation=\"{fragmentation:.4}\">\n\
         <title>{} (tiermalloc heap map)</title>\n\
         <style>text {{ font: 12px monospace; }}</style>\n",
        WIDTH + 2.0 * LEFT,
        report.region_len,
        report.free_bytes,
        report.in_use,
        xml_escape(path),
    );
    let lines = [
        format!(
            "{}: tiermalloc heap {:016x}, region {}, {} per row",
            path,
            report.heap_id,
            Bytes(report.region_len),
            Bytes(row_bytes)
        ),
        format!(
            "in use {}; free {}; largest free extent {} at offset {largest_at}; fragmentation \
             {:.1}% (1 - largest free / free)",
            Bytes(report.in_use),
            Bytes(report.free_bytes),
            Bytes(largest),
            fragmentation * 100.0
        ),
    ];
    for (i, line) in lines.iter().enumerate() {
        svg += &format!(
            "<text x=\"{LEFT}\" y=\"{}\" id=\"{}\">{}</text>\n",
            18 + 16 * i,
            ["heading", "figures"][i],
            xml_escape(line)
        );
    }
    let legend = [
        ExtentKind::Block,
        ExtentKind::Slab { live_bytes: 0 },
        ExtentKind::Free,
        ExtentKind::Superblock,
        ExtentKind::Damaged,
    ];
    for (i, kind) in legend.iter().enumerate() {
        let (name, colour) = style(*kind);
        let x = LEFT + 140.0 * i as f64;
        svg += &format!(
            "<rect x=\"{x}\" y=\"56\" width=\"12\" height=\"12\" fill=\"{colour}\"/>\
             <text x=\"{}\" y=\"66\">{name}</text>\n",
            x + 16.0
        );
    }
    for e in map {
        let (name, colour) = style(e.kind);
        let live = match e.kind {
            ExtentKind::Slab { live_bytes } => format!(" data-live-bytes=\"{live_bytes}\""),
            _ => String::new(),
        };
        svg += &format!(
            "<g class=\"extent\" data-offset=\"{}\" data-len=\"{}\" data-state=\"{name}\"{live} \
             fill=\"{colour}\"><title>{name} at offset {}, {}</title>{}</g>\n",
            e.offset,
            e.len,
            e.offset,
            Bytes(e.len),
            rects(e.offset, e.offset + e.len, row_bytes, "")
        );
    }
    if largest > 0 {
        svg += &format!(
            "<g id=\"largest-free\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\">{}</g>\n",
            rects(largest_at, largest_at + largest, row_bytes, "")
        );
    }
    svg + "</svg>\n"
}
