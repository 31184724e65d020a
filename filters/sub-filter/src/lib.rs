//! Replaces strings in bodies as they stream, as nginx's `sub_filter` does: for example
//! internal URLs in the pages a backend returns.
//!
//! ```yaml
//! config:
//!   replace:                     # at most 16 pairs; `from` is 1 to 256 bytes
//!   - {from: "http://app.internal", to: "https://app.example.com"}
//!   direction: response          # default; request, or both
//!   contentTypes: [text/]        # default; bodies whose content-type starts with one
//! ```
//!
//! The body passes chunk by chunk (filter API 0.2, streamed): the filter holds back at
//! most the longest `from` less one byte at the end of a chunk, in case a match goes on
//! in the next, so a body of any size passes in constant memory. Matches do not
//! overlap, and the first pair listed wins where two match at the same place. A body
//! whose length can change loses its `content-length` (it goes chunked). A compressed
//! body (`content-encoding` set) passes unchanged, and for responses the filter asks
//! for them uncompressed (it removes the request's `accept-encoding`). Counter:
//! `sluice_filter_sub_filter_replaced_total`.

use serde::Deserialize;
use sluice_sdk::{
    Action, BodyMode, BodyStream, Chunk, ConfigErrors, Filter, Needs, PassThrough, Request,
    Response, Trailers, config_error, metrics,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    replace: Vec<Pair>,
    #[serde(default)]
    direction: Which,
    #[serde(default = "default_types")]
    content_types: Vec<String>,
}

fn default_types() -> Vec<String> {
    vec!["text/".into()]
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Pair {
    from: String,
    to: String,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
enum Which {
    Request,
    #[default]
    Response,
    Both,
}

struct SubFilter {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    direction: Which,
    content_types: Vec<String>,
}

impl Filter for SubFilter {
    type Config = Config;

    fn new(c: Config) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        if c.replace.is_empty() || c.replace.len() > 16 {
            errors.push(config_error(".replace", "list 1 to 16 {from, to} pairs"));
        }
        for (i, p) in c.replace.iter().enumerate() {
            if p.from.is_empty() || p.from.len() > 256 {
                errors.push(config_error(
                    format!(".replace[{i}].from"),
                    "must be 1 to 256 bytes long",
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(SubFilter {
            pairs: c
                .replace
                .into_iter()
                .map(|p| (p.from.into_bytes(), p.to.into_bytes()))
                .collect(),
            direction: c.direction,
            content_types: c.content_types,
        })
    }

    fn needs(&self) -> Needs {
        let mode = |on: bool| {
            if on {
                BodyMode::Streamed
            } else {
                BodyMode::None
            }
        };
        Needs {
            request_body: mode(self.direction != Which::Response),
            response_body: mode(self.direction != Which::Request),
        }
    }

    fn on_request(&self, request: &Request) -> Action {
        if self.direction != Which::Request {
            // A compressed answer could not be read: ask for it plain.
            request.remove_header("accept-encoding");
        }
        Action::Continue
    }

    fn request_stream(&self, request: &Request) -> Box<dyn BodyStream> {
        let readable = self.readable(
            request.get_header("content-type"),
            request.get_header("content-encoding"),
        );
        if !readable {
            return Box::new(PassThrough);
        }
        request.remove_header("content-length");
        Box::new(self.stream())
    }

    fn response_stream(&self, response: &Response) -> Box<dyn BodyStream> {
        let readable = self.readable(
            response.get_header("content-type"),
            response.get_header("content-encoding"),
        );
        if !readable {
            return Box::new(PassThrough);
        }
        response.remove_header("content-length");
        Box::new(self.stream())
    }
}

impl SubFilter {
    fn readable(&self, content_type: Option<String>, encoding: Option<String>) -> bool {
        let plain = encoding.is_none_or(|e| e.eq_ignore_ascii_case("identity"));
        let ct = content_type.unwrap_or_default().to_ascii_lowercase();
        plain
            && self
                .content_types
                .iter()
                .any(|t| ct.starts_with(t.as_str()))
    }

    fn stream(&self) -> Replacer {
        Replacer {
            pairs: self.pairs.clone(),
            longest: self.pairs.iter().map(|(f, _)| f.len()).max().unwrap_or(1),
            carry: Vec::new(),
            replaced: 0,
        }
    }
}

/// One body's replacing: the bytes held back from the last chunk, in case a match
/// starts there.
struct Replacer {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    longest: usize,
    carry: Vec<u8>,
    replaced: u64,
}

impl Replacer {
    /// Replaces in `buf`; unless `last`, keeps back from where a match might still be
    /// completed by the next chunk.
    fn run(&mut self, buf: &[u8], last: bool) -> (Vec<u8>, Vec<u8>) {
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'scan: while i < buf.len() {
            let rest = &buf[i..];
            for (from, to) in &self.pairs {
                if rest.starts_with(from) {
                    out.extend_from_slice(to);
                    i += from.len();
                    self.replaced += 1;
                    continue 'scan;
                }
                // A match that the next chunk may complete: hold from here.
                if !last && rest.len() < from.len() && from.starts_with(rest) {
                    return (out, rest.to_vec());
                }
            }
            out.push(buf[i]);
            i += 1;
        }
        (out, Vec::new())
    }
}

impl BodyStream for Replacer {
    fn chunk(&mut self, chunk: Vec<u8>) -> Chunk {
        let (out, carry) = if self.carry.is_empty() {
            self.run(&chunk, false)
        } else {
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(&chunk);
            self.run(&buf, false)
        };
        debug_assert!(carry.len() < self.longest);
        self.carry = carry;
        if out == chunk {
            Chunk::Pass
        } else {
            Chunk::Replace(out)
        }
    }

    fn end(&mut self, _trailers: &Trailers) -> Vec<u8> {
        let carry = std::mem::take(&mut self.carry);
        let (out, _) = self.run(&carry, true);
        metrics::counter_add("sub_filter_replaced", self.replaced);
        out
    }
}

sluice_sdk::export!(SubFilter);
