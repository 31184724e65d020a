//! Digests request (or response) bodies while they stream, and sends the digest after
//! the body as an RFC 9530 `content-digest` trailer:
//!
//! ```yaml
//! config:
//!   algorithm: sha-256      # default; or sha-512
//!   trailer: content-digest # default; the trailer's name
//!   direction: request      # default; response, or both
//! ```
//!
//! The trailer reads `content-digest: sha-256=:<base64 of the digest>:`. The filter asks
//! for the body streamed (filter API 0.2): the gateway hands it each chunk as it comes
//! and holds one chunk at a time, so a body of any size passes in constant memory, and
//! the chunks are forwarded unchanged (nothing is copied back).
//!
//! The digest is computed by the gateway in native code (`sluice_sdk::digest`), with
//! the CPU's SHA instructions where it has them.
//!
//! Trailers need a chunked body over HTTP/1.1, so when the stream starts the filter
//! names its trailer in the `trailer` header and removes `content-length` (the backend
//! then gets the body chunked; over HTTP/2 nothing changes but the trailer). A backend
//! reads the digest from the trailers once the body ends. Counter:
//! `sluice_filter_body_hash_bytes_total` (bytes digested).

use base64::Engine as _;
use serde::Deserialize;
use sluice_sdk::digest::Hasher as Native;
use sluice_sdk::{
    BodyMode, BodyStream, Chunk, ConfigErrors, Filter, Needs, Request, Response, Trailers,
    config_error, log, metrics,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    #[serde(default)]
    algorithm: Algorithm,
    #[serde(default = "default_trailer")]
    trailer: String,
    #[serde(default)]
    direction: Which,
}

fn default_trailer() -> String {
    "content-digest".into()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            algorithm: Algorithm::default(),
            trailer: default_trailer(),
            direction: Which::default(),
        }
    }
}

#[derive(Deserialize, Default, Clone, Copy)]
enum Algorithm {
    #[default]
    #[serde(rename = "sha-256")]
    Sha256,
    #[serde(rename = "sha-512")]
    Sha512,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
enum Which {
    #[default]
    Request,
    Response,
    Both,
}

struct BodyHash {
    algorithm: Algorithm,
    trailer: String,
    direction: Which,
}

impl Filter for BodyHash {
    /// No config at all: every default.
    type Config = Option<Config>;

    fn new(c: Option<Config>) -> Result<Self, ConfigErrors> {
        let c = c.unwrap_or_default();
        let valid = !c.trailer.is_empty()
            && c.trailer
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(vec![config_error(
                ".trailer",
                format!(
                    "{:?} is not a header name: use letters, digits and '-' (for example content-digest)",
                    c.trailer
                ),
            )]);
        }
        Ok(BodyHash {
            algorithm: c.algorithm,
            trailer: c.trailer.to_ascii_lowercase(),
            direction: c.direction,
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

    fn request_stream(&self, request: &Request) -> Box<dyn BodyStream> {
        request.remove_header("content-length");
        if request.append_header("trailer", &self.trailer).is_err() {
            log::warn("cannot declare the digest trailer on the request");
        }
        Box::new(self.hasher())
    }

    fn response_stream(&self, response: &Response) -> Box<dyn BodyStream> {
        response.remove_header("content-length");
        if response.append_header("trailer", &self.trailer).is_err() {
            log::warn("cannot declare the digest trailer on the response");
        }
        Box::new(self.hasher())
    }
}

impl BodyHash {
    fn hasher(&self) -> Hasher {
        Hasher {
            state: Native::new(match self.algorithm {
                Algorithm::Sha256 => sluice_sdk::digest::Algorithm::Sha256,
                Algorithm::Sha512 => sluice_sdk::digest::Algorithm::Sha512,
            }),
            algorithm: self.algorithm,
            trailer: self.trailer.clone(),
            bytes: 0,
        }
    }
}

/// One body's digest so far, computed by the gateway (`sluice_sdk::digest`: native
/// SHA, several times faster than SHA compiled to Wasm).
struct Hasher {
    state: Native,
    algorithm: Algorithm,
    trailer: String,
    bytes: u64,
}

impl BodyStream for Hasher {
    fn chunk(&mut self, chunk: Vec<u8>) -> Chunk {
        self.state.update(&chunk);
        self.bytes += chunk.len() as u64;
        Chunk::Pass
    }

    fn end(&mut self, trailers: &Trailers) -> Vec<u8> {
        let name = match self.algorithm {
            Algorithm::Sha256 => "sha-256",
            Algorithm::Sha512 => "sha-512",
        };
        let digest = self.state.finish();
        let value = format!(
            "{name}=:{}:",
            base64::engine::general_purpose::STANDARD.encode(digest)
        );
        if trailers.set(&self.trailer, &value).is_err() {
            log::warn("cannot set the digest trailer");
        }
        metrics::counter_add("body_hash_bytes", self.bytes);
        Vec::new()
    }
}

sluice_sdk::export!(BodyHash);
