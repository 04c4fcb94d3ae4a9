//! The Prometheus text format, written by hand: the status API's `/metrics`
//! joins the owners' series and the proxy's.

use std::fmt::Write as _;

/// A label value with `\`, `"` and newlines escaped.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: its `# HELP` and `# TYPE` lines, then one sample per
/// `(labels, value)` row; `labels` is `""` or `{k="v",...}`.
pub fn write_family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: impl IntoIterator<Item = (String, String)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in rows {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        for (raw, escaped) in [
            ("plain", "plain"),
            (r"a\b", r"a\\b"),
            ("say \"hi\"", "say \\\"hi\\\""),
            ("two\nlines", "two\\nlines"),
        ] {
            assert_eq!(escape_label(raw), escaped, "{raw:?}");
        }
    }

    #[test]
    fn a_family_has_help_type_and_one_line_per_row() {
        let mut out = String::new();
        write_family(
            &mut out,
            "x_total",
            "counter",
            "Things.",
            [
                (String::new(), "1".to_owned()),
                ("{m=\"a\"}".to_owned(), "2".to_owned()),
            ],
        );
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total 1\nx_total{m=\"a\"} 2\n"
        );
    }
}
