//! A small YAML writer for JSON values: block style, every string double-quoted with JSON's
//! escapes (which YAML's double-quoted scalars share), so no value can change type or break the
//! document. Enough for the postmortem draft; no dependency on an unmaintained YAML crate.

use serde_json::Value;

/// The value as a YAML document.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, 0, false);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("null".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())),
        Value::Array(a) if a.is_empty() => Some("[]".into()),
        Value::Object(o) if o.is_empty() => Some("{}".into()),
        _ => None,
    }
}

fn key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        k.to_owned()
    } else {
        serde_json::to_string(k).unwrap_or_default()
    }
}

fn write_value(out: &mut String, v: &Value, indent: usize, in_list: bool) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (i, (k, v)) in map.iter().enumerate() {
                // The first key of a list item sits on the dash's line.
                if !(in_list && i == 0) {
                    out.push_str(&pad);
                }
                out.push_str(&key(k));
                out.push(':');
                match scalar(v) {
                    Some(s) => {
                        out.push(' ');
                        out.push_str(&s);
                        out.push('\n');
                    }
                    None => {
                        out.push('\n');
                        write_value(out, v, indent + 2, false);
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&pad);
                out.push_str("- ");
                match scalar(item) {
                    Some(s) => {
                        out.push_str(&s);
                        out.push('\n');
                    }
                    None => write_value(out, item, indent + 2, true),
                }
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&scalar(other).unwrap_or_default());
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_lists_and_maps_indent_and_quote() {
        let v = serde_json::json!({
            "incident": {"id": "INC-1", "services": ["a", "b: c"]},
            "timeline": [{"time": "t1", "event": "say \"hi\"\nnext"}, {"time": "t2", "event": "x"}],
            "empty": [],
        });
        let y = to_yaml(&v);
        assert_eq!(
            y,
            "incident:\n  id: \"INC-1\"\n  services:\n    - \"a\"\n    - \"b: c\"\ntimeline:\n  - time: \"t1\"\n    event: \"say \\\"hi\\\"\\nnext\"\n  - time: \"t2\"\n    event: \"x\"\nempty: []\n"
        );
    }
}
