//! CEL text: literals, and the decisions' messages turned into CEL string concatenations.

use crate::rules::default_deny::Direction;
use crate::rules::messages::{self, AllowRules};

/// A CEL string literal: single-quoted, with `\` and `'` escaped and control characters as escapes.
pub fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

const OPEN: char = '\u{1}';
const CLOSE: char = '\u{2}';

/// A CEL string expression as a hole in a message template: what [`concat`] turns back into the expression.
pub fn hole(expr: &str) -> String {
    format!("{OPEN}{expr}{CLOSE}")
}

/// A message made by one of [`messages`]' functions with [`hole`]s for arguments, as a CEL concatenation of
/// literals and those expressions: the webhook's words, exactly.
pub fn concat(template: &str) -> String {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find(OPEN) {
        if start > 0 {
            parts.push(lit(&rest[..start]));
        }
        let after = &rest[start + OPEN.len_utf8()..];
        let end = after.find(CLOSE).expect("every hole is closed");
        parts.push(format!("({})", &after[..end]));
        rest = &after[end + CLOSE.len_utf8()..];
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(lit(rest));
    }
    parts.join(" + ")
}

/// Whether the NetworkPolicy `obj` (`object` or `oldObject`, false when null) selects every pod: `{}`,
/// `{matchLabels: {}}` and `{matchExpressions: []}` all do; so does an absent selector.
pub fn selects_all(obj: &str) -> String {
    let spec = format!("{obj}.spec");
    let selector = format!("{spec}.podSelector");
    format!(
        "{obj} != null && (!has({spec}) || !has({selector}) ||\n  \
         ((!has({selector}.matchLabels) || size({selector}.matchLabels) == 0) &&\n   \
         (!has({selector}.matchExpressions) || size({selector}.matchExpressions) == 0)))"
    )
}

/// The variables that say whether the NetworkPolicy in `obj` (`object` or `oldObject`) is default-deny (docs/design.md
/// section 3), named `<prefix>SelectsAll`, `<prefix>DefaultDeny`, `<prefix>Kind` (the webhook's words for it) and
/// so on. Each is false (or empty) when `obj` is null.
pub fn default_deny_variables(prefix: &str, obj: &str) -> Vec<(String, String)> {
    let v = |name: &str| format!("variables.{prefix}{name}");
    let spec = format!("{obj}.spec");
    // A direction allows everything only when one of its rules has no peers and no ports (`- {}`).
    let restricted = |direction: Direction, list: &str, peers: &str| {
        format!(
            "{obj} != null && '{direction}' in {types} &&\n!(has({spec}) && has({spec}.{list}) && {spec}.{list}.exists(r,\n  \
             (!has(r.{peers}) || size(r.{peers}) == 0) && (!has(r.ports) || size(r.ports) == 0)))",
            types = v("Types"),
        )
    };
    let ingress = v("IngressRestricted");
    let egress = v("EgressRestricted");
    let rules_of = |restricted: &str, list: &str| {
        format!("({restricted} && has({spec}) && has({spec}.{list}) ? size({spec}.{list}) : 0)")
    };
    let directions = hole(&v("Directions"));
    let count = v("AllowRules");
    let kind = format!(
        "{count} == 0 ? {} :\n{count} == 1 ? {} :\n{}",
        concat(&messages::default_deny_kind(AllowRules::None, &directions)),
        concat(&messages::default_deny_kind(AllowRules::One, &directions)),
        concat(&messages::default_deny_kind(AllowRules::Many(&hole(&format!("string({count})"))), &directions)),
    );
    let both = format!("{}, {}", Direction::Ingress, Direction::Egress);
    let variables: Vec<(&str, String)> = vec![
        ("SelectsAll", selects_all(obj)),
        // The API's defaulting: policyTypes when given; else Ingress, and Egress only with an egress rule.
        (
            "Types",
            format!(
                "{obj} == null ? [] :\nhas({spec}) && has({spec}.policyTypes) && size({spec}.policyTypes) > 0 ? \
                 {spec}.policyTypes :\nhas({spec}) && has({spec}.egress) && size({spec}.egress) > 0 ? ['{}', '{}'] : \
                 ['{}']",
                Direction::Ingress,
                Direction::Egress,
                Direction::Ingress
            ),
        ),
        ("IngressRestricted", restricted(Direction::Ingress, "ingress", "from")),
        ("EgressRestricted", restricted(Direction::Egress, "egress", "to")),
        ("DefaultDeny", format!("{} && ({ingress} || {egress})", v("SelectsAll"))),
        ("AllowRules", format!("{} + {}", rules_of(&ingress, "ingress"), rules_of(&egress, "egress"))),
        (
            "Directions",
            format!(
                "{ingress} && {egress} ? {} : {ingress} ? '{}' : '{}'",
                lit(&both),
                Direction::Ingress,
                Direction::Egress
            ),
        ),
        ("Kind", kind),
    ];
    variables.into_iter().map(|(name, expr)| (format!("{prefix}{name}"), expr)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_what_cel_needs() {
        let cases = [
            ("", "''"),
            ("plain", "'plain'"),
            ("it's", r"'it\'s'"),
            (r"a\b", r"'a\\b'"),
            ("line\nnext", r"'line\nnext'"),
            ("\u{7}", r"'\u0007'"),
            ("kubectl annotate x='<reason>'", r"'kubectl annotate x=\'<reason>\''"),
        ];
        for (raw, want) in cases {
            assert_eq!(lit(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn concat_alternates_literals_and_holes() {
        let cases = [
            (String::from("no holes"), "'no holes'"),
            (String::new(), "''"),
            (
                format!("{} is a system namespace", hole("variables.namespace")),
                "(variables.namespace) + ' is a system namespace'",
            ),
            (format!("a {}{} b", hole("x"), hole("y")), "'a ' + (x) + (y) + ' b'"),
            (format!("ends with {}", hole("x")), "'ends with ' + (x)"),
        ];
        for (template, want) in cases {
            assert_eq!(concat(&template), want, "{template:?}");
        }
    }
}
