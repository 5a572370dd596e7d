//! Recorded exceptions: `default-deny-guard.io/exception: "<reason>"` with an optional
//! `default-deny-guard.io/exception-expires: <RFC 3339 date or date-time>`.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

/// The exception annotations' keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionKeys {
    pub reason: String,
    pub expires: String,
}

impl Default for ExceptionKeys {
    fn default() -> Self {
        Self {
            reason: "default-deny-guard.io/exception".into(),
            expires: "default-deny-guard.io/exception-expires".into(),
        }
    }
}

/// What an object's exception annotations amount to at a given moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exception {
    /// No exception annotation.
    Absent,
    /// A usable exception.
    Valid { reason: String, expires: Option<String> },
    /// An annotation that does not count, and why (said in the answer so that the user can fix it). `expired`: it
    /// was a valid exception whose expiry has passed (the audit tells it from an unreadable one).
    Void { why: String, expired: bool },
}

impl Exception {
    /// Reads the annotations. A date without a time lasts to the end of that day (UTC): `2025-06-30` is still
    /// valid on June 30th.
    pub fn read(annotations: &BTreeMap<String, String>, keys: &ExceptionKeys, now: Timestamp) -> Exception {
        let Some(reason) = annotations.get(&keys.reason) else {
            return match annotations.get(&keys.expires) {
                Some(_) => Exception::void(super::messages::void_missing_reason(&keys.reason, &keys.expires)),
                None => Exception::Absent,
            };
        };
        if reason.trim().is_empty() {
            return Exception::void(super::messages::void_empty_reason(&keys.reason));
        }
        let Some(raw) = annotations.get(&keys.expires) else {
            return Exception::Valid { reason: reason.clone(), expires: None };
        };
        match parse_expiry(raw) {
            Some(end) if end > now => Exception::Valid { reason: reason.clone(), expires: Some(raw.trim().to_owned()) },
            Some(_) => {
                Exception::Void { why: format!("{} expired ({}={raw})", keys.reason, keys.expires), expired: true }
            }
            None => Exception::void(format!(
                "{}={raw:?} is not an RFC 3339 date or date-time (e.g. 2026-06-30 or 2026-06-30T18:00:00Z)",
                keys.expires
            )),
        }
    }
}

impl Exception {
    fn void(why: String) -> Exception {
        Exception::Void { why, expired: false }
    }

    /// The first instant at which a valid exception no longer counts, when it has an expiry; `None` otherwise.
    pub fn valid_until(&self) -> Option<Timestamp> {
        match self {
            Exception::Valid { expires: Some(raw), .. } => parse_expiry(raw),
            _ => None,
        }
    }
}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exception::Absent => f.write_str("no exception"),
            Exception::Valid { reason, expires: None } => write!(f, "exception {reason:?}"),
            Exception::Valid { reason, expires: Some(e) } => write!(f, "exception {reason:?} (expires {e})"),
            Exception::Void { why, .. } => write!(f, "void exception: {why}"),
        }
    }
}

/// The first instant at which an exception is no longer valid.
fn parse_expiry(raw: &str) -> Option<Timestamp> {
    let raw = raw.trim();
    if let Ok(ts) = raw.parse::<Timestamp>() {
        return Some(ts);
    }
    let date: Date = raw.parse().ok()?;
    // A bare date must be exactly `YYYY-MM-DD`; jiff would also read a datetime without offset as a date.
    if raw.len() != 10 {
        return None;
    }
    date.tomorrow().ok()?.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn exception_table() {
        let keys = ExceptionKeys::default();
        let now = at("2026-06-30T12:00:00Z");
        let r = "default-deny-guard.io/exception";
        let e = "default-deny-guard.io/exception-expires";
        // (annotations, expected: Some(expires) for valid, or a fragment of the void reason, or "absent")
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "absent"),
            (&[("other", "x")], "absent"),
            (&[(r, "migration SEC-789")], "valid:-"),
            (&[(r, "migration"), (e, "2026-06-30")], "valid:2026-06-30"),
            (&[(r, "migration"), (e, "2026-07-01T00:00:00Z")], "valid:2026-07-01T00:00:00Z"),
            (&[(r, "migration"), (e, "2026-06-30T14:00:00+02:00")], "void:expired"),
            (&[(r, "migration"), (e, "2026-06-29")], "void:expired"),
            (&[(r, "migration"), (e, "2026-06-30T11:59:59Z")], "void:expired"),
            (&[(r, "migration"), (e, "2026-06-30T12:00:00Z")], "void:expired"),
            (&[(r, "migration"), (e, "next week")], "void:not an RFC 3339"),
            (&[(r, "migration"), (e, "2026-07-01T10:00:00")], "void:not an RFC 3339"),
            (&[(r, "migration"), (e, "")], "void:not an RFC 3339"),
            (&[(r, "")], "void:is empty"),
            (&[(r, "   ")], "void:is empty"),
            (&[(e, "2030-01-01")], "void:is missing"),
        ];
        for (pairs, want) in cases {
            let got = Exception::read(&annotations(pairs), &keys, now);
            match (want.split_once(':'), &got) {
                (None, Exception::Absent) => {}
                (Some(("valid", "-")), Exception::Valid { expires: None, .. }) => {}
                (Some(("valid", exp)), Exception::Valid { expires: Some(e), .. }) if e == exp => {}
                (Some(("void", frag)), Exception::Void { why, expired })
                    if why.contains(frag) && *expired == (frag == "expired") => {}
                _ => panic!("{pairs:?}: want {want}, got {got:?}"),
            }
        }
    }

    #[test]
    fn valid_until_is_the_first_instant_without_the_exception() {
        let keys = ExceptionKeys::default();
        let now = at("2026-06-30T12:00:00Z");
        let read = |pairs: &[(&str, &str)]| Exception::read(&annotations(pairs), &keys, now);
        let r = "default-deny-guard.io/exception";
        let e = "default-deny-guard.io/exception-expires";
        assert_eq!(read(&[(r, "x"), (e, "2026-06-30")]).valid_until(), Some(at("2026-07-01T00:00:00Z")));
        assert_eq!(read(&[(r, "x"), (e, "2026-07-01T10:00:00Z")]).valid_until(), Some(at("2026-07-01T10:00:00Z")));
        assert_eq!(read(&[(r, "x")]).valid_until(), None, "no expiry");
        assert_eq!(read(&[(r, "x"), (e, "2026-06-01")]).valid_until(), None, "void");
    }
}
