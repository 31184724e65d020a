//go:build tools

// The Kubernetes control plane the Kubernetes-mode tests run against, built from the
// k8s.io/kubernetes module (see ../run and README). Test tooling only: the product is Rust.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "sigs.k8s.io/gateway-api/conformance/echo-basic"
)
