//! `netvmm compare --json`: the stable schema of issue 5, written by hand (a value tree and
//! a printer; no serde for one document).

pub use super::json_value::Json;
use super::results::{Outcome, Rtt, FLOWS, REACH};

impl Json {
    fn obj<const N: usize>(fields: [(&str, Json); N]) -> Json {
        Json::Obj(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    /// Indented with two spaces; objects whose values are all scalars stay on one line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out
    }

    fn is_flat(&self) -> bool {
        match self {
            Json::Arr(v) => v.iter().all(Json::is_scalar),
            Json::Obj(v) => v.iter().all(|(_, j)| j.is_scalar()),
            _ => true,
        }
    }

    fn is_scalar(&self) -> bool {
        !matches!(self, Json::Arr(_) | Json::Obj(_))
    }

    fn write(&self, out: &mut String, depth: usize) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => out.push_str(&number(*n)),
            Json::Str(s) => out.push_str(&escape(s)),
            Json::Arr(v) => self.write_seq(out, depth, '[', ']', v.iter().map(|j| (None, j))),
            Json::Obj(v) => self.write_seq(
                out,
                depth,
                '{',
                '}',
                v.iter().map(|(k, j)| (Some(k.as_str()), j)),
            ),
        }
    }

    fn write_seq<'a>(
        &self,
        out: &mut String,
        depth: usize,
        open: char,
        close: char,
        items: impl ExactSizeIterator<Item = (Option<&'a str>, &'a Json)>,
    ) {
        let flat = self.is_flat();
        let n = items.len();
        out.push(open);
        for (i, (key, value)) in items.enumerate() {
            if flat {
                if i > 0 {
                    out.push(' ');
                }
            } else {
                out.push('\n');
                out.push_str(&"  ".repeat(depth + 1));
            }
            if let Some(k) = key {
                out.push_str(&escape(k));
                out.push_str(": ");
            }
            value.write(out, depth + 1);
            if i + 1 < n {
                out.push(',');
            }
        }
        if !flat && n > 0 {
            out.push('\n');
            out.push_str(&"  ".repeat(depth));
        }
        out.push(close);
    }
}

/// A JSON number: at most three decimals, no exponent; NaN and infinities (which JSON
/// cannot hold) become null.
pub fn number(n: f64) -> String {
    if !n.is_finite() {
        return "null".into();
    }
    let r = (n * 1000.0).round() / 1000.0;
    // Rust prints f64 without an exponent; -0 is not worth a sign.
    if r == 0.0 {
        "0".into()
    } else {
        format!("{r}")
    }
}

/// A JSON string literal for `s`: quotes, backslashes and control characters escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            // Line and paragraph separators are valid JSON but break JavaScript readers.
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn opt_num(v: Option<f64>) -> Json {
    v.map(Json::Num).unwrap_or(Json::Null)
}

fn rtt(r: &Option<Rtt>) -> Json {
    match r {
        Some(r) => Json::obj([("avg", Json::Num(r.avg)), ("p99", Json::Num(r.p99))]),
        None => Json::obj([("avg", Json::Null), ("p99", Json::Null)]),
    }
}

