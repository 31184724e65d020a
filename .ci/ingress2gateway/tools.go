// Builds the Gateway API project's converter, ingress2gateway, for the test that compares
// `sluice convert` with it (host/sluice/tests/ingress.rs). Test tooling only.
//go:build tools

package tools

import _ "github.com/kubernetes-sigs/ingress2gateway"
