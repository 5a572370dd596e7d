//! Which namespaces are protected, unprotected or exempt: one pure function from a namespace's metadata and its
//! managed policy (if any) to a [`NamespaceState`], shared by the reconcile decision, the
//! `default_deny_guard_namespaces` gauge and the `--once` report.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::desired::{Drift, POLICY_NAME, PolicyTemplate};
use crate::rules::{Exemption, Settings};

/// Where a namespace stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceState {
    /// The managed policy is there, as desired.
    Protected,
    /// No policy, or not the desired one.
    Unprotected(Gap),
    /// A system namespace, or a valid exception: no policy wanted (one left behind is left alone).
    Exempt(Exemption),
    /// Being deleted: nothing to do, and not counted.
    Terminating,
}

/// Why a namespace is unprotected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gap {
    /// It lacks the enable label (and is not exempt): `--backfill` labels it. `void_exception` says why an
    /// exception annotation on it does not count.
    NotEnabled { void_exception: Option<String> },
    /// Enabled, but the policy is missing: the reconciler creates it.
    Missing,
    /// Enabled, but the policy differs from the desired one: the reconciler restores it.
    Drifted(Drift),
}

impl NamespaceState {
    /// The `state` label of the gauge; `None` for a namespace being deleted.
    pub fn metric_label(&self) -> Option<&'static str> {
        match self {
            NamespaceState::Protected => Some("protected"),
            NamespaceState::Unprotected(_) => Some("unprotected"),
            NamespaceState::Exempt(_) => Some("exempt"),
            NamespaceState::Terminating => None,
        }
    }
}

impl fmt::Display for NamespaceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamespaceState::Protected => write!(f, "protected by NetworkPolicy {POLICY_NAME}"),
            NamespaceState::Unprotected(gap) => write!(f, "unprotected: {gap}"),
            NamespaceState::Exempt(why) => write!(f, "exempt: {why}"),
            NamespaceState::Terminating => f.write_str("being deleted"),
        }
    }
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gap::NotEnabled { void_exception: None } => f.write_str("the enable label is missing"),
            Gap::NotEnabled { void_exception: Some(why) } => {
                write!(f, "the enable label is missing, and the exception does not count: {why}")
            }
            Gap::Missing => write!(f, "NetworkPolicy {POLICY_NAME} is missing"),
            Gap::Drifted(drift) => write!(f, "NetworkPolicy {POLICY_NAME} differs from the desired one ({drift})"),
        }
    }
}

/// The state of one namespace. `policy` is the namespace's managed `default-deny-all`, if the reconciler's cache
/// has one.
pub fn classify(
    settings: &Settings,
    template: &PolicyTemplate,
    namespace: &ObjectMeta,
    policy: Option<&NetworkPolicy>,
    now: Timestamp,
) -> NamespaceState {
    if namespace.deletion_timestamp.is_some() {
        return NamespaceState::Terminating;
    }
    let empty = BTreeMap::new();
    let name = namespace.name.as_deref().unwrap_or_default();
    let labels = namespace.labels.as_ref().unwrap_or(&empty);
    let annotations = namespace.annotations.as_ref().unwrap_or(&empty);
    let void_exception = match settings.namespace_exemption(name, labels, annotations, now) {
        Exemption::NotExempt { void_exception } => void_exception,
        exempt => return NamespaceState::Exempt(exempt),
    };
    let drift = policy.map(|p| template.drift(p));
    match (settings.is_enabled(labels), drift) {
        // In place and as desired: protected, label or not.
        (_, Some(None)) => NamespaceState::Protected,
        (false, _) => NamespaceState::Unprotected(Gap::NotEnabled { void_exception }),
        (true, None) => NamespaceState::Unprotected(Gap::Missing),
        (true, Some(Some(drift))) => NamespaceState::Unprotected(Gap::Drifted(drift)),
    }
}

/// Counts by state, and the unprotected namespaces with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    pub protected: usize,
    pub exempt: usize,
    /// Sorted by name.
    pub unprotected: Vec<(String, Gap)>,
}

