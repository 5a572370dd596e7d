//! The words of every decision, in one place: the webhook fills them with the request's values, and the
//! in-API-server policies (`crate::policies`) fill them with CEL expressions, so that both engines say exactly the
//! same thing. Every part that depends on the request or the settings is an argument; nothing here reads a setting.

/// `deny-all (Ingress)` or `default-deny with N allow rules (Ingress, Egress)`. `allow_rules` is the count as
/// text, for the CEL side; [`AllowRules`] picks the wording.
pub fn default_deny_kind(allow_rules: AllowRules<'_>, directions: &str) -> String {
    match allow_rules {
        AllowRules::None => format!("deny-all ({directions})"),
        AllowRules::One => format!("default-deny with 1 allow rule ({directions})"),
        AllowRules::Many(n) => format!("default-deny with {n} allow rules ({directions})"),
    }
}

/// How many allow rules a default-deny policy has, as the message words it.
#[derive(Debug, Clone, Copy)]
pub enum AllowRules<'a> {
    None,
    One,
    Many(&'a str),
}

pub fn system_by_name(namespace: &str) -> String {
    format!("{namespace} is a system namespace")
}

pub fn system_by_label(namespace: &str, label: &str) -> String {
    format!("namespace {namespace} is a system namespace (it carries the label {label})")
}

pub fn r1_system_namespace(namespace: &str, name: &str, deny: &str, why: &str) -> String {
    format!(
        "NetworkPolicy {namespace}/{name} is {deny} and {why}: a policy that selects every pod there \
         cuts the cluster's own traffic (DNS, API server, node heartbeats). Default-deny belongs in \
         application namespaces; in {namespace}, select the pods to restrict with a podSelector instead."
    )
}

/// `kubectl annotate networkpolicy NAME -n NS KEY='<reason>' [EXPIRES=<RFC 3339 date>]`; `namespace_flag` is
/// ` -n NS` or empty.
pub fn annotate_hint(kind: &str, name: &str, namespace_flag: &str, reason_key: &str, expires_key: &str) -> String {
    format!("kubectl annotate {kind} {name}{namespace_flag} {reason_key}='<reason>' [{expires_key}=<RFC 3339 date>]")
}

pub fn r2_delete(namespace: &str, name: &str, deny: &str, hint: &str, void_note: &str) -> String {
    format!(
        "NetworkPolicy {namespace}/{name} is the default-deny policy of namespace {namespace} ({deny}); \
         deleting it would open every pod there to all traffic.{void_note} To delete it on purpose, record an \
         exception first: {hint}"
    )
}

/// What a weakened policy became, as R3 words it.
pub const R3_ALLOWS_ALL: &str = "allows all traffic in every direction it governs";
pub const R3_SELECTS_SOME: &str = "selects only some pods";

pub fn r3_weakening(
    namespace: &str,
    name: &str,
    before: &str,
    after: &str,
    reason_key: &str,
    expires_key: &str,
    void_note: &str,
) -> String {
    format!(
        "this update turns NetworkPolicy {namespace}/{name} from {before} into a policy that {after}: \
         weakening the default-deny policy of namespace {namespace} opens its pods as a deletion would. \
         To do it on purpose, add the annotation {reason_key}='<reason>' (and optionally {expires_key}=<RFC 3339 \
         date>) to the policy in the same change.{void_note}"
    )
}

/// `quoted_value` is the new value, quoted (`"off"`).
pub fn r5_changing(key: &str, quoted_value: &str) -> String {
    format!("changing the label {key} to {quoted_value}")
}

pub fn r5_removing(label: &str) -> String {
    format!("removing the label {label}")
}

pub fn r5_keep_label(
    name: &str,
    label: &str,
    change: &str,
    reason_key: &str,
    expires_key: &str,
    void_note: &str,
) -> String {
    format!(
        "namespace {name} must keep the label {label}: {change} would leave the namespace without its \
         default-deny policy. To opt the namespace out on purpose, add the annotation {reason_key}='<reason>' (and \
         optionally {expires_key}=<RFC 3339 date>) in the same change.{void_note}"
    )
}

/// Appended to a denial when the exception annotation present does not count.
pub fn void_note(why: &str) -> String {
    format!(" The exception present does not count: {why}.")
}

pub fn void_empty_reason(reason_key: &str) -> String {
    format!("{reason_key} is empty: give the reason for the exception")
}

pub fn void_missing_reason(reason_key: &str, expires_key: &str) -> String {
    format!("{expires_key} is set but {reason_key} is missing")
}

/// The warning of a rule in warn mode: `R2 (warn mode, allowed): <the denial>`.
pub fn warn_mode(rule: &str, message: &str) -> String {
    format!("{rule} (warn mode, allowed): {message}")
}
