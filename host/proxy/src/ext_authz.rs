//! The Envoy external authorization protocol over gRPC
//! (`envoy.service.auth.v3.Authorization/Check`), for the HTTPRoute `ExternalAuth` filter
//! with `protocol: GRPC`: the messages (only the fields Sluice sends and reads; tags as
//! in envoy's `external_auth.proto`, `attribute_context.proto` and `base.proto`), and
//! gRPC's length-prefixed framing.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

/// The method's path on the authorization service.
pub(crate) const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

#[derive(Clone, PartialEq, Message)]
pub(crate) struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "2")]
    pub destination: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<AttributeRequest>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Peer {
    /// `envoy.config.core.v3.Address`, whose oneof's `socket_address` is tag 1.
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Address {
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct SocketAddress {
    #[prost(string, tag = "2")]
    pub address: String,
    #[prost(uint32, tag = "3")]
    pub port_value: u32,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct AttributeRequest {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct HttpRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub method: String,
    /// Lowercase names; several values of one header joined with `,`.
    #[prost(map = "string, string", tag = "3")]
    pub headers: std::collections::HashMap<String, String>,
    /// The request target: path and query.
    #[prost(string, tag = "4")]
    pub path: String,
    #[prost(string, tag = "5")]
    pub host: String,
    #[prost(string, tag = "6")]
    pub scheme: String,
    /// The query, without `?`.
    #[prost(string, tag = "7")]
    pub query: String,
    /// The body's length when known (`content-length`), else -1.
    #[prost(int64, tag = "9")]
    pub size: i64,
    #[prost(string, tag = "10")]
    pub protocol: String,
    /// The body (`forwardBody`) when it is valid UTF-8, as Envoy sends it by default.
    #[prost(string, tag = "11")]
    pub body: String,
    /// The body (`forwardBody`) when it is not valid UTF-8 (a proto3 string must be).
    #[prost(bytes = "bytes", tag = "12")]
    pub raw_body: bytes::Bytes,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct CheckResponse {
    /// `google.rpc.Status`: code 0 allows the request.
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    #[prost(message, optional, tag = "2")]
    pub denied_response: Option<DeniedHttpResponse>,
    #[prost(message, optional, tag = "3")]
    pub ok_response: Option<OkHttpResponse>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct DeniedHttpResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<HttpStatus>,
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    #[prost(string, tag = "3")]
    pub body: String,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct HttpStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct OkHttpResponse {
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    #[prost(string, repeated, tag = "5")]
    pub headers_to_remove: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct HeaderValueOption {
    #[prost(message, optional, tag = "1")]
    pub header: Option<HeaderValue>,
    /// `google.protobuf.BoolValue`: true adds a value, false or unset replaces.
    #[prost(message, optional, tag = "2")]
    pub append: Option<BoolValue>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct HeaderValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
    /// Used instead of `value` when set (values that are not UTF-8).
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct BoolValue {
    #[prost(bool, tag = "1")]
    pub value: bool,
}

impl HeaderValue {
    pub fn bytes(&self) -> &[u8] {
        if self.raw_value.is_empty() {
            self.value.as_bytes()
        } else {
            &self.raw_value
        }
    }
}

/// A message as one uncompressed gRPC frame.
pub(crate) fn frame(m: &impl Message) -> Bytes {
    let len = m.encoded_len();
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    b.put_u32(len as u32);
    m.encode(&mut b)
        .expect("a BytesMut of the message's length holds it");
    b.freeze()
}

/// The message of a gRPC answer that holds exactly one uncompressed frame.
pub(crate) fn unframe(body: &[u8]) -> Result<CheckResponse, String> {
    let (head, rest) = body
        .split_at_checked(5)
        .ok_or("the answer holds no gRPC message")?;
    if head[0] != 0 {
        return Err("the answer is compressed; Sluice asks for none".into());
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if rest.len() != len {
        return Err(format!(
            "the answer's frame says {len} bytes, {} came",
            rest.len()
        ));
    }
    CheckResponse::decode(rest).map_err(|e| format!("not a CheckResponse: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_named() {
        let ok = CheckResponse {
            status: Some(RpcStatus {
                code: 0,
                message: String::new(),
            }),
            denied_response: None,
            ok_response: Some(OkHttpResponse {
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "x-user".into(),
                        value: "ann".into(),
                        raw_value: Vec::new(),
                    }),
                    append: None,
                }],
                headers_to_remove: vec!["x-drop".into()],
            }),
        };
        assert_eq!(unframe(&frame(&ok)), Ok(ok.clone()));
        let f = frame(&ok);
        assert!(unframe(&f[..f.len() - 1]).is_err());
        assert!(unframe(&[1, 0, 0, 0, 0]).is_err());
        assert!(unframe(&[]).is_err());
    }
}
