//! Split DNS: which upstream group answers a name, by longest suffix match.
//!
//! A lookup hashes the question name and each of its parents, longest first:
//! O(labels), no allocation.

use core::fmt;

use crate::names::{self, NameMap, RecordError, Wildcard, error, parse_name};
use crate::query::Question;

/// A routing table from domain suffixes to values (upstream groups); `.` maps
/// to the default.
pub struct Routes<T> {
    default: T,
    suffixes: NameMap<T>,
}

impl<T> Routes<T> {
    /// A table that sends every name to `default`.
    pub fn new(default: T) -> Self {
        Routes {
            default,
            suffixes: NameMap::default(),
        }
    }

    /// Routes `suffix` and every name under it to `value`. `"."` replaces the
    /// default; a suffix routed twice is an error (two groups claiming one
    /// domain is a configuration mistake).
    pub fn add(&mut self, suffix: &str, value: T) -> Result<(), RecordError> {
        let wire = parse_name(suffix, Wildcard::Forbidden)?;
        if wire == [0] {
            self.default = value;
            return Ok(());
        }
        if self.suffixes.contains_key(wire.as_slice()) {
            return Err(error(format!(
                "{} already has a route",
                names::display(&wire)
            )));
        }
        self.suffixes.insert(wire.into(), value);
        Ok(())
    }

    /// The value of the longest suffix of the question's name that has a
    /// route, else the default.
    #[inline]
    pub fn lookup(&self, question: &Question) -> &T {
        if self.suffixes.is_empty() {
            return &self.default;
        }
        names::suffixes(question.name_wire())
            .find_map(|(_, suffix)| self.suffixes.get(suffix))
            .unwrap_or(&self.default)
    }

    /// The default value (the route of `.`).
    pub fn default_route(&self) -> &T {
        &self.default
    }

    /// Number of routes besides the default.
    pub fn len(&self) -> usize {
        self.suffixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.suffixes.is_empty()
    }
}

impl<T: fmt::Debug> fmt::Debug for Routes<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        map.entry(&".", &self.default);
        for (suffix, value) in &self.suffixes {
            map.entry(&names::display(suffix), value);
        }
        map.finish()
    }
}
