//! `sluice`: the gateway binary. Thin by design: it parses the command line and wires
//! the file provider, the translator, the data plane and the admin API together.

mod address_pool;
mod admin;
mod convert;
mod filter_cmd;
mod filter_test;
mod memory;
mod provider;
mod replay;
mod scaffold;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

// A proxy allocates and frees small buffers on every request; mimalloc's thread-local
// free lists make that several times cheaper than glibc's malloc (see examples/bench).
// Built with `no_thp` (Cargo.toml): on a kernel with transparent huge pages in
// `madvise` mode mimalloc would otherwise ask for them on its first arena, and the few
// MB a gateway touches at start would be backed by 2 MiB pages, more than tripling its
// idle anonymous memory (examples/bench/memory.sh).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A Gateway API proxy extensible with WebAssembly filters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; the size of the `run` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve traffic by the Gateway API objects in a YAML file or folder, or in the
    /// Kubernetes API (--kubernetes), reloading on change.
    Run {
        /// A YAML file, or a folder read recursively for *.yaml and *.yml.
        #[arg(required_unless_present = "kubernetes", conflicts_with = "kubernetes")]
        path: Option<PathBuf>,
        /// Read the objects from the Kubernetes API (in-cluster credentials, or
        /// $KUBECONFIG / ~/.kube/config) and write their statuses back.
        #[arg(long)]
        kubernetes: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Where Gateways without spec.addresses listen, instead of 0.0.0.0 (in a Pod,
        /// e.g. its own IP).
        #[arg(long, value_name = "IP")]
        bind_address: Option<std::net::IpAddr>,
        /// Give each Gateway without spec.addresses an address of its own from this
        /// range (e.g. 198.18.2.0/24), bind it and report it in status.addresses. The
        /// host must own the range (bare metal, a routed block, a test network).
        #[arg(long, value_name = "CIDR")]
        gateway_address_pool: Option<String>,
        /// Where Ingresses of Sluice's IngressClass are served over plain HTTP.
        #[arg(long, default_value = "0.0.0.0:80", value_name = "ADDR:PORT")]
        ingress_http: SocketAddr,
        /// Where Ingresses with `tls` are served over HTTPS (SNI picks the certificate).
        #[arg(long, default_value = "0.0.0.0:443", value_name = "ADDR:PORT")]
        ingress_https: SocketAddr,
        /// The source-range filter (filters/source-range) that serves Ingresses'
        /// allowlist-source-range, whitelist-source-range and denylist-source-range:
        /// oci://REGISTRY/REPOSITORY:TAG, or a .wasm path (under the config folder or
        /// --filter-dir). Until it loads, those Ingresses' rules answer 500.
        #[arg(long, default_value = sluice_translate::ingress::SOURCE_RANGE_FILTER_PATH, value_name = "SOURCE", value_parser = sluice_translate::ingress::source_range_filter)]
        ingress_source_range_filter: sluice_resources::WasmSource,
        /// The folder WasmFilter `source.path` is read under, instead of the config
        /// folder. In Kubernetes mode path sources are refused unless this is set.
        #[arg(long, value_name = "DIR")]
        filter_dir: Option<PathBuf>,
        /// Admin API address (/healthz, /readyz, /metrics, /config_dump, /status).
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Worker threads; defaults to the number of cores. 1 runs everything on one thread.
        #[arg(long)]
        workers: Option<usize>,
        /// With two workers or more: worker N keeps to the Nth CPU the process may use
        /// (as nginx's `worker_cpu_affinity auto`). For dedicated CPUs: a Pod with the
        /// static CPU manager policy, or a host of its own.
        #[arg(long)]
        worker_cpu_affinity: bool,
        /// On SIGTERM or Ctrl-C, how long to keep serving (new connections too) with
        /// /readyz answering 503, so a load balancer can take this replica out before
        /// the listeners close.
        #[arg(long, default_value = "0", value_name = "SECONDS")]
        shutdown_delay: u64,
        /// On SIGTERM or Ctrl-C, how long open connections get to finish.
        #[arg(long, default_value = "30", value_name = "SECONDS")]
        drain_timeout: u64,
        /// After a change to the config files (or, in Kubernetes mode, to a watched
        /// object), how long changes must pause before the reload, as a duration such as
        /// 50ms or 1s (at most 10s; 0 reloads at once). A steady stream of changes
        /// still reloads every ten times that (at least every second).
        #[arg(long, default_value = "50ms", value_name = "DURATION", value_parser = parse_reload_settle)]
        reload_settle: Duration,
        /// Where compiled Wasm filters are cached, by digest, so a restart does not
        /// recompile them. Default: $XDG_CACHE_HOME/sluice/wasm or ~/.cache/sluice/wasm.
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// A registry (host[:port]) to pull filters from over plain HTTP; repeatable.
        /// Registries on loopback always use plain HTTP.
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure_registries: Vec<String>,
        #[command(flatten)]
        connections: ConnectionFlags,
        /// UDPRoute sessions (one per client address) end after this long without a
        /// datagram either way.
        #[arg(long, default_value = "60", value_name = "SECONDS")]
        udp_idle_timeout: u64,
        /// Log lines per second each WasmFilter may write (its own and the gateway's
        /// about its failures); the rest are counted in
        /// sluice_wasm_log_lines_dropped_total.
        #[arg(long, default_value = "100", value_name = "N")]
        filter_log_lines: u64,
        /// Live Wasm filter instances across all WasmFilters (at least 64). Each hook
        /// call in flight holds one, including a call waiting on an outbound request;
        /// past it, a call that needs a new instance fails and the filter's failure
        /// policy applies.
        #[arg(long, default_value_t = sluice_wasm::DEFAULT_INSTANCES, value_name = "N")]
        wasm_instances: u32,
        /// Linear memory the idle instances of one WasmFilter may hold between calls,
        /// as a quantity (256Mi, 1Gi). A pool keeps as many idle instances as were in use
        /// at once lately (at least 64), but no more than fit in this; `minInstances`
        /// are kept regardless. Python and JavaScript instances have 9-13 MiB each.
        #[arg(long, default_value = "256Mi", value_name = "QUANTITY", value_parser = parse_idle_memory)]
        wasm_idle_memory: usize,
        /// Access log on stdout, one line per HTTP request: `on`, `off`, or the share of
        /// requests to log (`0.1` logs one in ten).
        #[arg(long, default_value = "on", value_name = "on|off|SHARE", value_parser = parse_share)]
        access_log: f64,
        /// Access log format: `json`, `text`, or `auto` (text when stdout is a terminal,
        /// JSON otherwise).
        #[arg(long, default_value = "auto", value_name = "auto|json|text", value_parser = ["auto", "json", "text"])]
        access_log_format: String,
        #[command(flatten)]
        tracing: TraceFlags,
    },
    /// Check a config without serving it: print load errors, or the computed status and IR.
    /// Exits 1 when the config does not load, or when any Accepted, Ready, ResolvedRefs
    /// or Programmed condition is not True (each named on stderr with its object, reason
    /// and message), so that it can gate a CI pipeline.
    Check {
        path: PathBuf,
        /// Where compiled Wasm filters and downloaded sources are cached, as for `run`.
        /// Default: $XDG_CACHE_HOME/sluice/wasm or ~/.cache/sluice/wasm.
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Convert Ingresses to Gateway API objects: a Gateway, HTTPRoutes and ReferenceGrants,
    /// printed as YAML with a comment on every choice that changes behaviour. Reads a
    /// YAML file or folder, or `-` for stdin (`kubectl get ingress,service -A -o yaml |
    /// sluice convert -`). Services in the input resolve ports given by name. What the
    /// output serves is what Sluice serves for the Ingresses themselves.
    Convert {
        path: PathBuf,
        /// The Gateway's namespace (the HTTPRoutes stay in their Ingresses' namespaces).
        #[arg(long, default_value = "default")]
        gateway_namespace: String,
        /// The Gateway's gatewayClassName.
        #[arg(long, default_value = "sluice")]
        gateway_class: String,
        /// The Gateway's HTTP listener (an IP other than 0.0.0.0 becomes spec.addresses).
        #[arg(long, default_value = "0.0.0.0:80", value_name = "ADDR:PORT")]
        http: SocketAddr,
        /// The Gateway's HTTPS listeners, one per TLS host.
        #[arg(long, default_value = "0.0.0.0:443", value_name = "ADDR:PORT")]
        https: SocketAddr,
        /// Convert only the Ingresses of this class (by ingressClassName or the
        /// kubernetes.io/ingress.class annotation); default: all of them.
        #[arg(long, value_name = "NAME")]
        ingress_class: Option<String>,
        /// The source-range filter (filters/source-range) that serves Ingresses'
        /// allowlist-source-range, whitelist-source-range and denylist-source-range:
        /// oci://REGISTRY/REPOSITORY:TAG, or a .wasm path (under the config folder or
        /// --filter-dir). The WasmFilters written for them name it.
        #[arg(long, default_value = sluice_translate::ingress::SOURCE_RANGE_FILTER_PATH, value_name = "SOURCE", value_parser = sluice_translate::ingress::source_range_filter)]
        source_range_filter: sluice_resources::WasmSource,
    },
    /// Print the WasmFilter CustomResourceDefinition (YAML), generated from the Rust types.
    Crd,
    /// Publish and fetch filters in OCI registries.
    #[command(subcommand)]
    Filter(FilterCommand),
    /// Run the echo backend used by the quickstart and the tests.
    Echo {
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        #[arg(long, env = "NAMESPACE", default_value = "default")]
        namespace: String,
        #[arg(long, env = "SERVICE_NAME", default_value = "echo")]
        service: String,
        #[arg(long, env = "POD_NAME", default_value = "echo-0")]
        pod: String,
    },
}

/// Kubernetes mode's settings (ignored in file mode).
#[derive(clap::Args)]
struct ClusterArgs {
    /// The Lease whose holder writes statuses (every replica serves traffic).
    /// Default: sluice in $POD_NAMESPACE, else in default.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    lease: Option<String>,
    /// This replica's name in the Lease. Default: $POD_NAME, else host name and PID.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a Lease holder that stopped renewing keeps it.
    #[arg(long, default_value = "15", value_name = "SECONDS")]
    lease_duration: u64,
    /// The data plane Service whose load-balancer addresses (else cluster IPs) Gateways
    /// without spec.addresses report in status.addresses.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    gateway_service: Option<String>,
    /// Serve this one Gateway only, as its own data plane, and write no status (the
    /// Deployments the controller makes for the Gateways of PerGateway classes run
    /// with it).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    gateway: Option<String>,
    /// The image of the per-Gateway data planes when neither their class nor their
    /// Gateway names one (the chart sets its own image).
    #[arg(long, env = "SLUICE_IMAGE", value_name = "IMAGE")]
    data_plane_image: Option<String>,
    /// The read-only ClusterRole the per-Gateway data planes' ServiceAccounts are bound
    /// to, by a ClusterRoleBinding of the same name that the controller keeps.
    #[arg(long, value_name = "NAME")]
    data_plane_cluster_role: Option<String>,
}

impl ClusterArgs {
    fn options(self, admin_port: u16) -> anyhow::Result<provider::ClusterOptions> {
        let split = |flag: &str, v: &str| -> anyhow::Result<(String, String)> {
            match v.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                    Ok((ns.to_string(), name.to_string()))
                }
                _ => anyhow::bail!("--{flag} {v:?}: expected NAMESPACE/NAME"),
            }
        };
        let (lease_namespace, lease_name) = match &self.lease {
            Some(l) => split("lease", l)?,
            None => (
                std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into()),
                "sluice".into(),
            ),
        };
        let addresses = match &self.gateway_service {
            Some(s) => {
                let (namespace, name) = split("gateway-service", s)?;
                Some(sluice_kube::status::AddressSource { namespace, name })
            }
            None => None,
        };
        let identity = self.identity.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "sluice".into());
            format!("{host}-{}", std::process::id())
        });
        let gateway = match &self.gateway {
            Some(g) => Some(split("gateway", g)?),
            None => None,
        };
        Ok(provider::ClusterOptions {
            gateway,
            data_plane: sluice_kube::infra::Options {
                image: self.data_plane_image,
                cluster_role: self.data_plane_cluster_role,
                admin_port,
            },
            lease_namespace,
            lease_name,
            identity,
            lease_duration: Duration::from_secs(self.lease_duration.max(1)),
            addresses,
        })
    }
}

