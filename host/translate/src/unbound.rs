//! Sockets that could not be bound, in the statuses of the Gateways that asked for them.
//!
//! A Gateway may name an address the host does not own, or a port another process
//! holds. That must not hold back every other Gateway: the rest of the configuration
//! is applied, and the Gateway says what is wrong. An address that is not the host's
//! makes the Gateway `Programmed: False` (`AddressNotUsable`); a port that is taken makes
//! the listener `Accepted: False` (`PortUnavailable`) and `Programmed: False`. The
//! provider tries again every few seconds, so a port that frees up is taken then.

use crate::status::*;
use crate::{GatewayBinding, Unbound};

/// Writes the failures into the statuses of the Gateways they belong to.
pub(crate) fn report(statuses: &mut [ObjectStatus], binds: &[GatewayBinding], failed: &[Unbound]) {
    if failed.is_empty() {
        return;
    }
    for s in statuses.iter_mut().filter(|s| s.kind == Kind::Gateway) {
        let Some(b) = binds
            .iter()
            .find(|b| b.namespace == s.metadata.namespace && b.name == s.metadata.name)
        else {
            continue;
        };
        let generation = s.metadata.generation;
        let Status::Gateway(gs) = &mut s.status else {
            continue;
        };
        for f in failed {
            let (addr, udp, err) = (f.address, f.udp, &f.error);
            if !b.addresses.contains(&addr.ip()) {
                continue;
            }
            let hit: Vec<&String> = b
                .listeners
                .iter()
                .filter(|l| l.port == addr.port() && l.udp == udp)
                .map(|l| &l.name)
                .collect();
            if hit.is_empty() {
                continue;
            }
            let not_ours = f.address_not_ours;
            let msg = if not_ours {
                format!(
                    "{err}: {} is not an address of this host; use one it has, or leave spec.addresses out (retrying every few seconds)",
                    addr.ip()
                )
            } else {
                format!(
                    "{err}: another process holds the port, or binding it needs privileges; free it or use another port (retrying every few seconds)"
                )
            };
            if not_ours {
                set(
                    &mut gs.conditions,
                    Condition::new(
                        ConditionType::Programmed,
                        false,
                        Reason::AddressNotUsable,
                        &msg,
                        generation,
                    ),
                );
                gs.addresses.retain(|a| a.value != addr.ip().to_string());
            }
            for l in gs.listeners.iter_mut().filter(|l| hit.contains(&&l.name)) {
                if !not_ours {
                    set(
                        &mut l.conditions,
                        Condition::new(
                            ConditionType::Accepted,
                            false,
                            Reason::PortUnavailable,
                            &msg,
                            generation,
                        ),
                    );
                }
                set(
                    &mut l.conditions,
                    Condition::new(
                        ConditionType::Programmed,
                        false,
                        Reason::Pending,
                        &msg,
                        generation,
                    ),
                );
            }
        }
    }
}

fn set(conditions: &mut Vec<Condition>, c: Condition) {
    match conditions.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => *x = c,
        None => conditions.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(yaml: &str, unbound: Vec<Unbound>) -> Vec<ObjectStatus> {
        let res = sluice_resources::load_str("test.yaml", yaml)
            .expect("load")
            .resources;
        let inputs = crate::Inputs {
            unbound,
            ..Default::default()
        };
        crate::translate(&res, &inputs).statuses
    }

    /// (status, reason) of condition `t`.
    fn condition<'a>(conds: &'a [Condition], t: &str) -> (&'a str, &'a str) {
        let c = conds
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("no {t} in {conds:?}"));
        (c.status.as_str(), c.reason.as_str())
    }

    fn conditions<'a>(statuses: &'a [ObjectStatus], name: &str) -> &'a GatewayStatus {
        let s = statuses
            .iter()
            .find(|s| s.kind == "Gateway" && s.metadata.name == name)
            .expect("gateway status");
        match &s.status {
            Status::Gateway(g) => g,
            _ => panic!("not a Gateway status"),
        }
    }

    const YAML: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sluice}
spec: {controllerName: sluice.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: elsewhere, namespace: default}
spec:
  gatewayClassName: sluice
  addresses: [{type: IPAddress, value: 203.0.113.1}]
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: busy, namespace: default}
spec:
  gatewayClassName: sluice
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: dns, port: 53, protocol: UDP}
";

    #[test]
    fn an_address_not_ours_and_a_taken_port_show_in_their_gateways_only() {
        let failed = vec![
            Unbound {
                address: "203.0.113.1:80".parse().expect("addr"),
                udp: false,
                address_not_ours: true,
                error: "cannot listen on 203.0.113.1:80".into(),
            },
            Unbound {
                address: "0.0.0.0:53".parse().expect("addr"),
                udp: true,
                address_not_ours: false,
                error: "cannot listen on udp 0.0.0.0:53".into(),
            },
        ];
        let statuses = translate(YAML, failed);

        let g = conditions(&statuses, "elsewhere");
        assert_eq!(
            condition(&g.conditions, "Programmed"),
            ("False", "AddressNotUsable")
        );
        let programmed = g.conditions.iter().find(|c| c.type_ == "Programmed");
        let message = programmed.map_or("", |c| c.message.as_str());
        assert!(message.contains("203.0.113.1"), "{message}");
        assert!(g.addresses.is_empty(), "{:?}", g.addresses);

        let g = conditions(&statuses, "busy");
        assert_eq!(
            condition(&g.conditions, "Programmed").0,
            "True",
            "the Gateway's other listener serves"
        );
        let dns = g.listeners.iter().find(|l| l.name == "dns").expect("dns");
        assert_eq!(
            condition(&dns.conditions, "Accepted"),
            ("False", "PortUnavailable")
        );
        let http = g.listeners.iter().find(|l| l.name == "http").expect("http");
        assert!(
            http.conditions
                .iter()
                .filter(|c| c.type_ == "Accepted" || c.type_ == "Programmed")
                .all(|c| c.status == "True"),
            "UDP 53 failing says nothing about TCP 80: {:?}",
            http.conditions
        );
    }
}
