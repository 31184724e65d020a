# Shared by .ci/run and .ci/conformance: the Debian packages and the Go-built tools the
# tests use. Sourced, not run.

# Debian packages the tests use: curl (a real HTTP client), docker-registry (a real
# OCI registry, which the OCI tests start on 127.0.0.1 themselves) and htpasswd (its
# basic-auth file), from apache2-utils.
need=()
command -v curl >/dev/null || need+=(curl)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
# A real Redis, for WasmFilters whose kv store is shared (spec.kv.redis).
command -v redis-server >/dev/null || need+=(redis-server)
# Kubernetes-mode tests: etcd for the API server, and a network namespace of their own
# (unshare from util-linux, ip from iproute2).
command -v etcd >/dev/null || need+=(etcd-server)
command -v unshare >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
# Node and npm, for componentize-js (JavaScript filters).
command -v npm >/dev/null || need+=(npm)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
unset need

mkdir -p target/tools
# componentize-js, which builds the JavaScript filters of host/sluice/tests/languages.rs,
# from npm into target/tools/js (the tests look there).
js_tools() {
  set -euo pipefail
  if [ ! -d target/tools/js/node_modules/@bytecodealliance/componentize-js ]; then
    mkdir -p target/tools/js
    npm install --prefix target/tools/js --no-audit --no-fund --silent \
      @bytecodealliance/componentize-js@0.23.0
  fi
}

go_tools() {
  set -euo pipefail
  # oras, the independent OCI client the interop tests push and pull with, built from
  # its Go module into target/tools (the tests look there).
  if [ ! -x target/tools/oras ]; then
    GOBIN="$PWD/target/tools" GOFLAGS=-mod=mod go install oras.land/oras/cmd/oras@v1.3.6
  fi
  # grpcurl, the gRPC client of the GRPCRoute tests, from its Go module.
  if [ ! -x target/tools/grpcurl ]; then
    GOBIN="$PWD/target/tools" GOFLAGS=-mod=mod go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4
  fi
  # cosign, which the signed-filter tests make keys and sign images with (keyed and
  # offline), from its Go module.
  if [ ! -x target/tools/cosign ]; then
    GOBIN="$PWD/target/tools" GOFLAGS=-mod=mod go install github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5
  fi
  # An Envoy ext_authz gRPC server on the official go-control-plane types, for the
  # ExternalAuth (protocol: GRPC) tests; always built (seconds with Go's build cache).
  (cd .ci/extauthz && go build -o ../../target/tools/extauthz .)
  # The Kubernetes control plane of the Kubernetes-mode tests: kube-apiserver and
  # kube-controller-manager from the k8s.io/kubernetes Go module, through the wrapper
  # module in .ci/kube (test tooling only).
  if [ ! -x target/tools/kube-apiserver ] || [ ! -x target/tools/kube-controller-manager ]; then
    (cd .ci/kube && GOBIN="$PWD/../../target/tools" go install \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager)
  fi
  # The Gateway API v1.6 standard CRDs, from the gateway-api Go module; the tests apply
  # them with server-side apply.
  if [ ! -f target/tools/gateway-api-crds/gateway.networking.k8s.io_httproutes.yaml ] ||
    [ ! -f target/tools/gateway-api-crds-experimental/gateway.networking.k8s.io_httproutes.yaml ]; then
    dir=$(go mod download -json sigs.k8s.io/gateway-api@v1.6.3 | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    mkdir -p target/tools/gateway-api-crds target/tools/gateway-api-crds-experimental
    cp "$dir"/config/crd/standard/*.yaml target/tools/gateway-api-crds/
    # The experimental channel, for the suite's second run (.ci/conformance --experimental).
    cp "$dir"/config/crd/experimental/*.yaml target/tools/gateway-api-crds-experimental/
  fi
  # ingress2gateway, the Gateway API project's Ingress converter, which the Ingress
  # tests compare `sluice convert` with; through the wrapper module in
  # .ci/ingress2gateway (its module proxy lists no versions, so `go install mod@v` fails).
  if [ ! -x target/tools/ingress2gateway ]; then
    (cd .ci/ingress2gateway && go build -o ../../target/tools/ingress2gateway \
      github.com/kubernetes-sigs/ingress2gateway)
  fi
  # helm, from its Go module: lint and render the chart (the tests apply the rendering).
  if [ ! -x target/tools/helm ]; then
    GOBIN="$PWD/target/tools" GOFLAGS=-mod=mod go install helm.sh/helm/v3/cmd/helm@v3.22.0
  fi
}

# The Gateway API conformance suite's parts (.ci/run and .ci/conformance run the
# suite): its test binary, its echo-basic backend and the fake kubelet, from the same
# wrapper module, and CoreDNS.
conformance_tools() {
  set -euo pipefail
  # Always built: Go's build cache makes an unchanged rebuild take seconds.
  (cd .ci/kube && GOBIN="$PWD/../../target/tools" go install ./kubelet sigs.k8s.io/gateway-api/conformance/echo-basic &&
    go test -c -o ../../target/tools/conformance.test ./conformance)
  # CoreDNS with the four plugins the suite's Corefile uses, for its coredns Pod (the
  # UDPRoute test); a module of its own, so its dependencies never move Kubernetes'.
  (cd .ci/coredns && go build -o ../../target/tools/coredns .)
}

# Runs the conformance suite (the ignored test gateway_api_conformance) and prints its
# counts; the whole output goes to target/conformance-run.log.
# With `experimental`, the experimental channel's run (its log: conformance-experimental-run.log).
run_conformance() {
  local status channel=${1:-standard} log=target/conformance-run.log
  [ "$channel" = standard ] || log=target/conformance-$channel-run.log
  set +e
  # --workspace, as `cargo test --workspace` built it: with -p the dependencies' features
  # unify differently and cargo builds wasmtime and four crates again.
  SLUICE_GATEWAY_API_CHANNEL=$channel cargo test --workspace --locked --test kube gateway_api_conformance -- --ignored --nocapture 2>&1 |
    tee "$log" | grep -E '(^|[.][.][.] )conformance:|^(failed|report|log):'
  status=${PIPESTATUS[0]}
  set -e
  return "$status"
}