#[derive(Subcommand)]
enum FilterCommand {
    /// Write a ready filter crate: a filter, a harness test and a README, outside any
    /// workspace. It builds with `cargo build --release --target wasm32-wasip2` and
    /// tests with `cargo test`.
    New {
        /// The crate's name, e.g. api-key.
        name: String,
        /// Where to write it (default: ./NAME). Must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The sdk/ folder of a Sluice checkout to depend on by path (default: the
        /// checkout this binary was built in, if it is still there; else the SDK by
        /// version only).
        #[arg(long, value_name = "DIR")]
        sdk: Option<PathBuf>,
        /// The filter's language: rust (a crate with a harness test), python (an app.py
        /// built with componentize-py) or js (an app.js built with componentize-js);
        /// the last two come with a `sluice filter test` case.
        #[arg(long, value_enum, default_value_t = scaffold::Lang::Rust)]
        lang: scaffold::Lang,
    },
    /// Run a component on a request written in YAML, in the gateway's runtime: prints
    /// what the filter did (the request that reaches the backend, or its own answer,
    /// and the response after it) and checks the file's `expect:` block. Exits 1 on a
    /// mismatch, 2 when the filter cannot run. docs/filters.md has the format.
    Test {
        /// The component, e.g. target/wasm32-wasip2/release/api_key.wasm.
        component: PathBuf,
        /// The filter's config: a WasmFilter (its spec.config is used) or the config
        /// itself, YAML or JSON. Default: none (null).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The request, the backend's response and what to expect, as YAML.
        #[arg(long, value_name = "FILE")]
        request: PathBuf,
        /// Where compiled components are cached, by digest, as for `run`: a second
        /// test of the same build skips compiling it (seconds for a Python or
        /// JavaScript component). Default: $XDG_CACHE_HOME/sluice/wasm or
        /// ~/.cache/sluice/wasm.
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Run again, locally, the requests on which a WasmFilter trapped, timed out or ran
    /// out of memory in a gateway (kept when its spec.debug.captureFailures is set), on
    /// the build that failed or on a fix. Says for each whether it fails again; exits 1
    /// if any does, 2 when they cannot be read or run. docs/filters.md, "Replaying
    /// failures".
    Replay {
        /// The component to run them on: the build that failed (`sluice filter pull
        /// IMAGE@DIGEST`), or a new one to check a fix.
        component: PathBuf,
        /// Read them from this gateway's admin API (`--admin` of `sluice run`), e.g.
        /// 127.0.0.1:9901.
        #[arg(
            long,
            value_name = "HOST:PORT",
            conflicts_with = "from",
            required_unless_present = "from"
        )]
        admin: Option<String>,
        /// Read them from a file saved from the admin API's /filters/failures.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        /// Only this WasmFilter's (namespace/name).
        #[arg(long, value_name = "NAMESPACE/NAME")]
        filter: Option<String>,
        /// Run with this config instead of the one each failure was captured with: a
        /// WasmFilter (its spec.config) or the config itself.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Also write each failure as a `sluice filter test` case in DIR (add an
        /// `expect:` block to keep it as a regression test).
        #[arg(long, value_name = "DIR")]
        save: Option<PathBuf>,
        /// Where compiled components are cached, by digest, as for `run` and `filter
        /// test`. Default: $XDG_CACHE_HOME/sluice/wasm or ~/.cache/sluice/wasm.
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Push a component as an OCI artifact (CNCF Wasm layout); prints the manifest digest.
    Push {
        /// The component, e.g. filters/target/wasm32-wasip2/release/hello.wasm.
        file: PathBuf,
        /// registry/repository:tag, e.g. 127.0.0.1:5000/filters/hello:v1.
        image: String,
        #[command(flatten)]
        creds: filter_cmd::Credentials,
    },
    /// Pull a filter from a registry and verify it; prints the manifest digest.
    Pull {
        /// registry/repository:tag or registry/repository@sha256:...
        image: String,
        /// Where to write the component (default: ./<repository name>.wasm).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        creds: filter_cmd::Credentials,
    },
}

