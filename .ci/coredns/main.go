// CoreDNS for the conformance rig (test tooling only; the product is Rust): the suite's
// UDPRoute test sends a DNS query through a UDPRoute to a coredns Pod, which the fake
// kubelet runs with this binary. Built with only the plugins the suite's Corefile uses
// (errors, log, forward, whoami), in their standard order, so it builds in seconds.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/whoami"
)

func init() {
	dnsserver.Directives = []string{"errors", "log", "forward", "whoami"}
}

func main() { coremain.Run() }
