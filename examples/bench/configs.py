"""Configurations for examples/bench/compare.sh's routes and HTTPS scenarios, printed on
stdout: the same routes (or the same TLS listener) for each system.

    configs.py routes SYSTEM N PORT BACKEND    N path routes /p0 ... /p{N-1}
    configs.py tls SYSTEM PORT BACKEND CERT KEY  one HTTPS listener (HTTP/1.1 and h2)

SYSTEM is nginx (the `http {}` body), envoy (a whole bootstrap), traefik (the dynamic
configuration) or sluice (HTTPRoutes for the Gateway `bench` of examples/bench/lib.sh;
for tls, its Secret). Each route is a path prefix the way the system's users write it:
an nginx `location`, an Envoy `path_separated_prefix` route (what Envoy Gateway
generates for a Gateway API PathPrefix), a Traefik `PathPrefix` rule, and an HTTPRoute
PathPrefix match, 16 rules per HTTPRoute as its CRD allows.
"""

import base64
import sys

NGINX_PROXY = "proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection '';"


def envoy(port, backend, routes, tls=None):
    transport = ""
    if tls:
        cert, key = tls
        transport = f"""
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]"""
    route_lines = "\n".join(
        f"              - {{match: {m}, route: {{cluster: backend}}}}" for m in routes
    )
    return f"""static_resources:
  listeners:
  - name: l{port}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: l{port}
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{route_lines}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}{transport}
  clusters:
  - name: backend
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {backend}}}}}}}}}]}}]
"""


def traefik(backend, routers, tls=None):
    lines = ["http:", "  routers:"]
    for name, rule in routers:
        extra = ", tls: {}" if tls else ""
        lines.append(f"    {name}: {{entryPoints: [web], rule: \"{rule}\", service: backend{extra}}}")
    lines.append("  services:")
    lines.append(f"    backend: {{loadBalancer: {{servers: [{{url: \"http://127.0.0.1:{backend}\"}}]}}}}")
    if tls:
        # The same certificate with SNI or without (the clients connect to 127.0.0.1).
        cert, key = tls
        lines.append("tls:")
        lines.append(f"  certificates: [{{certFile: {cert}, keyFile: {key}}}]")
        lines.append(f"  stores: {{default: {{defaultCertificate: {{certFile: {cert}, keyFile: {key}}}}}}}")
    return "\n".join(lines) + "\n"


def sluice_routes(paths):
    out = []
    for r in range(0, len(paths), 16):
        out.append(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
            f"metadata: {{name: r{r}, namespace: default}}\n"
            "spec:\n  parentRefs: [{name: bench}]\n  rules:"
        )
        for p in paths[r : r + 16]:
            out.append(
                f"  - matches: [{{path: {{type: PathPrefix, value: {p}}}}}]\n"
                "    backendRefs: [{name: backend, port: 80}]"
            )
        out.append("---")
    return "\n".join(out) + "\n"


def main(argv):
    kind, system = argv[1], argv[2]
    if kind == "routes":
        n, port, backend = (int(a) for a in argv[3:6])
        paths = [f"/p{i}" for i in range(n)]
        if system == "nginx":
            locations = "\n".join(f"    location {p} {{ {NGINX_PROXY} }}" for p in paths)
            return (
                f"upstream be {{ server 127.0.0.1:{backend}; keepalive 64; }}\n"
                f"  server {{ listen 127.0.0.1:{port};\n{locations}\n  }}"
            )
        if system == "envoy":
            return envoy(port, backend, [f"{{path_separated_prefix: {p}}}" for p in paths])
        if system == "traefik":
            return traefik(backend, [(f"r{i}", f"PathPrefix(`{p}`)") for i, p in enumerate(paths)])
        if system == "sluice":
            return sluice_routes(paths)
    if kind == "tls":
        port, backend = int(argv[3]), int(argv[4])
        cert, key = argv[5], argv[6]
        if system == "envoy":
            return envoy(port, backend, ["{prefix: /}"], tls=(cert, key))
        if system == "traefik":
            return traefik(backend, [("all", "PathPrefix(`/`)")], tls=(cert, key))
        if system == "sluice":
            b64 = lambda path: base64.b64encode(open(path, "rb").read()).decode()  # noqa: E731
            return (
                "apiVersion: v1\nkind: Secret\nmetadata: {name: cert, namespace: default}\n"
                "type: kubernetes.io/tls\n"
                f"data: {{tls.crt: {b64(cert)}, tls.key: {b64(key)}}}\n---\n"
                + sluice_routes(["/"])
            )
    sys.exit(f"configs.py: no {kind} configuration for {system}")


if __name__ == "__main__":
    sys.stdout.write(main(sys.argv))
