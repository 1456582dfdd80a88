//! `netvmm compare --chart FILE.svg`: throughput and latency per backend as a hand-written
//! SVG (two panels of grouped bars; no dependencies).

use std::fmt::Write;

use super::report::{Outcome, Throughput};

const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const PANEL_H: f64 = 220.0;
/// Colours of the four throughput directions (in `FLOWS` order) and of the two RTTs.
const FLOW_COLOURS: [&str; 4] = ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78"];
const RTT_COLOURS: [&str; 2] = ["#2ca02c", "#98df8a"];

/// Text for XML character data and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 has no way to carry other control characters.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The smallest 1, 2 or 5 times a power of ten that is at least `v` (and > 0).
pub fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|x| *x >= v * 0.999_999)
        .unwrap_or(10.0 * p)
}

fn fmt_val(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One bar series of a backend: (label for the tooltip, value, colour, kind attribute).
struct Bar {
    kind: &'static str,
    value: Option<f64>,
    colour: &'static str,
    /// A whisker above the bar (the RTT's p99).
    whisker: Option<f64>,
}

/// A panel of grouped bars: one `<g class="backend">` per backend, one `<rect class="bar">`
/// per measured series.
fn panel(
    svg: &mut String,
    id: &str,
    title: &str,
    unit: &str,
    top: f64,
    outcomes: &[Outcome],
    bars: &dyn Fn(&Outcome) -> Vec<Bar>,
) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let (y0, h) = (top + 30.0, PANEL_H - 60.0);
    let max = outcomes
        .iter()
        .flat_map(|o| bars(o).into_iter().flat_map(|b| [b.value, b.whisker]))
        .flatten()
        .fold(0.0, f64::max);
    let max = nice_max(max);
    let _ = writeln!(svg, r#"<g class="panel" id="{id}">"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top + 18.0,
        xml_escape(title)
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = y0 + h - h * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            xml_escape(&fmt_val(v))
        );
    }
    let slot = plot_w / outcomes.len().max(1) as f64;
    for (i, o) in outcomes.iter().enumerate() {
        let x0 = LEFT + slot * i as f64;
        let name = xml_escape(&o.label());
        let _ = writeln!(svg, r#"<g class="backend" data-backend="{name}">"#);
        let series = bars(o);
        let bw = (slot * 0.8) / series.len().max(1) as f64;
        for (j, b) in series.iter().enumerate() {
            let x = x0 + slot * 0.1 + bw * j as f64;
            match b.value {
                Some(v) => {
                    let bh = h * (v / max).clamp(0.0, 1.0);
                    let _ = writeln!(
                        svg,
                        r#"<rect class="bar" data-series="{}" x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{name} {}: {} {}</title></rect>"#,
                        b.kind,
                        y0 + h - bh,
                        bw * 0.9,
                        b.colour,
                        b.kind,
                        fmt_val(v),
                        xml_escape(unit)
                    );
                }
                None => {
                    let _ = writeln!(
                        svg,
                        r##"<text class="missing" x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle" fill="#999">n/a</text>"##,
                        x + bw * 0.45,
                        y0 + h - 3.0
                    );
                }
            }
            if let Some(p) = b.whisker {
                let wy = y0 + h - h * (p / max).clamp(0.0, 1.0);
                let cx = x + bw * 0.45;
                let _ = writeln!(
                    svg,
                    r##"<line class="p99" x1="{:.1}" y1="{wy:.1}" x2="{:.1}" y2="{wy:.1}" stroke="#333" stroke-width="2"><title>{name} {} p99: {} {}</title></line>"##,
                    cx - bw * 0.3,
                    cx + bw * 0.3,
                    b.kind,
                    fmt_val(p),
                    xml_escape(unit)
                );
            }
        }
        let label = match &o.skipped {
            Some(_) => format!("{name} (skipped)"),
            None => name.clone(),
        };
        let _ = writeln!(
            svg,
            // Small enough for seven backends side by side, the longest name included.
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{label}</text>"#,
            x0 + slot / 2.0,
            y0 + h + 16.0
        );
        let _ = writeln!(svg, "</g>");
    }
    let _ = writeln!(svg, "</g>");
}

fn legend(svg: &mut String, y: f64, items: &[(&str, &str)]) {
    let mut x = LEFT;
    for (label, colour) in items {
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{colour}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            y - 10.0,
            x + 16.0,
            y,
            xml_escape(label)
        );
        x += 16.0 + 8.0 * label.len() as f64 + 20.0;
    }
}

