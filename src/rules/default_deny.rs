//! Which NetworkPolicy is "default-deny": Kubernetes semantics, not names (docs/design.md section 3).
//!
//! Only the fields the rules read are decoded. Rules, peers and ports are counted, never built: a policy with 1,000
//! ingress rules costs no allocation at all, and the untouched parts of the object are skipped by the parser.

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
    pub policy_types: Option<Directions>,
    #[serde(default)]
    pub ingress: Option<Rules<false>>,
    #[serde(default)]
    pub egress: Option<Rules<true>>,
}

/// `spec.policyTypes`, reduced to which directions it lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directions {
    pub ingress: bool,
    pub egress: bool,
}

impl Directions {
    fn is_empty(self) -> bool {
        !self.ingress && !self.egress
    }

    fn contains(self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress,
            Direction::Egress => self.egress,
        }
    }
}

/// The rules of one direction, reduced to what decides default-deny: how many there are, and whether one of them
/// allows everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules<const EGRESS: bool> {
    pub len: usize,
    pub allow_everything: bool,
}

/// A list read element by element as `T` (so that an error names the element, `spec.ingress[0]`), folded into
/// `Self` without keeping the elements: no allocation per list.
trait FoldSeq<T>: Default {
    fn add(&mut self, element: T);
}

impl FoldSeq<Direction> for Directions {
    fn add(&mut self, direction: Direction) {
        match direction {
            Direction::Ingress => self.ingress = true,
            Direction::Egress => self.egress = true,
        }
    }
}

impl<const EGRESS: bool> FoldSeq<Rule<EGRESS>> for Rules<EGRESS> {
    fn add(&mut self, rule: Rule<EGRESS>) {
        self.len += 1;
        self.allow_everything |= rule.allows_everything();
    }
}

fn fold_seq<'de, D: Deserializer<'de>, T: Deserialize<'de>, F: FoldSeq<T>>(d: D) -> Result<F, D::Error> {
    struct SeqVisitor<T, F>(std::marker::PhantomData<(T, F)>);
    impl<'de, T: Deserialize<'de>, F: FoldSeq<T>> Visitor<'de> for SeqVisitor<T, F> {
        type Value = F;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // As serde's `Vec` says it, which this replaces.
            f.write_str("a sequence")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<F, A::Error> {
            let mut folded = F::default();
            while let Some(element) = seq.next_element::<T>()? {
                folded.add(element);
            }
            Ok(folded)
        }
    }
    d.deserialize_seq(SeqVisitor(std::marker::PhantomData))
}

impl<'de> Deserialize<'de> for Directions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fold_seq::<D, Direction, Self>(d)
    }
}

impl<'de, const EGRESS: bool> Deserialize<'de> for Rules<EGRESS> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fold_seq::<D, Rule<EGRESS>, Self>(d)
    }
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
        let listed = self.policy_types.filter(|types| !types.is_empty());
        let egress_rules = self.egress.is_some_and(|e| e.len > 0);
        [Direction::Ingress, Direction::Egress].into_iter().filter(move |d| match listed {
            Some(types) => types.contains(*d),
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
                let rules = match direction {
                    Direction::Ingress => self.ingress.map(|r| (r.len, r.allow_everything)),
                    Direction::Egress => self.egress.map(|r| (r.len, r.allow_everything)),
                };
                let (len, allow_everything) = rules.unwrap_or_default();
                (!allow_everything).then_some(Restricted { direction, allow_rules: len })
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