/// Traces by OTLP (docs/operations.md, "Traces"). Off unless an endpoint is given.
#[derive(clap::Args)]
struct TraceFlags {
    /// Where spans go: `http://HOST:PORT` or `https://HOST:PORT` of an OTLP receiver
    /// (an OpenTelemetry Collector, Jaeger, Tempo...). Tracing is off without it.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<http::Uri>,
    /// OTLP over HTTP with protobuf (`http`, posting to `<URL>/v1/traces`, port 4318
    /// by custom) or over gRPC (`grpc`, port 4317).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http", value_name = "http|grpc", value_parser = ["http", "http/protobuf", "grpc"])]
    otlp_protocol: String,
    /// Time one export may take before it is given up (its spans are lost).
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    otlp_timeout: u64,
    /// The share of new traces recorded: `on`, `off` or 0 to 1. A client's
    /// `traceparent` decides for its own trace (parent-based sampling).
    #[arg(long, default_value = "on", value_name = "on|off|SHARE", value_parser = parse_share)]
    trace_sample: f64,
    /// Spans waiting for export; past it new spans are dropped (a slow or absent
    /// receiver never holds requests).
    #[arg(long, default_value = "2048", value_name = "N")]
    trace_queue: usize,
    /// How often waiting spans are sent.
    #[arg(long, default_value = "5000", value_name = "MILLISECONDS")]
    trace_export_interval: u64,
    /// The `service.name` of the spans.
    #[arg(
        long,
        env = "OTEL_SERVICE_NAME",
        default_value = "sluice",
        value_name = "NAME"
    )]
    trace_service_name: String,
}

