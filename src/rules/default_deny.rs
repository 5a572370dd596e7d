//! Which NetworkPolicy is "default-deny": Kubernetes semantics, not names (docs/design.md section 3).
//!
//! Only the fields the rules read are decoded. Rules, peers and ports are counted, never built: a policy with 1,000
//! ingress rules costs no allocation per rule, and the untouched parts of the object are skipped by the parser.

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use smallvec::SmallVec;

/// A traffic direction that a NetworkPolicy can govern (`spec.policyTypes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        })
    }
}

/// The part of a NetworkPolicy's `spec` that decides whether it is default-deny.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// Absent or `null` is `{}`: the API server stores a missing selector as the empty one.
    #[serde(default, deserialize_with = "object_or_null")]
    pub pod_selector: LabelSelector,
    #[serde(default)]
    pub policy_types: Option<Vec<Direction>>,
    #[serde(default)]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default)]
    pub egress: Option<Vec<EgressRule>>,
}

/// A label selector, reduced to whether it has any term.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: Option<MapLen>,
    #[serde(default)]
    pub match_expressions: Option<ListLen>,
}

impl LabelSelector {
    /// `{}`, `{matchLabels: {}}` and `{matchExpressions: []}` all select every pod.
    pub fn selects_everything(&self) -> bool {
        self.match_labels.as_ref().is_none_or(|m| m.0 == 0) && self.match_expressions.as_ref().is_none_or(|l| l.0 == 0)
    }
}

/// One rule of a direction, reduced to how many peers and ports it lists. Its peers are under `from` in an ingress
/// rule and under `to` in an egress rule; a key of the other direction is unknown and ignored, as the API server
/// drops it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rule<const EGRESS: bool> {
    pub peers: usize,
    pub ports: usize,
}

pub type IngressRule = Rule<false>;
pub type EgressRule = Rule<true>;

impl<const EGRESS: bool> Rule<EGRESS> {
    /// A rule with no peers and no ports (`- {}`) allows all traffic in its direction.
    pub fn allows_everything(&self) -> bool {
        self.peers == 0 && self.ports == 0
    }
}

impl<'de, const EGRESS: bool> Deserialize<'de> for Rule<EGRESS> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RuleVisitor<const EGRESS: bool>;
        impl<'de, const EGRESS: bool> Visitor<'de> for RuleVisitor<EGRESS> {
            type Value = Rule<EGRESS>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(if EGRESS { "an egress rule object" } else { "an ingress rule object" })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let peers_key = if EGRESS { "to" } else { "from" };
                let mut rule = Rule::default();
                while let Some(super::BorrowedStr(key)) = map.next_key()? {
                    let count = |v: Option<ListLen>| v.map_or(0, |l| l.0);
                    if key == peers_key {
                        rule.peers = count(map.next_value()?);
                    } else if key == "ports" {
                        rule.ports = count(map.next_value()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(rule)
            }
        }
        d.deserialize_map(RuleVisitor::<EGRESS>)
    }
}

/// Reads a struct only from an object (or `null`, as its default): serde's derive would also take a list, and read
/// `[]` as an empty object.
pub(crate) fn object_or_null<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    struct ObjectVisitor<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de> + Default> Visitor<'de> for ObjectVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<T, E> {
            Ok(T::default())
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<T, E> {
            Ok(T::default())
        }
    }
    d.deserialize_any(ObjectVisitor(std::marker::PhantomData))
}

/// What a direction that a default-deny policy restricts still lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restricted {
    pub direction: Direction,
    /// The rules that punch holes into the deny; 0 means deny-all in this direction.
    pub allow_rules: usize,
}

/// Why a policy is default-deny: the directions it restricts while selecting every pod. Inline (there are two
/// directions): the rules ask a policy this several times a review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultDeny {
    restricted: SmallVec<[Restricted; 2]>,
}

impl DefaultDeny {
    pub fn restricted(&self) -> &[Restricted] {
        &self.restricted
    }

    pub fn is_deny_all(&self) -> bool {
        self.restricted.iter().all(|r| r.allow_rules == 0)
    }

    /// The directions in the order Kubernetes lists them, e.g. `Ingress, Egress`.
    pub fn directions(&self) -> String {
        let names: Vec<String> = self.restricted.iter().map(|r| r.direction.to_string()).collect();
        names.join(", ")
    }
}

impl fmt::Display for DefaultDeny {
    /// `deny-all (Ingress, Egress)` or `default-deny with 2 allow rules (Ingress)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use super::messages::{AllowRules, default_deny_kind};
        let allow_rules: usize = self.restricted.iter().map(|r| r.allow_rules).sum();
        let n = allow_rules.to_string();
        let count = match allow_rules {
            0 => AllowRules::None,
            1 => AllowRules::One,
            _ => AllowRules::Many(&n),
        };
        f.write_str(&default_deny_kind(count, &self.directions()))
    }
}

impl PolicySpec {
    /// The directions this policy governs, after the API's defaulting of `policyTypes`: when absent or empty,
    /// Ingress always and Egress only when there is at least one egress rule (`len(spec.Egress) != 0` in
    /// Kubernetes' `SetDefaults_NetworkPolicySpec`).
    pub fn governed(&self) -> impl Iterator<Item = Direction> + '_ {
        let listed = self.policy_types.as_deref().filter(|types| !types.is_empty());
        let egress_rules = self.egress.as_ref().is_some_and(|e| !e.is_empty());
        [Direction::Ingress, Direction::Egress].into_iter().filter(move |d| match listed {
            Some(types) => types.contains(d),
            None => *d == Direction::Ingress || egress_rules,
        })
    }

    /// `Some` when the policy selects every pod and some governed direction allows less than everything.
    pub fn default_deny(&self) -> Option<DefaultDeny> {
        if !self.pod_selector.selects_everything() {
            return None;
        }
        let restricted: SmallVec<[Restricted; 2]> = self
            .governed()
            .filter_map(|direction| {
                let (allow_all, rules) = match direction {
                    Direction::Ingress => {
                        let rules = self.ingress.as_deref().unwrap_or_default();
                        (rules.iter().any(Rule::allows_everything), rules.len())
                    }
                    Direction::Egress => {
                        let rules = self.egress.as_deref().unwrap_or_default();
                        (rules.iter().any(Rule::allows_everything), rules.len())
                    }
                };
                (!allow_all).then_some(Restricted { direction, allow_rules: rules })
            })
            .collect();
        (!restricted.is_empty()).then_some(DefaultDeny { restricted })
    }
}

/// A JSON/YAML list of objects, of which only the length is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListLen(pub usize);

/// A JSON/YAML map, of which only the number of entries is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapLen(pub usize);

/// An object whose content is skipped; anything but an object is an error, so that a wrong type fails to decode
/// instead of being silently counted.
struct SkippedObject;

impl<'de> Deserialize<'de> for SkippedObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MapLenVisitor).map(|_| SkippedObject)
    }
}

struct MapLenVisitor;

impl<'de> Visitor<'de> for MapLenVisitor {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(n)
    }
}

impl<'de> Deserialize<'de> for MapLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MapLenVisitor).map(MapLen)
    }
}

impl<'de> Deserialize<'de> for ListLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = usize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
                let mut n = 0;
                while seq.next_element::<SkippedObject>()?.is_some() {
                    n += 1;
                }
                Ok(n)
            }
        }
        d.deserialize_seq(ListVisitor).map(ListLen)
    }
}
