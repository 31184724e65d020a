//! Route matching for one virtual host: a hash map of the literal paths, plus the regex
//! matches, plus a walk up the path-prefix chain.
//!
//! The IR lists a host's matches in precedence order. Matches are split into lists
//! (the exact matches of one path, the prefix matches of one prefix, all regex matches),
//! each kept in that order, so the winner is the lowest-ordered first hit among the few
//! lists that can apply to the path: the exact list of the path, the regex list, and the
//! prefix lists of the path's ancestors. No list is scanned past its first hit.

use std::collections::HashMap;

use http::{HeaderMap, Method};
use regex::Regex;
use rustc_hash::FxHashMap;
use sluice_ir::{MatchIr, PathMatchIr, ValueMatchIr};

use crate::BuildError;

pub(crate) enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

impl ValueMatcher {
    fn new(v: &ValueMatchIr) -> Result<Self, BuildError> {
        Ok(if v.regex {
            ValueMatcher::Regex(full_regex(&v.value)?)
        } else {
            ValueMatcher::Exact(v.value.clone())
        })
    }
    fn is_match(&self, s: &str) -> bool {
        match self {
            ValueMatcher::Exact(e) => e == s,
            ValueMatcher::Regex(r) => r.is_match(s),
        }
    }
}

/// A regex that must match the whole input, as the Gateway API's matches do.
fn full_regex(re: &str) -> Result<Regex, BuildError> {
    Regex::new(&format!("^(?:{re})$"))
        .map_err(|e| BuildError(format!("regular expression {re:?}: {e}")))
}

pub(crate) struct Candidate<R> {
    /// Position in the host's precedence order; lower wins.
    order: usize,
    method: Option<Method>,
    headers: Vec<(http::HeaderName, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
    pub target: R,
}

impl<R> Candidate<R> {
    fn matches(&self, method: &Method, headers: &HeaderMap, query: &mut Query<'_>) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        for (name, m) in &self.headers {
            let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) else {
                return false;
            };
            if !m.is_match(v) {
                return false;
            }
        }
        for (name, m) in &self.query {
            let Some(v) = query.get(name) else {
                return false;
            };
            if !m.is_match(v) {
                return false;
            }
        }
        true
    }
}

/// A request's query string, decoded only if some candidate asks.
pub(crate) struct Query<'a> {
    raw: Option<&'a str>,
    parsed: Option<Vec<(String, String)>>,
}