/// The whole SVG document.
pub fn svg(lab_line: &str, outcomes: &[Outcome]) -> String {
    let height = 2.0 * PANEL_H + 110.0;
    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        "<title>netvmm compare: tap, bridge and macvtap side by side</title>"
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let flows = |o: &Outcome| {
        Throughput::NAMES
            .iter()
            .zip(o.throughput_mbps.values())
            .zip(FLOW_COLOURS)
            .map(|((k, v), c)| Bar {
                kind: k,
                value: v,
                colour: c,
                whisker: None,
            })
            .collect()
    };
    panel(
        &mut s,
        "throughput",
        "TCP throughput (iperf3), Mbit/s",
        "Mbit/s",
        0.0,
        outcomes,
        &flows,
    );
    legend(
        &mut s,
        PANEL_H + 4.0,
        &[
            ("guest to LAN", FLOW_COLOURS[0]),
            ("LAN to guest", FLOW_COLOURS[1]),
            ("guest to host", FLOW_COLOURS[2]),
            ("host to guest", FLOW_COLOURS[3]),
        ],
    );
    let rtts = |o: &Outcome| {
        vec![
            Bar {
                kind: "guest_to_host",
                value: o.rtt_ms.guest_to_host.map(|r| r.avg),
                colour: RTT_COLOURS[0],
                whisker: o.rtt_ms.guest_to_host.map(|r| r.p99),
            },
            Bar {
                kind: "guest_to_lan",
                value: o.rtt_ms.guest_to_lan.map(|r| r.avg),
                colour: RTT_COLOURS[1],
                whisker: o.rtt_ms.guest_to_lan.map(|r| r.p99),
            },
        ]
    };
    panel(
        &mut s,
        "rtt",
        "Ping round trip, ms (bar: average, line: p99)",
        "ms",
        PANEL_H + 20.0,
        outcomes,
        &rtts,
    );
    legend(
        &mut s,
        2.0 * PANEL_H + 24.0,
        &[
            ("guest to host", RTT_COLOURS[0]),
            ("guest to LAN", RTT_COLOURS[1]),
        ],
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="{:.1}" font-size="11" fill="#555">{}</text>"##,
        height - 20.0,
        xml_escape(lab_line)
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::backend::Backend;
    use crate::compare::report::Rtt;

    /// Checks that tags nest and close, attributes are quoted and `&` starts an entity;
    /// returns the element names in document order.
    fn well_formed(doc: &str) -> Result<Vec<String>, String> {
        let body = doc
            .strip_prefix(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
            .ok_or("no XML declaration")?;
        let mut stack: Vec<String> = Vec::new();
        let mut names = Vec::new();
        let mut rest = body;
        while let Some(lt) = rest.find('<') {
            let text = &rest[..lt];
            for (i, _) in text.match_indices('&') {
                let ent = &text[i..];
                if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| ent.starts_with(e))
                {
                    return Err(format!("bare & in {text:?}"));
                }
            }
            if text.contains('>') {
                return Err(format!("stray > in {text:?}"));
            }
            let gt = rest[lt..].find('>').ok_or("unclosed tag")? + lt;
            let tag = &rest[lt + 1..gt];
            rest = &rest[gt + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open) if open == name => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let name = tag
                .split_whitespace()
                .next()
                .ok_or("empty tag")?
                .to_string();
            if tag.matches('"').count() % 2 != 0 || tag.contains('<') {
                return Err(format!("bad attributes in <{tag}>"));
            }
            names.push(name.clone());
            if !self_closing {
                stack.push(name);
            }
        }
        if !stack.is_empty() {
            return Err(format!("unclosed {stack:?}"));
        }
        if !rest.trim().is_empty() {
            return Err(format!("text after the root: {rest:?}"));
        }
        Ok(names)
    }

    fn panel_of<'a>(doc: &'a str, id: &str) -> &'a str {
        let start = doc
            .find(&format!(r#"<g class="panel" id="{id}">"#))
            .unwrap();
        let end = start + doc[start..].find("\n</g>\n</g>\n").unwrap();
        &doc[start..end]
    }

    #[test]
    fn one_group_per_backend_with_its_bars() {
        let mut a = Outcome::new(Backend::Tap);
        a.throughput_mbps = [Some(300.0), Some(250.0), Some(410.0), Some(380.0)].into();
        a.rtt_ms.guest_to_host = Some(Rtt { avg: 0.4, p99: 0.9 });
        let mut b = Outcome::new(Backend::MacvtapBridge);
        b.throughput_mbps = [Some(320.0), Some(260.0), None, None].into();
        let mut c = Outcome::new(Backend::MacvtapPassthru);
        c.skipped = Some("a <busy> & taken NIC".into());
        let doc = svg("lab: emulated <QEMU & TCG>", &[a, b, c]);
        let names = well_formed(&doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
        assert_eq!(names[0], "svg");
        assert!(!doc.contains("busy"), "skip reasons are not drawn");
        assert!(doc.contains("lab: emulated &lt;QEMU &amp; TCG&gt;"));

        let t = panel_of(&doc, "throughput");
        assert_eq!(t.matches(r#"<g class="backend""#).count(), 3);
        for name in ["tap", "macvtap-bridge", "macvtap-passthru"] {
            assert_eq!(
                t.matches(&format!(r#"data-backend="{name}""#)).count(),
                1,
                "{name}"
            );
        }
        assert_eq!(t.matches(r#"<rect class="bar""#).count(), 6);
        assert_eq!(t.matches("n/a").count(), 6);
        assert!(t.contains("macvtap-passthru (skipped)"));
        let r = panel_of(&doc, "rtt");
        assert_eq!(r.matches(r#"<g class="backend""#).count(), 3);
        assert_eq!(r.matches(r#"<rect class="bar""#).count(), 1);
        assert_eq!(r.matches(r#"<line class="p99""#).count(), 1);
        // The tallest bar reaches the top of the axis (500 Mbit/s for 410).
        assert!(t.contains(">500</text>"), "{t}");
    }

    #[test]
    fn axis_tops_and_escaping() {
        assert_eq!(nice_max(410.0), 500.0);
        assert_eq!(nice_max(100.0), 100.0);
        assert_eq!(nice_max(0.42), 0.5);
        assert_eq!(nice_max(1.5), 2.0);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(xml_escape("a<b>&\"'\u{1}"), "a&lt;b&gt;&amp;&quot;&apos; ");
        assert!(well_formed(r#"<?xml version="1.0" encoding="UTF-8"?><a><b></a></b>"#).is_err());
        assert!(well_formed(r#"<?xml version="1.0" encoding="UTF-8"?><a>x & y</a>"#).is_err());
    }
}