/// The whole document: `{"lab": ..., "results": [...]}`.
pub fn report(lab: &str, outcomes: &[Outcome]) -> Json {
    let results = outcomes
        .iter()
        .map(|o| {
            Json::obj([
                ("backend", Json::Str(o.backend.name().into())),
                ("boot_ms", opt_num(o.boot_ms)),
                (
                    "rtt_ms",
                    Json::obj([
                        ("guest_to_host", rtt(&o.rtt_guest_to_host)),
                        ("guest_to_lan", rtt(&o.rtt_guest_to_lan)),
                    ]),
                ),
                (
                    "throughput_mbps",
                    Json::Obj(
                        FLOWS
                            .iter()
                            .zip(o.throughput_mbps)
                            .map(|(k, v)| (k.to_string(), opt_num(v)))
                            .collect(),
                    ),
                ),
                ("vmm_cpu_ms_per_gb", opt_num(o.vmm_cpu_ms_per_gb)),
                (
                    "reachability",
                    Json::Obj(
                        REACH
                            .iter()
                            .zip(o.reachability)
                            .map(|(k, v)| (k.to_string(), v.map(Json::Bool).unwrap_or(Json::Null)))
                            .collect(),
                    ),
                ),
                (
                    "skipped",
                    o.skipped.clone().map(Json::Str).unwrap_or(Json::Null),
                ),
            ])
        })
        .collect();
    Json::obj([
        ("lab", Json::Str(lab.into())),
        ("results", Json::Arr(results)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::backend::Backend;
    use crate::compare::json_value::read::{get, parse};

    fn keys(v: &Json) -> Vec<&str> {
        match v {
            Json::Obj(f) => f.iter().map(|(k, _)| k.as_str()).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(escape("plain"), r#""plain""#);
        assert_eq!(escape(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(escape("l1\nl2\t\r"), r#""l1\nl2\t\r""#);
        assert_eq!(escape("\u{1}\u{1f}\u{7f}"), r#""\u0001\u001f\u007f""#);
        assert_eq!(escape("✓ ünï"), "\"✓ ünï\"");
        for s in ["a\"\\\n\u{0}\u{2028}x", "", "ü\u{1b}[0m"] {
            assert_eq!(parse(&escape(s)).unwrap(), Json::Str(s.into()), "{s:?}");
        }
    }

    #[test]
    fn numbers_never_use_exponents_or_nan() {
        assert_eq!(number(1.0), "1");
        assert_eq!(number(0.1234), "0.123");
        assert_eq!(number(-0.0001), "0");
        assert_eq!(number(1e21), "1000000000000000000000");
        assert_eq!(number(2.5e-7), "0");
        assert_eq!(number(f64::NAN), "null");
        assert_eq!(number(f64::INFINITY), "null");
    }

    #[test]
    fn the_schema_with_figures_nulls_and_a_skip() {
        let mut full = Outcome::new(Backend::Tap);
        full.boot_ms = Some(2250.5);
        full.rtt_guest_to_host = Some(Rtt {
            avg: 0.45,
            p99: 0.9,
            samples: 20,
        });
        full.throughput_mbps = [Some(300.0), Some(280.25), None, Some(410.0)];
        full.vmm_cpu_ms_per_gb = Some(9876.5);
        full.reachability = [Some(true), Some(true), Some(true), Some(false), None];
        let mut skipped = Outcome::new(Backend::MacvtapPassthru);
        skipped.skipped = Some("needs \"lanA\"\nto itself".into());

        let text = report("emulated", &[full, skipped]).render();
        let doc = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(keys(&doc), ["lab", "results"]);
        assert_eq!(get(&doc, &["lab"]), Some(&Json::Str("emulated".into())));
        let Some(Json::Arr(results)) = get(&doc, &["results"]) else {
            panic!("{text}")
        };
        assert_eq!(results.len(), 2);
        let r = &results[0];
        assert_eq!(
            keys(r),
            [
                "backend",
                "boot_ms",
                "rtt_ms",
                "throughput_mbps",
                "vmm_cpu_ms_per_gb",
                "reachability",
                "skipped"
            ]
        );
        assert_eq!(get(r, &["backend"]), Some(&Json::Str("tap".into())));
        assert_eq!(get(r, &["boot_ms"]), Some(&Json::Num(2250.5)));
        assert_eq!(
            keys(get(r, &["rtt_ms"]).unwrap()),
            ["guest_to_host", "guest_to_lan"]
        );
        assert_eq!(
            get(r, &["rtt_ms", "guest_to_host", "p99"]),
            Some(&Json::Num(0.9))
        );
        assert_eq!(
            get(r, &["rtt_ms", "guest_to_lan", "avg"]),
            Some(&Json::Null)
        );
        assert_eq!(keys(get(r, &["throughput_mbps"]).unwrap()), FLOWS);
        assert_eq!(
            get(r, &["throughput_mbps", "lan_to_guest"]),
            Some(&Json::Num(280.25))
        );
        assert_eq!(
            get(r, &["throughput_mbps", "guest_to_host"]),
            Some(&Json::Null)
        );
        assert_eq!(keys(get(r, &["reachability"]).unwrap()), REACH);
        assert_eq!(
            get(r, &["reachability", "lan_to_guest"]),
            Some(&Json::Bool(false))
        );
        assert_eq!(
            get(r, &["reachability", "guest_to_guest"]),
            Some(&Json::Null)
        );
        assert_eq!(get(r, &["skipped"]), Some(&Json::Null));
        let s = &results[1];
        assert_eq!(
            get(s, &["skipped"]),
            Some(&Json::Str("needs \"lanA\"\nto itself".into()))
        );
        assert_eq!(get(s, &["boot_ms"]), Some(&Json::Null));
        assert_eq!(get(s, &["vmm_cpu_ms_per_gb"]), Some(&Json::Null));
    }

    #[test]
    fn the_printer_indents_and_keeps_flat_objects_on_a_line() {
        let v = Json::obj([
            ("a", Json::obj([("x", Json::Num(1.0)), ("y", Json::Null)])),
            ("b", Json::Arr(vec![])),
        ]);
        assert_eq!(
            v.render(),
            "{\n  \"a\": {\"x\": 1, \"y\": null},\n  \"b\": []\n}"
        );
        assert!(parse("{\"a\": 1,}").is_err());
        assert!(parse("[1 2]").is_err());
        assert!(parse("\"raw\ncontrol\"").is_err());
    }
}
