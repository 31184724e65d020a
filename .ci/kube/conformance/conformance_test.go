// The official Gateway API conformance suite, run against Sluice by the test
// `gateway_api_conformance` in host/sluice/tests/kube.rs (README, "Conformance"), which
// starts the control plane, the fake kubelet (../kubelet) and Sluice, then runs this
// test binary.
// Test tooling only: the product is Rust.
package conformance

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

// Options (features, skipped tests and why) come from -conformance-options-file
// (options.yaml next to this file); the rig passes the report path.
func TestConformance(t *testing.T) {
	conformance.RunConformance(t)
}