impl Survey {
    /// Surveys `namespaces`, looking their managed policy up with `policy_of`.
    pub fn of<'a, P>(
        settings: &Settings,
        template: &PolicyTemplate,
        namespaces: impl IntoIterator<Item = &'a ObjectMeta>,
        policy_of: impl Fn(&str) -> Option<P>,
        now: Timestamp,
    ) -> Survey
    where
        P: std::ops::Deref<Target = NetworkPolicy>,
    {
        let mut survey = Survey::default();
        for ns in namespaces {
            let name = ns.name.as_deref().unwrap_or_default();
            let policy = policy_of(name);
            match classify(settings, template, ns, policy.as_deref(), now) {
                NamespaceState::Protected => survey.protected += 1,
                NamespaceState::Exempt(_) => survey.exempt += 1,
                NamespaceState::Unprotected(gap) => survey.unprotected.push((name.to_owned(), gap)),
                NamespaceState::Terminating => {}
            }
        }
        survey.unprotected.sort_by(|a, b| a.0.cmp(&b.0));
        survey
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::desired::DnsAllowance;
    use crate::rules::SystemNamespaces;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use crate::reconcile::mock::namespace_meta as meta;

    #[test]
    fn namespace_state_table() {
        let settings = Settings {
            system_namespaces: SystemNamespaces::new(
                ["kube-system", "kube-public"],
                Some("platform/system".parse().unwrap()),
            )
            .unwrap(),
            ..Settings::default()
        };
        let template = PolicyTemplate::new("Ingress".parse().unwrap(), DnsAllowance::default());
        let now: Timestamp = "2026-06-30T12:00:00Z".parse().unwrap();
        let good = template.policy("x");
        let drifted: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "default-deny-all", "labels": {"app.kubernetes.io/managed-by": "default-deny-guard"}},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]}
        }))
        .unwrap();
        let on = [("default-deny", "enabled")];
        let exc = "default-deny-guard.io/exception";
        let exp = "default-deny-guard.io/exception-expires";
        let mut terminating = meta("leaving", &on, &[]);
        terminating.deletion_timestamp = Some(Time(now));

        let rows: Vec<(ObjectMeta, Option<&NetworkPolicy>, &str)> = vec![
            (meta("team-a", &on, &[]), Some(&good), "protected"),
            (meta("team-a", &on, &[]), None, "unprotected: NetworkPolicy default-deny-all is missing"),
            (
                meta("team-a", &on, &[]),
                Some(&drifted),
                "unprotected: NetworkPolicy default-deny-all differs from the desired one (spec.ingress)",
            ),
            (meta("team-b", &[], &[]), None, "unprotected: the enable label is missing"),
            (meta("team-b", &[("default-deny", "disabled")], &[]), None, "unprotected: the enable label is missing"),
            (meta("team-b", &[], &[]), Some(&good), "protected"),
            (meta("team-b", &[], &[]), Some(&drifted), "unprotected: the enable label is missing"),
            (meta("team-c", &[], &[(exc, "legacy")]), None, "exempt: exception \"legacy\""),
            // Opted out with the policy still there: exempt, and the policy is left alone.
            (meta("team-c", &on, &[(exc, "legacy")]), Some(&good), "exempt: exception"),
            (
                meta("team-c", &on, &[(exc, "legacy"), (exp, "2026-07-01")]),
                None,
                "exempt: exception \"legacy\" (expires",
            ),
            (
                meta("team-c", &on, &[(exc, "legacy"), (exp, "2026-06-01")]),
                None,
                "unprotected: NetworkPolicy default-deny-all is missing",
            ),
            (
                meta("team-d", &[], &[(exc, "")]),
                None,
                "unprotected: the enable label is missing, and the exception does not count",
            ),
            (meta("kube-system", &[], &[]), None, "exempt: system namespace"),
            (meta("kube-public", &on, &[]), Some(&good), "exempt: system namespace"),
            (meta("platform", &[("platform/system", "true")], &[]), None, "exempt: system namespace (by label)"),
            (terminating, None, "being deleted"),
        ];
        for (ns, policy, want) in rows {
            let got = classify(&settings, &template, &ns, policy, now).to_string();
            assert!(
                got.starts_with(want),
                "{:?} with policy {}: got {got:?}, want {want:?}",
                ns.name,
                policy.is_some()
            );
        }
    }

    #[test]
    fn survey_counts_and_lists_the_unprotected_by_name() {
        let settings = Settings::default();
        let template = PolicyTemplate::new("Ingress".parse().unwrap(), DnsAllowance::default());
        let now: Timestamp = "2026-06-30T12:00:00Z".parse().unwrap();
        let on = [("default-deny", "enabled")];
        let namespaces = [
            meta("b-missing", &on, &[]),
            meta("a-unlabelled", &[], &[]),
            meta("protected", &on, &[]),
            meta("kube-system", &[], &[]),
        ];
        let policy = std::sync::Arc::new(template.policy("protected"));
        let survey =
            Survey::of(&settings, &template, &namespaces, |name| (name == "protected").then(|| policy.clone()), now);
        assert_eq!(survey.protected, 1);
        assert_eq!(survey.exempt, 1);
        let names: Vec<&str> = survey.unprotected.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a-unlabelled", "b-missing"]);
    }
}
