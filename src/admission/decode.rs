//! The one-pass decoder: a review's objects read in the envelope's own pass, as the fields either kind reads, and
//! the decoding that says where it failed.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::rules::default_deny::object_or_null;
use crate::rules::{BorrowedStr, ExceptionKeys, Metadata, Namespace, NetworkPolicy, PolicySpec, null_as_default};

/// An object read in the envelope's own pass, before its kind is known: the fields of a NetworkPolicy, of which a
/// Namespace reads the metadata. Decoded as [`crate::rules::NetworkPolicy`] is, but for the annotations' values
/// (see [`MetadataIn`]).
///
/// Why: reading the objects as raw JSON and then again as their kind scans every byte of them twice; this single
/// pass takes a typical NetworkPolicy CREATE from ~71,000 to ~50,000 instructions (callgrind,
/// `examples/profile_review`), and the 1,000-rule UPDATE from 28.7 to 16.9 million.
/// An object that does not read as this (a Namespace whose `spec` a NetworkPolicy's could not be, a deeper object
/// than the parser's depth limit allows inside the envelope, any error at all) sends the whole review down the
/// two-pass path, whose answer, error messages included, is the reference: the fast path may refuse more, never
/// accept more (`tests::one_pass_answers_as_two_passes` compares them).
#[derive(Deserialize)]
pub(super) struct AnyObject<'a> {
    #[serde(default, borrow, deserialize_with = "object_or_null")]
    pub(super) metadata: MetadataIn<'a>,
    #[serde(default, deserialize_with = "object_or_null")]
    pub(super) spec: PolicySpec,
}

/// [`Metadata`] as the one pass reads it: the same fields and the same rules (keep the two in step; building a
/// `Metadata` from it names every field), except that each annotation's value is kept as raw JSON and only the
/// exception keys' values are decoded, in [`MetadataIn::into_metadata`].
///
/// Why: `kubectl.kubernetes.io/last-applied-configuration` is the whole object again as an escaped string;
/// unescaping it into a `String` that no rule reads took seven reallocations of the parser's scratch buffer and
/// ~6,000 of a typical CREATE's ~50,000 instructions.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct MetadataIn<'a> {
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) generate_name: String,
    #[serde(default)]
    pub(super) namespace: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) labels: BTreeMap<String, String>,
    #[serde(default, borrow, deserialize_with = "null_as_default")]
    pub(super) annotations: RawAnnotations<'a>,
    #[serde(default)]
    pub(super) deletion_timestamp: Option<String>,
}

/// Annotations with their values as raw JSON, in document order; inline up to two (kubectl's last-applied and one
/// more), which is most objects.
#[derive(Default)]
pub(super) struct RawAnnotations<'a>(pub(super) SmallVec<[(Cow<'a, str>, &'a RawValue); 2]>);

impl<'de: 'a, 'a> Deserialize<'de> for RawAnnotations<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = RawAnnotations<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = SmallVec::new();
                while let Some(BorrowedStr(key)) = map.next_key()? {
                    let value: &'de RawValue = map.next_value()?;
                    // What a `String` would not take must not pass here either. JSON syntax and control
                    // characters the parser checked while skipping the value, but not lone surrogates (`\ud800`):
                    // a value with a `\u` escape is decoded here to be sure.
                    let text = value.get();
                    // memchr's memmem, SIMD where std's substring search is not: the value searched is kubectl's
                    // last-applied copy of the whole object.
                    let string = text.starts_with('"')
                        && (memchr::memmem::find(text.as_bytes(), b"\\u").is_none()
                            || serde_json::from_str::<String>(text).is_ok());
                    if !string {
                        return Err(serde::de::Error::custom("an annotation's value is not a string"));
                    }
                    entries.push((key, value));
                }
                Ok(RawAnnotations(entries))
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

