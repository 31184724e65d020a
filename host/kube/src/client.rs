//! The client to the API server: kube's own layers (base URI, authentication, extra
//! headers, retries of 429 and 503) over a connector that offers HTTP/2 as well as
//! HTTP/1.1.
//!
//! kube's default client speaks HTTP/1.1 only, so each watch holds a TLS connection of
//! its own: twenty of them, each with its own TLS and read buffers, for the kinds the
//! gateway watches. Over HTTP/2 (which every API server speaks) they share one
//! connection, as client-go's watches do. An API server or proxy that does not offer
//! `h2` in ALPN gets HTTP/1.1 as before.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use kube::client::retry::RetryPolicy;
use tower::ServiceBuilder;
use tower::retry::RetryLayer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How often an idle HTTP/2 connection is pinged, and how long a ping may go
/// unanswered before the connection is dropped (its watches then start again).
const KEEPALIVE: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The client `kube::Client::try_default` would build (in-cluster, `$KUBECONFIG` or
/// `~/.kube/config`), multiplexing its requests over HTTP/2 where the server offers it.
pub async fn connect() -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await?;
    client(config)
}

/// A client for `config`; see [`connect`].
pub fn client(config: kube::Config) -> anyhow::Result<kube::Client> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    // An HTTP/1.1 connection has no pings: the kernel's keepalive finds a dead peer.
    http.set_keepalive(Some(KEEPALIVE));
    let tls = config.rustls_client_config()?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match &config.tls_server_name {
        Some(name) => builder.with_server_name_resolver(
            hyper_rustls::FixedServerNameResolver::new(name.clone().try_into().map_err(|e| {
                anyhow::anyhow!(
                    "the kubeconfig's tls-server-name {name:?} is not a valid server name: {e}"
                )
            })?),
        ),
        None => builder,
    };
    let https = builder.enable_http1().enable_http2().wrap_connector(http);
    let hyper = hyper_util::client::legacy::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(KEEPALIVE)
        .http2_keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(|e: hyper_util::client::legacy::Error| -> BoxError { Box::new(e) })
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace))
}
