//! What marks the objects default-deny-guard writes, the reconciler's policies and the audit's reports, as its own:
//! one name and one label, defined once so that what is written and what is listed or watched cannot drift apart.

use std::collections::BTreeMap;

/// The server-side apply field manager, the reporting controller of Events, and the managed-by label's value.
pub const MANAGER: &str = "default-deny-guard";
/// The label that marks the objects the reconciler manages, and by which it watches and lists them.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// The label selector of the objects the reconciler manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY}={MANAGER}")
}

/// The labels of a managed object as written: the managed-by label, nothing else.
pub fn managed_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY.to_owned(), MANAGER.to_owned())])
}

/// Whether `labels` carry the managed-by label with our value.
pub fn is_managed(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.and_then(|l| l.get(MANAGED_BY)).is_some_and(|v| v == MANAGER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_means_our_value_of_the_managed_by_label() {
        let with = |value: &str| BTreeMap::from([(MANAGED_BY.to_owned(), value.to_owned())]);
        let cases = [
            (Some(managed_labels()), true),
            (Some(with("argocd")), false),
            (Some(BTreeMap::from([("team".to_owned(), MANAGER.to_owned())])), false),
            (Some(BTreeMap::new()), false),
            (None, false),
        ];
        for (labels, want) in cases {
            assert_eq!(is_managed(labels.as_ref()), want, "{labels:?}");
        }
        assert_eq!(managed_selector(), "app.kubernetes.io/managed-by=default-deny-guard");
    }
}