impl<'a> Query<'a> {
    pub fn new(raw: Option<&'a str>) -> Self {
        Query { raw, parsed: None }
    }
    /// The first value of `name`: the spec says only the first occurrence counts.
    fn get(&mut self, name: &str) -> Option<&str> {
        let raw = self.raw;
        let parsed = self.parsed.get_or_insert_with(|| {
            raw.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect()
        });
        parsed
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

struct Node<R> {
    exact: Vec<Candidate<R>>,
    prefix: Vec<Candidate<R>>,
    /// The longest other prefix that contains this node's path, segment-wise.
    parent: Option<usize>,
}

/// A host's matches by path. A matchit trie did this before: at 10,000 path prefixes
/// its nodes (each a few hundred bytes, in vectors that grow by doubling) took about
/// 14 MB of the gateway's 26 MB of live heap (heaptrack), where the map takes well under
/// one.
pub(crate) struct PathRouter<R> {
    /// Every path with exact or prefix matches, to its node.
    literal: FxHashMap<Box<str>, u32>,
    /// The lengths of the prefixes other than `/`, longest first, each once: where a
    /// path can be cut to find the longest prefix that contains it (a path of many
    /// slashes costs at most one lookup per length, not one per slash).
    prefix_lens: Box<[u32]>,
    /// The node of the `/` prefix, which contains every path.
    root: Option<u32>,
    nodes: Vec<Node<R>>,
    regex: Vec<(Regex, Candidate<R>)>,
}

impl<R: Clone> PathRouter<R> {
    /// `target` maps an IR rule index to what a match yields.
    pub fn build(matches: &[MatchIr], target: impl Fn(usize) -> R) -> Result<Self, BuildError> {
        let mut keys: HashMap<String, usize> = HashMap::new();
        let mut nodes: Vec<Node<R>> = Vec::new();
        let mut node_for = |path: &str, nodes: &mut Vec<Node<R>>| -> usize {
            *keys.entry(path.to_string()).or_insert_with(|| {
                nodes.push(Node {
                    exact: Vec::new(),
                    prefix: Vec::new(),
                    parent: None,
                });
                nodes.len() - 1
            })
        };
        let mut regex = Vec::new();
        let mut prefixes: Vec<(String, usize)> = Vec::new();
        for (order, m) in matches.iter().enumerate() {
            let cand = Candidate {
                order,
                method: match &m.method {
                    Some(s) => Some(
                        Method::from_bytes(s.as_bytes())
                            .map_err(|_| BuildError(format!("method {s:?} is not valid")))?,
                    ),
                    None => None,
                },
                headers: m
                    .headers
                    .iter()
                    .map(|h| {
                        let name =
                            http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                                BuildError(format!("header name {:?} is not valid", h.name))
                            })?;
                        Ok((name, ValueMatcher::new(h)?))
                    })
                    .collect::<Result<_, BuildError>>()?,
                query: m
                    .query_params
                    .iter()
                    .map(|q| Ok((q.name.clone(), ValueMatcher::new(q)?)))
                    .collect::<Result<_, BuildError>>()?,
                target: target(m.rule),
            };
            match &m.path {
                PathMatchIr::Exact(p) => {
                    let n = node_for(p, &mut nodes);
                    nodes[n].exact.push(cand);
                }
                PathMatchIr::Prefix(p) => {
                    let n = node_for(p, &mut nodes);
                    // Listed once, by its first candidate (a scan of the list here made
                    // 10,000 prefixes cost seconds).
                    if nodes[n].prefix.is_empty() {
                        prefixes.push((p.clone(), n));
                    }
                    nodes[n].prefix.push(cand);
                }
                PathMatchIr::Regex(r) => regex.push((full_regex(r)?, cand)),
            }
        }
        let index = |n: usize| {
            u32::try_from(n).map_err(|_| BuildError("more than 2^32 paths on one host".into()))
        };
        // Each node's parent: the longest prefix that contains it, other than itself. The
        // prefixes that contain a path (`segment_prefix`) are the path itself, the path
        // cut before each of its `/`, and `/`: looked up longest first, rather than
        // every prefix tried against every path.
        let by_path: HashMap<&str, usize> =
            prefixes.iter().map(|(p, n)| (p.as_str(), *n)).collect();
        for (path, &n) in &keys {
            let cuts = path
                .bytes()
                .enumerate()
                .rev()
                .filter(|&(i, b)| i > 0 && b == b'/');
            let parent = std::iter::once(path.as_str())
                .chain(cuts.map(|(i, _)| &path[..i]))
                .chain(["/", ""])
                .filter_map(|p| by_path.get(p).copied())
                .find(|&m| m != n);
            nodes[n].parent = parent;
        }
        let mut prefix_lens = prefixes
            .iter()
            .filter(|(p, _)| p != "/")
            .map(|(p, _)| index(p.len()))
            .collect::<Result<Vec<u32>, _>>()?;
        prefix_lens.sort_unstable_by(|a, b| b.cmp(a));
        prefix_lens.dedup();
        let root = by_path.get("/").map(|&n| index(n)).transpose()?;
        let mut literal = FxHashMap::default();
        literal.reserve(keys.len());
        for (path, n) in keys {
            literal.insert(path.into_boxed_str(), index(n)?);
        }
        // Most lists hold one candidate, but a vector's first push makes room for four:
        // at 10,000 prefixes, room for 30,000 candidates that never come.
        for n in &mut nodes {
            n.exact.shrink_to_fit();
            n.prefix.shrink_to_fit();
        }
        nodes.shrink_to_fit();
        Ok(PathRouter {
            literal,
            prefix_lens: prefix_lens.into_boxed_slice(),
            root,
            nodes,
            regex,
        })
    }