impl TraceFlags {
    fn config(self) -> Option<sluice_proxy::trace::Config> {
        Some(sluice_proxy::trace::Config {
            endpoint: self.otlp_endpoint?,
            protocol: match self.otlp_protocol.as_str() {
                "grpc" => sluice_proxy::trace::Protocol::Grpc,
                _ => sluice_proxy::trace::Protocol::Http,
            },
            sample: self.trace_sample,
            service_name: self.trace_service_name,
            timeout: Duration::from_secs(self.otlp_timeout.max(1)),
            queue: self.trace_queue.max(1),
            delay: Duration::from_millis(self.trace_export_interval.max(1)),
        })
    }
}

/// What a client connection may take (docs/operations.md has the table).
#[derive(clap::Args)]
struct ConnectionFlags {
    /// Open connections per listening socket; past it new ones are closed at once
    /// (sluice_connections_refused_total).
    #[arg(long, default_value = "10000", value_name = "N")]
    max_connections: usize,
    /// Time a TLS connection gets from accept to the end of its handshake.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    tls_handshake_timeout: u64,
    /// Time a connection gets from accept (or TLS handshake) to a complete request
    /// head; also how long an HTTP/1.1 connection may idle between requests.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    header_timeout: u64,
    /// HTTP/2 connections are PINGed this often and closed when a PING goes
    /// unanswered as long.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    h2_keepalive: u64,
    /// A connection with no request in flight for this long is closed (HTTP/2 with
    /// GOAWAY).
    #[arg(long, default_value = "180", value_name = "SECONDS")]
    idle_timeout: u64,
    /// A response write the client does not take for this long (it stopped reading)
    /// closes the connection.
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    send_timeout: u64,
    /// A request body may wait this long for its next bytes, and gets this long before
    /// --body-min-rate applies; past either it is answered 408. 0 turns both off.
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    body_timeout: u64,
    /// Bytes per second a request body must average once --body-timeout has passed
    /// since it started; 0 turns the rate off.
    #[arg(long, default_value = "1024", value_name = "BYTES")]
    body_min_rate: u64,
    /// Time a connection to a backend may take to open (HTTP, TLS, TCP and TLS
    /// passthrough routes), as a duration such as 5s or 500ms; past it the request
    /// gets 503 (a stream route's client connection is closed).
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_connect_timeout)]
    connect_timeout: Duration,
}

