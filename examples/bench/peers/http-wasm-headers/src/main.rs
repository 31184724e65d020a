//! The header work of Sluice's `headers` filter in the benchmark, for Traefik's
//! http-wasm: sets `x-bench-1` and removes `x-none-1` on the request, and sets
//! `x-served-1` on the response. http-wasm sets response headers only on a buffered
//! response (`buffer_response`), so the middleware asks for it, as any http-wasm
//! middleware that changes response headers must.

use http_wasm_guest::{
    Guest,
    host::{Request, Response, admin, feature},
    register,
};

struct Headers;

impl Guest for Headers {
    fn handle_request(&self, request: &Request, _response: &Response) -> (bool, i32) {
        request.header.set(b"x-bench-1", b"1");
        request.header.remove(b"x-none-1");
        (true, 0)
    }

    fn handle_response(&self, _: i32, _request: &Request, response: &Response, _: bool) {
        response.header.set(b"x-served-1", b"1");
    }
}

fn main() {
    admin::enable(feature::BufferResponse);
    register(Headers);
}