    /// The node of the longest prefix that contains `path` and is not `path` itself
    /// (`/foo` contains `/foo/` and `/foo/bar`, not `/foobar`).
    fn longest_prefix(&self, path: &str) -> Option<usize> {
        let bytes = path.as_bytes();
        self.prefix_lens
            .iter()
            .map(|&len| len as usize)
            .filter(|&len| bytes.get(len) == Some(&b'/'))
            // `len` is followed by `/`, so it is a character boundary.
            .filter_map(|len| self.literal.get(&path[..len]))
            .map(|&n| n as usize)
            .find(|&n| !self.nodes[n].prefix.is_empty())
            .or(self.root.map(|n| n as usize))
    }

    pub fn find(
        &self,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Option<&R> {
        let mut query = Query::new(query);
        let mut best: Option<&Candidate<R>> = None;
        let mut node = match self.literal.get(path) {
            Some(&n) => {
                let n = n as usize;
                first_hit(
                    self.nodes[n].exact.iter(),
                    &mut best,
                    method,
                    headers,
                    &mut query,
                );
                Some(n)
            }
            None => self.longest_prefix(path),
        };
        let regex = self
            .regex
            .iter()
            .filter(|(r, _)| r.is_match(path))
            .map(|(_, c)| c);
        first_hit(regex, &mut best, method, headers, &mut query);
        while let Some(n) = node {
            let nd = &self.nodes[n];
            // A literal hit on `/foo/bar` whose node has only exact matches still falls
            // back to the prefixes above it; so does a node whose prefixes did not match.
            first_hit(nd.prefix.iter(), &mut best, method, headers, &mut query);
            node = nd.parent;
        }
        best.map(|c| &c.target)
    }
}

/// Makes the first candidate of `list` that matches the best so far, unless `best`
/// already ranks above everything left in the (ordered) list.
fn first_hit<'a, R>(
    list: impl Iterator<Item = &'a Candidate<R>>,
    best: &mut Option<&'a Candidate<R>>,
    method: &Method,
    headers: &HeaderMap,
    query: &mut Query<'_>,
) {
    for c in list {
        if best.is_some_and(|b| b.order < c.order) {
            return;
        }
        if c.matches(method, headers, query) {
            *best = Some(c);
            return;
        }
    }
}

