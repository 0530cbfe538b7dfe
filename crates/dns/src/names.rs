//! Domain names as people write them in configuration and list files, turned
//! into the lowercase wire form the lookup tables are keyed by.
//!
//! Accepted: letters, digits, `-` and `_` (for `_dmarc`-style names), labels of
//! 1..=63 bytes, at most 255 bytes in wire form, an optional trailing dot.
//! Internationalised names must be written in their ASCII (punycode, `xn--`)
//! form: non-ASCII text is rejected, not converted. Zone-file escapes (`\.`,
//! `\DDD`) are not supported in names.

use core::fmt;

use std::collections::{HashMap, HashSet};

use crate::wire::MAX_NAME_LEN;

/// Tables keyed by lowercase wire names, looked up with a borrowed `&[u8]`.
/// foldhash: several times faster than SipHash on short keys; the keys come
/// from configuration, and lookups never insert, so query names cannot grow
/// collision chains.
pub(crate) type NameMap<V> = HashMap<Box<[u8]>, V, foldhash::fast::RandomState>;
pub(crate) type NameSet = HashSet<Box<[u8]>, foldhash::fast::RandomState>;

/// A configuration or list line that cannot be used. The message says what is
/// wrong; the caller, which knows where the line came from, adds `path:line`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError(pub String);

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RecordError {}

pub(crate) fn error(message: impl Into<String>) -> RecordError {
    RecordError(message.into())
}

/// Whether a leading `*` label is accepted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wildcard {
    Allowed,
    Forbidden,
}

/// The wire form of the wildcard label `*`.
pub(crate) const WILDCARD_LABEL: &[u8] = b"\x01*";

/// Longest label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Parses `text` into a lowercase, uncompressed wire name (root label included).
/// `"."` is the root. With [`Wildcard::Allowed`], a first label `*` is kept as
/// [`WILDCARD_LABEL`]; the wildcard alone (`"*"`) is rejected.
pub(crate) fn parse_name(text: &str, wildcard: Wildcard) -> Result<Vec<u8>, RecordError> {
    if text.is_empty() {
        return Err(error("empty name"));
    }
    if !text.is_ascii() {
        return Err(error(format!(
            "name {text:?} is not ASCII: write internationalised names in punycode (xn--...)"
        )));
    }
    if text == "." {
        return Ok(vec![0]);
    }
    let body = text.strip_suffix('.').unwrap_or(text);
    let mut wire = Vec::with_capacity(body.len() + 2);
    for (index, label) in body.split('.').enumerate() {
        if label.is_empty() {
            return Err(error(format!("name {text:?} has an empty label")));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(error(format!(
                "name {text:?} has a label longer than {MAX_LABEL_LEN} bytes"
            )));
        }
        if label == "*" {
            if wildcard == Wildcard::Forbidden {
                return Err(error(format!("wildcard name {text:?} is not allowed here")));
            }
            if index != 0 {
                return Err(error(format!(
                    "name {text:?}: '*' is only allowed as the first label"
                )));
            }
        } else if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(error(format!(
                "name {text:?} contains {bad:?}: only letters, digits, '-' and '_' are allowed"
            )));
        }
        wire.push(label.len() as u8);
        wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    wire.push(0);
    if wire.len() > MAX_NAME_LEN {
        return Err(error(format!(
            "name {text:?} is longer than {MAX_NAME_LEN} bytes in wire form"
        )));
    }
    if wire == [1, b'*', 0] {
        return Err(error("a wildcard needs a parent name (\"*.example\")"));
    }
    Ok(wire)
}

/// The name and each of its parents, longest first, as `(offset, suffix)`
/// slices of `wire`; the root is left out. Stops early on a malformed name.
/// Does not allocate.
#[inline]
pub(crate) fn suffixes(wire: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut pos = 0;
    core::iter::from_fn(move || {
        let len = usize::from(*wire.get(pos)?);
        if len == 0 || len > MAX_LABEL_LEN || pos + 1 + len >= wire.len() {
            return None;
        }
        let item = (pos, &wire[pos..]);
        pos += 1 + len;
        Some(item)
    })
}

