//! Lookup by hostname, shared by listeners (the Host header), certificates (SNI) and
//! TLS routes.

use rustc_hash::FxHashMap as HashMap;

/// Hostname lookup: exact names, then wildcard suffixes longest first, then "any".
pub(crate) struct HostTable<T> {
    exact: HashMap<String, T>,
    /// (`.example.com`, value), longest suffix first.
    wildcard: Vec<(String, T)>,
    any: Option<T>,
}

impl<T> HostTable<T> {
    pub(crate) fn new(entries: Vec<(Option<&str>, T)>) -> Self {
        let mut t = HostTable {
            exact: HashMap::default(),
            wildcard: Vec::new(),
            any: None,
        };
        for (host, v) in entries {
            match host {
                None | Some("*") => {
                    if t.any.is_none() {
                        t.any = Some(v);
                    }
                }
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => t.wildcard.push((suffix.to_string(), v)),
                    None => {
                        t.exact.entry(h.to_string()).or_insert(v);
                    }
                },
            }
        }
        t.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        t
    }

    pub fn get(&self, host: &str) -> Option<&T> {
        self.exact
            .get(host)
            .or_else(|| {
                self.wildcard
                    .iter()
                    .find(|(suffix, _)| {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    })
                    .map(|(_, v)| v)
            })
            .or(self.any.as_ref())
    }
}