/// Segment-wise prefix: `/foo` contains `/foo`, `/foo/` and `/foo/bar`, not `/foobar`.
#[cfg(test)]
fn segment_prefix(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_ir::MatchIr;

    fn m(rule: usize, path: PathMatchIr) -> MatchIr {
        MatchIr {
            rule,
            path,
            method: None,
            headers: vec![],
            query_params: vec![],
        }
    }
    fn find(r: &PathRouter<usize>, path: &str) -> Option<usize> {
        r.find(path, &Method::GET, &HeaderMap::new(), None).copied()
    }

    #[test]
    fn prefixes_are_segment_wise_and_longest_wins() {
        let r = PathRouter::build(
            &[
                m(0, PathMatchIr::Exact("/foo".into())),
                m(1, PathMatchIr::Prefix("/foo/bar".into())),
                m(2, PathMatchIr::Prefix("/foo".into())),
                m(3, PathMatchIr::Prefix("/".into())),
            ],
            |i| i,
        )
        .unwrap();
        assert_eq!(find(&r, "/foo"), Some(0));
        assert_eq!(find(&r, "/foo/"), Some(2));
        assert_eq!(find(&r, "/foo/x"), Some(2));
        assert_eq!(find(&r, "/foo/bar"), Some(1));
        assert_eq!(find(&r, "/foo/bar/"), Some(1));
        assert_eq!(find(&r, "/foo/bar/baz"), Some(1));
        assert_eq!(find(&r, "/foobar"), Some(3));
        assert_eq!(find(&r, "/"), Some(3));
        assert_eq!(find(&r, "/{x}"), Some(3));
    }

    /// Every path finds the longest prefix that contains it segment-wise (or its exact
    /// match), as a scan of every prefix with `segment_prefix` says, over nested,
    /// sibling and odd prefixes and many of them.
    #[test]
    fn the_longest_containing_prefix_wins_among_many() {
        let mut prefixes: Vec<String> = [
            "/",
            "/a",
            "/a/b",
            "/a/bc",
            "/a/b/c",
            "//x",
            "/x/",
            "/a/b/c/d/e",
        ]
        .iter()
        .map(|p| p.to_string())
        .collect();
        prefixes.extend((0..300).map(|i| format!("/p{i}")));
        prefixes.extend((0..50).map(|i| format!("/p{i}/q")));
        // In precedence order, as the translator hands them over: longer prefixes first.
        prefixes.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        let exact = ["/a/b/c/d", "/p7/q/r"];
        let mut matches: Vec<MatchIr> = prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| m(i, PathMatchIr::Prefix(p.clone())))
            .collect();
        let exact_rule = |i: usize| 1000 + i;
        for (i, e) in exact.iter().enumerate() {
            matches.insert(i, m(exact_rule(i), PathMatchIr::Exact(e.to_string())));
        }
        let r = PathRouter::build(&matches, |i| i).unwrap();
        let mut probes: Vec<String> = Vec::new();
        for p in prefixes.iter().map(String::as_str).chain(exact) {
            for tail in ["", "/", "/z", "z", "/z/y", "//"] {
                probes.push(format!("{p}{tail}"));
            }
        }
        for path in &probes {
            let want = exact
                .iter()
                .position(|e| e == path)
                .map(exact_rule)
                .or_else(|| {
                    prefixes
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| segment_prefix(p, path))
                        .max_by_key(|(_, p)| p.len())
                        .map(|(i, _)| i)
                });
            assert_eq!(find(&r, path), want, "{path}");
        }
    }

    /// A hostile path of many slashes costs one lookup per prefix length, and still
    /// finds its prefix.
    #[test]
    fn a_path_of_many_slashes_finds_its_prefix() {
        let r = PathRouter::build(
            &[
                m(0, PathMatchIr::Prefix("/a".into())),
                m(1, PathMatchIr::Prefix("//".into())),
                m(2, PathMatchIr::Prefix("/".into())),
            ],
            |i| i,
        )
        .unwrap();
        let slashes = "/".repeat(65_536);
        assert_eq!(find(&r, &slashes), Some(1));
        assert_eq!(find(&r, &format!("/a{slashes}")), Some(0));
        assert_eq!(find(&r, &format!("/b{slashes}")), Some(2));
        assert_eq!(r.prefix_lens.len(), 1, "one length for /a and //");
    }

    #[test]
    fn falls_back_when_a_longer_prefix_does_not_match_headers() {
        let mut hm = m(0, PathMatchIr::Prefix("/api".into()));
        hm.headers.push(ValueMatchIr {
            name: "x-v".into(),
            regex: false,
            value: "2".into(),
        });
        let r = PathRouter::build(&[hm, m(1, PathMatchIr::Prefix("/".into()))], |i| i).unwrap();
        assert_eq!(find(&r, "/api/x"), Some(1));
        let mut h = HeaderMap::new();
        h.insert("x-v", "2".parse().unwrap());
        assert_eq!(r.find("/api/x", &Method::GET, &h, None).copied(), Some(0));
    }

    #[test]
    fn regex_and_precedence_order() {
        let r = PathRouter::build(
            &[
                m(0, PathMatchIr::Exact("/v1/x".into())),
                m(1, PathMatchIr::Regex("/v[0-9]+/.*".into())),
                m(2, PathMatchIr::Prefix("/v1".into())),
            ],
            |i| i,
        )
        .unwrap();
        assert_eq!(find(&r, "/v1/x"), Some(0));
        assert_eq!(find(&r, "/v1/y"), Some(1));
        assert_eq!(find(&r, "/v1"), Some(2));
        assert_eq!(find(&r, "/w"), None);
    }

    #[test]
    fn query_params_are_decoded_and_first_wins() {
        let mut q = Query::new(Some("a=1&b=hello%20world&a=2&c"));
        assert_eq!(q.get("a"), Some("1"));
        assert_eq!(q.get("b"), Some("hello world"));
        assert_eq!(q.get("c"), Some(""));
        assert_eq!(q.get("d"), None);
    }
}