fn parse_reload_settle(s: &str) -> Result<Duration, String> {
    match sluice_resources::parse_duration(s)? {
        d if d > Duration::from_secs(10) => Err("must be at most 10s".into()),
        d => Ok(d),
    }
}

fn parse_connect_timeout(s: &str) -> Result<Duration, String> {
    match sluice_resources::parse_duration(s)? {
        d if d.is_zero() || d > Duration::from_secs(300) => {
            Err("must be above 0 and at most 300s".into())
        }
        d => Ok(d),
    }
}

impl ConnectionFlags {
    fn limits(&self) -> sluice_proxy::ConnectionLimits {
        let secs = |s: u64| Duration::from_secs(s.max(1));
        sluice_proxy::ConnectionLimits {
            max_connections: self.max_connections.max(1),
            handshake_timeout: secs(self.tls_handshake_timeout),
            header_timeout: secs(self.header_timeout),
            h2_keepalive: secs(self.h2_keepalive),
            idle_timeout: secs(self.idle_timeout),
            send_timeout: secs(self.send_timeout),
            body_timeout: Duration::from_secs(self.body_timeout),
            body_min_rate: self.body_min_rate,
        }
    }
}

/// `on` (every request), `off`, or a share of requests between 0 and 1.
/// `--wasm-idle-memory`: a quantity of at least one MiB.
fn parse_idle_memory(s: &str) -> Result<usize, String> {
    let bytes = sluice_resources::parse_quantity(s)?;
    if bytes < 1 << 20 {
        return Err(format!(
            "{s:?} is less than one instance's memory: give at least 1Mi"
        ));
    }
    Ok(usize::try_from(bytes).unwrap_or(usize::MAX))
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s {
        "on" => Ok(1.0),
        "off" => Ok(0.0),
        _ => match s.parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
            _ => Err(format!(
                "{s:?}: expected on, off, or a share from 0 to 1 such as 0.1"
            )),
        },
    }
}

