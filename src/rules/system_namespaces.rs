//! System namespaces: where a default-deny policy would cut the cluster's own traffic (DNS, control plane).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::str::FromStr;

/// The namespaces that never get a default-deny policy: exact names, `prefix-*` patterns and, optionally, every
/// namespace carrying a label.
///
/// The cost of a lookup does not grow with the number of entries: exact names are a hash lookup, and prefixes
/// are looked up by each length that some prefix has (at most 63, the longest namespace name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemNamespaces {
    exact: HashSet<String>,
    prefixes: HashSet<String>,
    prefix_lengths: BTreeSet<usize>,
    label: Option<LabelMatch>,
}

/// `key` (the label is present) or `key=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMatch {
    pub key: String,
    pub value: Option<String>,
}

impl FromStr for LabelMatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_owned())),
            None => (s.trim(), None),
        };
        if key.is_empty() {
            return Err(format!("{s:?}: a label selector is `key` or `key=value`"));
        }
        Ok(LabelMatch { key: key.to_owned(), value })
    }
}

impl fmt::Display for LabelMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.key),
            None => f.write_str(&self.key),
        }
    }
}

impl LabelMatch {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match (labels.get(&self.key), &self.value) {
            (Some(have), Some(want)) => have == want,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

impl Default for SystemNamespaces {
    fn default() -> Self {
        Self::new(["kube-system", "kube-public", "kube-node-lease"], None).expect("default system namespaces are valid")
    }
}

impl SystemNamespaces {
    /// `entries` are names, or prefixes written `prefix-*`.
    pub fn new<I, S>(entries: I, label: Option<LabelMatch>) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut this = SystemNamespaces {
            exact: HashSet::new(),
            prefixes: HashSet::new(),
            prefix_lengths: BTreeSet::new(),
            label,
        };
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            match entry.strip_suffix('*') {
                Some("") => {
                    return Err("system namespace pattern \"*\" would make every namespace a system namespace".into());
                }
                Some(prefix) if !prefix.contains('*') => {
                    this.prefix_lengths.insert(prefix.len());
                    this.prefixes.insert(prefix.to_owned());
                }
                None if !entry.contains('*') => {
                    this.exact.insert(entry.to_owned());
                }
                _ => {
                    return Err(format!(
                        "system namespace pattern {entry:?}: only a trailing `*` is supported (e.g. `openshift-*`)"
                    ));
                }
            }
        }
        Ok(this)
    }

    /// Whether the name alone makes a namespace a system namespace.
    pub fn contains_name(&self, name: &str) -> bool {
        self.exact.contains(name) || self.matches_prefix(name)
    }

    /// Whether a name still to be generated from `generateName` is a system namespace: only prefix patterns can
    /// tell, and only when the generated name is sure to start with the pattern.
    pub fn contains_generated(&self, generate_name: &str) -> bool {
        !generate_name.is_empty() && self.matches_prefix(generate_name)
    }

    fn matches_prefix(&self, name: &str) -> bool {
        self.prefix_lengths.range(..=name.len()).any(|&n| name.get(..n).is_some_and(|p| self.prefixes.contains(p)))
    }

    /// Whether a namespace's labels make it a system namespace (needs the namespace's labels: from the object
    /// itself for a Namespace review, from the namespace cache for a NetworkPolicy review).
    pub fn selects_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.label.as_ref().is_some_and(|l| l.matches(labels))
    }

    /// The exact names, sorted.
    pub fn exact_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.exact.iter().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The prefixes of the `prefix-*` patterns (without the `*`), sorted.
    pub fn prefixes(&self) -> Vec<&str> {
        let mut prefixes: Vec<&str> = self.prefixes.iter().map(String::as_str).collect();
        prefixes.sort_unstable();
        prefixes
    }

    /// The label that selects system namespaces, if one is configured.
    pub fn label(&self) -> Option<&LabelMatch> {
        self.label.as_ref()
    }
}

impl fmt::Display for SystemNamespaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut all: Vec<String> = self.exact.iter().cloned().collect();
        all.extend(self.prefixes.iter().map(|p| format!("{p}*")));
        all.sort();
        if let Some(l) = &self.label {
            all.push(format!("label {l}"));
        }
        f.write_str(&all.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_prefixes_and_labels() {
        let sys = SystemNamespaces::new(
            ["kube-system", "kube-public", "kube-node-lease", "openshift-*", "istio-system", " "],
            Some("platform.example.com/system=true".parse().unwrap()),
        )
        .unwrap();
        let cases = [
            ("kube-system", true),
            ("kube-public", true),
            ("kube-node-lease", true),
            ("kube-systemx", false),
            ("kube", false),
            ("openshift-", true),
            ("openshift-monitoring", true),
            ("openshift", false),
            ("istio-system", true),
            ("production", false),
            ("", false),
        ];
        for (name, want) in cases {
            assert_eq!(sys.contains_name(name), want, "{name}");
        }
        assert!(sys.contains_generated("openshift-job-"));
        assert!(!sys.contains_generated("kube-system"), "a generated name only starts with generateName");
        assert!(!sys.contains_generated(""));

        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(sys.selects_labels(&labels(&[("platform.example.com/system", "true")])));
        assert!(!sys.selects_labels(&labels(&[("platform.example.com/system", "false")])));
        assert!(!sys.selects_labels(&labels(&[])));
        let present: LabelMatch = "platform.example.com/system".parse().unwrap();
        assert!(present.matches(&labels(&[("platform.example.com/system", "")])));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["*", "kube-*-x", "*-system", "a**"] {
            assert!(SystemNamespaces::new([bad], None).is_err(), "{bad}");
        }
        assert!("=x".parse::<LabelMatch>().is_err());
    }

    #[test]
    fn defaults_are_the_three_kube_namespaces() {
        let sys = SystemNamespaces::default();
        assert_eq!(sys.to_string(), "kube-node-lease,kube-public,kube-system");
    }
}
