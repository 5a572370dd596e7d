//! The chart's template of the policies: the generator's own output, with Helm filling in the settings from the
//! chart's values. `charts/default-deny-guard/templates/apiserver-policies.yaml` is this output, checked by a test
//! (and rewritten by it with `DDG_BLESS=1`); its helpers, which turn the values into the settings' JSON, are in
//! `templates/_apiserver-policies.tpl`.
//!
//! Placeholders: `DDGHELMQ_<name>` stands for a whole scalar that Helm writes quoted, `DDGHELMR_<name>` for text
//! that Helm writes as is (a flow list, a selector, a CEL string literal inside an expression).

use k8s_openapi::api::admissionregistration::v1::MatchCondition;

use super::{Generator, Setting, Target, cel, to_yaml};
use crate::rules::Settings;

const QUOTED: &str = "DDGHELMQ_";
const RAW: &str = "DDGHELMR_";

pub(super) const FULLNAME: &str = "DDGHELMR_fullname";

pub(super) fn quoted(name: &str) -> String {
    format!("{QUOTED}{name}")
}

pub(super) fn raw(name: &str) -> String {
    format!("{RAW}{name}")
}

/// The Helm text a placeholder stands for.
fn expand(name: &str, quote: bool) -> String {
    let setting =
        |n: &str| format!("include \"default-deny-guard.policies.setting\" (dict \"context\" $ \"name\" \"{n}\")");
    let text = match name {
        "fullname" => "include \"default-deny-guard.fullname\" $".to_owned(),
        "labels" => return "{{- include \"default-deny-guard.webhook.labels\" $ | nindent 4 }}".into(),
        "namespaceSelector" => "include \"default-deny-guard.policies.namespaceSelector\" $".to_owned(),
        "mapVersion" => "include \"default-deny-guard.policies.mapVersion\" $".to_owned(),
        n if n.starts_with("actions") => {
            format!("include \"default-deny-guard.policies.actions\" (dict \"context\" $ \"rule\" \"{}\")", &n[7..])
        }
        n if n.starts_with("warned") => {
            format!("include \"default-deny-guard.policies.warned\" (dict \"context\" $ \"rule\" \"{}\")", &n[6..])
        }
        n => setting(n),
    };
    if quote { format!("{{{{ {text} | quote }}}}") } else { format!("{{{{ {text} }}}}") }
}

/// Replaces every placeholder in `yaml` by its Helm text.
fn fill(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len() * 2);
    let mut rest = yaml;
    loop {
        let next = [(rest.find(QUOTED), true), (rest.find(RAW), false)]
            .into_iter()
            .filter_map(|(at, quote)| at.map(|a| (a, quote)))
            .min_by_key(|(at, _)| *at);
        let Some((at, quote)) = next else { break };
        out.push_str(&rest[..at]);
        let after = &rest[at + QUOTED.len()..];
        let end = after.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(after.len());
        out.push_str(&expand(&after[..end], quote));
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The chart's `templates/apiserver-policies.yaml`.
pub fn helm_template() -> String {
    let docs = Generator { target: Target::Helm }.documents();
    let (validating, mutating) = docs.split_at(docs.len() - 2);
    let yaml = |docs: &[serde_json::Value]| fill(&to_yaml(docs).expect("the template serializes"));
    let mut out = String::from(
        "{{- /* Generated from src/policies/ (`DDG_BLESS=1 cargo test --lib policies::tests::chart_template`):\n\
         do not edit. It is `default-deny-guard policies` with the settings filled in from the values by\n\
         _apiserver-policies.tpl. */}}\n",
    );
    out.push_str("{{- if eq (include \"default-deny-guard.apiserverPolicies.enabled\" $) \"true\" }}\n---\n");
    out.push_str(&yaml(validating));
    out.push_str("{{- if include \"default-deny-guard.policies.mapVersion\" $ }}\n---\n");
    out.push_str(&yaml(mutating));
    out.push_str("{{- end }}\n{{- end }}\n");
    for (name, conditions) in match_conditions(Target::Helm) {
        let list = fill(&to_yaml(&[serde_json::to_value(conditions).expect("conditions serialize")]).expect("yaml"));
        out.push_str(&format!(
            "{{{{- define \"default-deny-guard.policies.matchConditions.{name}\" }}}}\n{}{{{{- end }}}}\n",
            list.trim_start_matches("---\n")
        ));
    }
    out
}

/// The `matchConditions` of the webhooks, by webhook (`networkpolicies`, `namespaces`, `mutate-namespaces`): the API
/// server calls the webhook only for requests whose verdict can be other than a plain allow.
pub fn webhook_match_conditions(settings: &Settings) -> Vec<(&'static str, Vec<MatchCondition>)> {
    let options = super::Options::default();
    match_conditions(Target::Cluster { settings, options: &options })
}

fn match_conditions(target: Target<'_>) -> Vec<(&'static str, Vec<MatchCondition>)> {
    // Webhook match conditions have no `variables`: the settings are spliced in as literals.
    let setting = |s: Setting| match target {
        Target::Cluster { settings, .. } => s.literal(settings),
        Target::Helm => raw(s.name()),
    };
    let key = setting(Setting::EnableKey);
    let value = setting(Setting::EnableValue);
    let enabled = |o: &str| {
        format!("has({o}.metadata.labels) && {key} in {o}.metadata.labels &&\n  {o}.metadata.labels[{key}] == {value}")
    };
    let condition = |name: &str, expression: String| MatchCondition { name: name.into(), expression };
    vec![
        (
            // R1, R2 and R3 concern only policies that select every pod, before or after the change.
            "networkpolicies",
            vec![condition(
                "selects-every-pod",
                format!("({}) ||\n({})", cel::selects_all("object"), cel::selects_all("oldObject")),
            )],
        ),
        (
            // R5 concerns only an update that takes the enable label away.
            "namespaces",
            vec![condition(
                "removes-the-enable-label",
                format!("({}) &&\n!({})", enabled("oldObject"), enabled("object")),
            )],
        ),
        (
            // R4 has nothing to do on a namespace created with the label.
            "mutate-namespaces",
            vec![condition("lacks-the-enable-label", format!("!({})", enabled("object")))],
        ),
    ]
}
