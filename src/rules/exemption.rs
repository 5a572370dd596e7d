//! Whether a namespace is exempt from the default-deny policy, and why: the same system-namespace and exception
//! checks as R4 and R5, packaged for the reconciler (which keeps the policy) and its backfill (which sets the label).

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;

use super::{Exception, Settings};

/// Why a namespace gets no default-deny policy, or why it does not escape one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exemption {
    /// Not exempt. `void_exception` says why an exception annotation that is present does not count.
    NotExempt { void_exception: Option<String> },
    /// Named in the system namespaces (exact name or `prefix-*` pattern).
    SystemName,
    /// Carries the label that selects system namespaces.
    SystemLabel,
    /// A valid exception annotation on the namespace.
    Exception {
        reason: String,
        /// The annotation as written.
        expires: Option<String>,
        /// The first instant at which the exception no longer counts.
        until: Option<Timestamp>,
    },
}

impl Exemption {
    pub fn is_exempt(&self) -> bool {
        !matches!(self, Exemption::NotExempt { .. })
    }

    /// When an exemption by exception ends, so that the caller can look again then.
    pub fn until(&self) -> Option<Timestamp> {
        match self {
            Exemption::Exception { until, .. } => *until,
            _ => None,
        }
    }
}

impl fmt::Display for Exemption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exemption::NotExempt { void_exception: None } => f.write_str("not exempt"),
            Exemption::NotExempt { void_exception: Some(why) } => write!(f, "not exempt (void exception: {why})"),
            Exemption::SystemName => f.write_str("system namespace"),
            Exemption::SystemLabel => f.write_str("system namespace (by label)"),
            Exemption::Exception { reason, expires: None, .. } => write!(f, "exception {reason:?}"),
            Exemption::Exception { reason, expires: Some(e), .. } => write!(f, "exception {reason:?} (expires {e})"),
        }
    }
}

impl Settings {
    /// Whether a namespace is a system namespace, by its name or by its labels.
    pub fn is_system_namespace(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.system_namespaces.contains_name(name) || self.system_namespaces.selects_labels(labels)
    }

    /// Whether the namespace `name` with these labels and annotations is exempt from the default-deny policy at
    /// `now`: a system namespace, or a valid exception annotation (as R4 and R5 judge them).
    pub fn namespace_exemption(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
        now: Timestamp,
    ) -> Exemption {
        if self.system_namespaces.contains_name(name) {
            return Exemption::SystemName;
        }
        if self.system_namespaces.selects_labels(labels) {
            return Exemption::SystemLabel;
        }
        let exception = Exception::read(annotations, &self.exception_keys, now);
        let until = exception.valid_until();
        match exception {
            Exception::Valid { reason, expires } => Exemption::Exception { reason, expires, until },
            Exception::Void { why, .. } => Exemption::NotExempt { void_exception: Some(why) },
            Exception::Absent => Exemption::NotExempt { void_exception: None },
        }
    }

    /// Whether a namespace carries the enable label with its value.
    pub fn is_enabled(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(&self.enable_label.key) == Some(&self.enable_label.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::SystemNamespaces;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn exemption_table() {
        let settings = Settings {
            system_namespaces: SystemNamespaces::new(
                ["kube-system", "openshift-*"],
                Some("platform/system".parse().unwrap()),
            )
            .unwrap(),
            ..Settings::default()
        };
        let now: Timestamp = "2026-06-30T12:00:00Z".parse().unwrap();
        let r = "default-deny-guard.io/exception";
        let e = "default-deny-guard.io/exception-expires";
        type Row<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [(&'a str, &'a str)], &'a str);
        let rows: &[Row] = &[
            ("kube-system", &[], &[], "system namespace"),
            ("openshift-dns", &[], &[], "system namespace"),
            ("platform", &[("platform/system", "yes")], &[], "system namespace (by label)"),
            // A system namespace needs no exception, and one present changes nothing.
            ("kube-system", &[], &[(r, "x")], "system namespace"),
            ("team-a", &[], &[], "not exempt"),
            ("team-a", &[], &[(r, "legacy CRM")], "exception \"legacy CRM\""),
            ("team-a", &[], &[(r, "legacy"), (e, "2026-07-01")], "exception \"legacy\" (expires 2026-07-01)"),
            ("team-a", &[], &[(r, "legacy"), (e, "2026-06-01")], "not exempt (void exception: "),
            ("team-a", &[], &[(r, " ")], "not exempt (void exception: "),
        ];
        for (name, labels, annotations, want) in rows {
            let got = settings.namespace_exemption(name, &map(labels), &map(annotations), now);
            assert!(got.to_string().starts_with(want), "{name} {labels:?} {annotations:?}: got {got}, want {want}");
            assert_eq!(got.is_exempt(), !want.starts_with("not exempt"), "{name}");
        }
        let until = settings.namespace_exemption("team-a", &map(&[]), &map(&[(r, "x"), (e, "2026-07-01")]), now);
        assert_eq!(until.until(), Some("2026-07-02T00:00:00Z".parse().unwrap()));
    }

    #[test]
    fn enabled_means_the_configured_label_with_its_value() {
        let settings = Settings::default();
        assert!(settings.is_enabled(&map(&[("default-deny", "enabled")])));
        assert!(!settings.is_enabled(&map(&[("default-deny", "disabled")])));
        assert!(!settings.is_enabled(&map(&[])));
        assert!(settings.is_system_namespace("kube-public", &map(&[])));
        assert!(!settings.is_system_namespace("team-a", &map(&[])));
    }
}