impl MetadataIn<'_> {
    /// The rules' `Metadata`, with the annotations they read: the exception keys (a key given twice: the last
    /// wins, as in a map).
    pub(super) fn into_metadata(self, keys: &ExceptionKeys) -> Metadata {
        let mut annotations = BTreeMap::new();
        for (key, value) in self.annotations.0 {
            if *key == *keys.reason || *key == *keys.expires {
                let value: String = serde_json::from_str(value.get()).expect("checked to be a string");
                annotations.insert(key.into_owned(), value);
            }
        }
        Metadata {
            name: self.name,
            generate_name: self.generate_name,
            namespace: self.namespace,
            labels: self.labels,
            annotations,
            deletion_timestamp: self.deletion_timestamp,
        }
    }
}

/// How an object field turns into the kind that the request names.
pub(super) trait ObjectIn {
    /// `field`: `object` or `oldObject`, for the error message.
    fn read_as<K: Kind>(self, field: &str, keys: &ExceptionKeys) -> Result<K, String>;
}

/// Boxed in the review as decoded, so that moving the decoded review moves two pointers, not two objects.
impl ObjectIn for Box<AnyObject<'_>> {
    fn read_as<K: Kind>(self, _: &str, keys: &ExceptionKeys) -> Result<K, String> {
        let AnyObject { metadata, spec } = *self;
        Ok(K::from_parts(metadata.into_metadata(keys), spec))
    }
}

impl ObjectIn for &RawValue {
    fn read_as<K: Kind>(self, field: &str, _: &ExceptionKeys) -> Result<K, String> {
        decode(self.get()).map_err(|e| match e.path {
            Some(path) => format!("{field}.{path}: {}", e.error),
            None => format!("{field}: {}", e.error),
        })
    }
}

/// The kinds the rules read.
pub(super) trait Kind: for<'de> Deserialize<'de> {
    fn from_parts(metadata: Metadata, spec: PolicySpec) -> Self;
}

impl Kind for NetworkPolicy {
    fn from_parts(metadata: Metadata, spec: PolicySpec) -> Self {
        NetworkPolicy { metadata, spec }
    }
}

impl Kind for Namespace {
    fn from_parts(metadata: Metadata, _: PolicySpec) -> Self {
        Namespace { metadata }
    }
}

/// A decoding error and where it happened (`None`: at the top).
pub(super) struct DecodeError {
    pub(super) path: Option<String>,
    pub(super) error: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{path}: {}", self.error),
            None => f.write_str(&self.error),
        }
    }
}

/// Decodes JSON, and on failure says where. The path is only tracked
/// when decoding has failed, since tracking it costs an allocation per object key on the fast path.
pub(super) fn decode<'de, T: Deserialize<'de>>(input: impl Input<'de>) -> Result<T, DecodeError> {
    input.parse().map_err(|first| {
        let mut de = input.deserializer();
        let tracked: Result<T, _> = serde_path_to_error::deserialize(&mut de);
        match tracked {
            Err(e) => {
                let path = e.path().to_string();
                DecodeError { path: (path != ".").then_some(path), error: e.into_inner().to_string() }
            }
            // Trailing characters: the tracked run stops before them.
            Ok(_) => DecodeError { path: None, error: first.to_string() },
        }
    })
}

/// JSON input: bytes, or text already known to be UTF-8 (which the parser then does not check again).
pub(super) trait Input<'de>: Copy {
    type Read: serde_json::de::Read<'de>;
    fn parse<T: Deserialize<'de>>(self) -> serde_json::Result<T>;
    fn deserializer(self) -> serde_json::Deserializer<Self::Read>;
}

impl<'de> Input<'de> for &'de [u8] {
    type Read = serde_json::de::SliceRead<'de>;
    fn parse<T: Deserialize<'de>>(self) -> serde_json::Result<T> {
        serde_json::from_slice(self)
    }
    fn deserializer(self) -> serde_json::Deserializer<Self::Read> {
        serde_json::Deserializer::from_slice(self)
    }
}

impl<'de> Input<'de> for &'de str {
    type Read = serde_json::de::StrRead<'de>;
    fn parse<T: Deserialize<'de>>(self) -> serde_json::Result<T> {
        serde_json::from_str(self)
    }
    fn deserializer(self) -> serde_json::Deserializer<Self::Read> {
        serde_json::Deserializer::from_str(self)
    }
}