/// The log filter: `SLUICE_LOG` (tracing's `EnvFilter` syntax), else `level`. rustls
/// logs a warning on every handshake about what the client did wrong (an IP address
/// sent as SNI, which h2load and some load balancers do): any client could fill the log
/// with them, so they are off unless `SLUICE_LOG` names `rustls`.
fn log_filter(spec: Option<String>, level: &str) -> tracing_subscriber::EnvFilter {
    let spec = spec.unwrap_or_else(|| level.to_string());
    let quiet = |s: &str| {
        if s.contains("rustls") {
            s.to_string()
        } else {
            format!("{s},rustls=error")
        }
    };
    tracing_subscriber::EnvFilter::try_new(quiet(&spec))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(quiet(level)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `filter test` prints a report: only what went wrong goes beside it.
    let level = match cli.command {
        Command::Filter(FilterCommand::Test { .. }) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(std::env::var("SLUICE_LOG").ok(), level))
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Run {
            path,
            kubernetes,
            cluster,
            bind_address,
            gateway_address_pool,
            ingress_http,
            ingress_https,
            ingress_source_range_filter,
            filter_dir,
            admin,
            workers,
            worker_cpu_affinity,
            shutdown_delay,
            drain_timeout,
            reload_settle,
            cache_dir,
            insecure_registries,
            connections,
            udp_idle_timeout,
            filter_log_lines,
            wasm_instances,
            wasm_idle_memory,
            access_log,
            access_log_format,
            tracing: trace_flags,
        } => {
            sluice_proxy::raise_open_files_limit();
            let workers = workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let cache_dir = cache_dir.or_else(default_cache_dir);
            let address_pool = match gateway_address_pool
                .as_deref()
                .map(address_pool::AddressPool::parse)
            {
                None => None,
                Some(Ok(p)) => Some(p),
                Some(Err(e)) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // One worker serves on the thread that runs everything else; more get
            // threads of their own (sluice_proxy::Workers).
            let workers = match workers {
                0 | 1 => None,
                n => match sluice_proxy::Workers::start(n, worker_cpu_affinity) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        eprintln!("error: cannot start {n} worker threads: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            block_on(async move {
                let (from, options) = match path {
                    Some(p) if !kubernetes => (provider::From::Files(p), None),
                    _ => {
                        let options = cluster.options(admin.port())?;
                        let client = sluice_kube::client::connect().await.context(
                            "cannot reach the Kubernetes API (in-cluster, or $KUBECONFIG / ~/.kube/config)",
                        )?;
                        let c = sluice_kube::Cluster::discover(client).await?;
                        (provider::From::Cluster(c), Some(options))
                    }
                };
                sluice_proxy::set_connect_timeout(connections.connect_timeout);
                provider::App::run(provider::Config {
                    from,
                    cluster: options,
                    bind_address,
                    address_pool,
                    ingress: sluice_translate::ingress::Options {
                        source_range_filter: ingress_source_range_filter,
                        ..sluice_translate::ingress::Options::serving(ingress_http, ingress_https)
                    },
                    filter_dir,
                    admin,
                    shutdown_delay: Duration::from_secs(shutdown_delay),
                    drain: Duration::from_secs(drain_timeout),
                    reload_settle,
                    cache_dir,
                    insecure_registries,
                    udp_idle: Duration::from_secs(udp_idle_timeout),
                    limits: connections.limits(),
                    workers,
                    filter_log_lines,
                    wasm_instances,
                    wasm_idle_memory,
                    access_log: (access_log > 0.0).then(|| {
                        use std::io::IsTerminal;
                        let format = match access_log_format.as_str() {
                            "json" => sluice_proxy::access_log::Format::Json,
                            "text" => sluice_proxy::access_log::Format::Text,
                            _ if std::io::stdout().is_terminal() => {
                                sluice_proxy::access_log::Format::Text
                            }
                            _ => sluice_proxy::access_log::Format::Json,
                        };
                        (format, access_log)
                    }),
                    tracing: trace_flags.config(),
                })
                .await
            })
        }
        Command::Crd => {
            print!("{}", sluice_kube::crd::wasm_filter_crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Filter(FilterCommand::Test {
            component,
            config,
            request,
            cache_dir,
        }) => {
            harness_cache(cache_dir);
            filter_test::run(&component, config.as_deref(), &request)
        }
        Command::Filter(FilterCommand::Replay {
            component,
            admin,
            from,
            filter,
            config,
            save,
            cache_dir,
        }) => {
            harness_cache(cache_dir);
            replay::run(&replay::Options {
                component,
                source: match (admin, from) {
                    (Some(a), _) => replay::Source::Admin(a),
                    (None, Some(f)) => replay::Source::File(f),
                    (None, None) => unreachable!("clap requires --admin or --from"),
                },
                filter,
                config,
                save,
            })
        }
        Command::Filter(cmd) => block_on(async {
            match cmd {
                FilterCommand::New {
                    name,
                    dir,
                    sdk,
                    lang: scaffold::Lang::Rust,
                } => scaffold::new(&name, dir, sdk).map(|dir| {
                    eprintln!(
                        "wrote the filter crate {name} in {0}: `cd {0} && cargo test` builds and tests it",
                        dir.display()
                    )
                }),
                FilterCommand::New {
                    name,
                    dir,
                    lang: scaffold::Lang::Python,
                    ..
                } => scaffold::new_python(&name, dir).map(|dir| {
                    eprintln!(
                        "wrote the Python filter {name} in {}: its README.md builds it with componentize-py and tests it",
                        dir.display()
                    )
                }),
                FilterCommand::New {
                    name,
                    dir,
                    lang: scaffold::Lang::Js,
                    ..
                } => scaffold::new_js(&name, dir).map(|dir| {
                    eprintln!(
                        "wrote the JavaScript filter {name} in {0}: `cd {0} && npm install && npm run build` builds it, its README.md tests it",
                        dir.display()
                    )
                }),
                FilterCommand::Push { file, image, creds } => {
                    filter_cmd::push(&file, &image, &creds).await
                }
                FilterCommand::Pull {
                    image,
                    output,
                    creds,
                } => filter_cmd::pull(&image, output, &creds).await,
                FilterCommand::Test { .. } | FilterCommand::Replay { .. } => {
                    unreachable!("run above, outside the runtime")
                }
            }
        }),
        Command::Convert {
            path,
            gateway_namespace,
            gateway_class,
            http,
            https,
            ingress_class,
            source_range_filter,
        } => {
            let opts = sluice_translate::ingress::Options {
                source_range_filter,
                http,
                https,
                gateway_namespace,
                gateway_class,
                serving: false,
                any_class: true,
            };
            match convert::run(&path, &opts, ingress_class.as_deref()) {
                Ok((yaml, notes)) => {
                    print!("{yaml}");
                    for n in &notes {
                        eprintln!("{n}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { path, cache_dir } => {
            match provider::check(&path, cache_dir.or_else(default_cache_dir)) {
                Ok((out, problems)) => {
                    print!("{out}");
                    if problems.is_empty() {
                        return ExitCode::SUCCESS;
                    }
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    eprintln!("sluice check: {} condition(s) are not True", problems.len());
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Echo {
            listen,
            namespace,
            service,
            pod,
        } => block_on(async {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("echo on {listen}"))?;
            tracing::info!(addr = %listener.local_addr()?, "echo backend listening");
            sluice_echo::serve(
                listener,
                Arc::new(sluice_echo::Identity::new(&namespace, &service, &pod)),
            )
            .await
            .with_context(|| format!("echo on {listen}"))
        }),
    }
}

/// Runs `fut` on a runtime of this thread; prints its error and fails.
fn block_on(fut: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--cache-dir` of the commands that run a filter in the harness.
fn harness_cache(dir: Option<PathBuf>) {
    if let Some(dir) = dir.or_else(default_cache_dir) {
        sluice_harness::set_cache_dir(dir);
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("sluice").join("wasm"))
}
