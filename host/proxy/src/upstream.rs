//! Upstream connection pools: keep-alive HTTP/1.1, and HTTP/2 cleartext with prior
//! knowledge for backends whose appProtocol is `kubernetes.io/h2c`.

use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sluice_ir::UpstreamProtocol;

use crate::Body;

pub(crate) struct Upstream {
    http1: Client<HttpConnector, Body>,
    h2c: Client<HttpConnector, Body>,
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(5)));
    c.enforce_http(true);
    c
}

impl Upstream {
    pub fn new() -> Self {
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(1024)
            .build(connector());
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(30))
            .build(connector());
        Upstream { http1, h2c }
    }

    pub fn client(&self, p: UpstreamProtocol) -> &Client<HttpConnector, Body> {
        match p {
            UpstreamProtocol::Http1 => &self.http1,
            UpstreamProtocol::H2c => &self.h2c,
        }
    }
}