/// The parent of a wire name (the root for a single label, `None` for the root).
pub(crate) fn parent(wire: &[u8]) -> Option<&[u8]> {
    let len = usize::from(*wire.first()?);
    if len == 0 {
        return None;
    }
    wire.get(1 + len..)
}

/// Number of labels, the root not counted.
pub(crate) fn label_count(wire: &[u8]) -> usize {
    suffixes(wire).count()
}

/// Whether `name` is `ancestor` or below it.
pub(crate) fn is_at_or_below(name: &[u8], ancestor: &[u8]) -> bool {
    ancestor == [0] || suffixes(name).any(|(_, suffix)| suffix == ancestor)
}

/// `www.example.` for logs and error messages.
pub(crate) fn display(wire: &[u8]) -> String {
    let mut text = String::new();
    for (_, suffix) in suffixes(wire) {
        let len = usize::from(suffix[0]);
        text.push_str(&String::from_utf8_lossy(&suffix[1..1 + len]));
        text.push('.');
    }
    if text.is_empty() {
        text.push('.');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<u8> {
        parse_name(text, Wildcard::Allowed).unwrap()
    }

    fn err(text: &str) -> String {
        parse_name(text, Wildcard::Forbidden).unwrap_err().0
    }

    #[test]
    fn names_are_lowercased_with_optional_trailing_dot() {
        assert_eq!(ok("WwW.Example.COM"), b"\x03www\x07example\x03com\x00");
        assert_eq!(ok("www.example.com."), ok("www.example.com"));
        assert_eq!(ok("."), b"\x00");
        assert_eq!(
            ok("_dmarc.xn--bcher-kva.example"),
            b"\x06_dmarc\x0dxn--bcher-kva\x07example\x00"
        );
        assert_eq!(ok("*.lab.internal"), b"\x01*\x03lab\x08internal\x00");
    }

    #[test]
    fn bad_names_are_explained() {
        assert!(err("").contains("empty name"));
        assert!(err("a..b").contains("empty label"));
        assert!(err(".a").contains("empty label"));
        assert!(err("a b").contains("' '"));
        assert!(err("bücher.example").contains("punycode"));
        assert!(err(&"a".repeat(64)).contains("longer than 63"));
        assert!(err("*.lab").contains("not allowed here"));
        assert!(
            parse_name("a.*.lab", Wildcard::Allowed)
                .unwrap_err()
                .0
                .contains("first label")
        );
        assert!(
            parse_name("*", Wildcard::Allowed)
                .unwrap_err()
                .0
                .contains("parent")
        );
        let long = vec!["a".repeat(63); 4].join(".");
        assert!(err(&long).contains("longer than 255"));
        let longest = format!("{}.{}", vec!["a".repeat(63); 3].join("."), "b".repeat(61));
        assert_eq!(ok(&longest).len(), 255);
    }

    #[test]
    fn suffix_walk_and_helpers() {
        let name = ok("a.bb.c");
        let walked: Vec<_> = suffixes(&name).collect();
        assert_eq!(
            walked,
            vec![
                (0, &b"\x01a\x02bb\x01c\x00"[..]),
                (2, &b"\x02bb\x01c\x00"[..]),
                (5, &b"\x01c\x00"[..]),
            ]
        );
        assert_eq!(suffixes(b"\x00").count(), 0);
        assert_eq!(suffixes(b"\x05ab").count(), 0);
        assert_eq!(parent(&name), Some(&b"\x02bb\x01c\x00"[..]));
        assert_eq!(parent(b"\x00"), None);
        assert_eq!(label_count(&name), 3);
        assert!(is_at_or_below(&name, &ok("c")));
        assert!(is_at_or_below(&name, &name));
        assert!(!is_at_or_below(&name, &ok("b.c")));
        assert_eq!(display(&name), "a.bb.c.");
        assert_eq!(display(b"\x00"), ".");
    }
}
