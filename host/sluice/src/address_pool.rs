//! `--gateway-address-pool`: each of our Gateways without `spec.addresses` (or with an
//! `IPAddress` entry that has no value) gets an address of its own from a range, binds
//! it, and reports it in `status.addresses`.
//!
//! Without a pool such Gateways all bind the same `0.0.0.0` (or `--bind-address`) and
//! share its ports, so two Gateways with a port-80 listener and no hostnames conflict.
//! With one, each is reachable on its own address, as a cloud load balancer per
//! Gateway would make it, for hosts that own a routed range (bare metal, a node with
//! several addresses, the conformance rig).
//!
//! An assignment is kept for as long as the Gateway exists, so a reload never moves a
//! Gateway; a deleted Gateway's address returns to the pool, but is handed out again
//! only after the rest of the range (as DHCP servers do), so a new Gateway does not
//! inherit the clients, or the lingering UDP sessions, of a deleted one. New Gateways
//! take free addresses in namespace/name order, so replicas that saw the same Gateways
//! come and go assign the same addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;

use sluice_resources::Resources;
use sluice_translate::{Assignments, CONTROLLER_NAME, asks_for_address};

pub use sluice_kube::{Reported, reported};

pub struct AddressPool {
    /// The first and last usable addresses, as numbers.
    first: u128,
    last: u128,
    v4: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    assigned: BTreeMap<(String, String), IpAddr>,
    /// Where the search for the next free address starts.
    cursor: u128,
}

impl AddressPool {
    /// Parses `198.18.2.0/24` or `fd00::/120`. For IPv4 ranges of more than two
    /// addresses the network and broadcast addresses are left out.
    pub fn parse(s: &str) -> Result<Self, String> {
        let fix = "give a range in CIDR form, like 198.18.2.0/24";
        let (ip, bits) = s
            .split_once('/')
            .ok_or_else(|| format!("--gateway-address-pool {s:?}: no prefix length; {fix}"))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|e| format!("--gateway-address-pool {s:?}: {e}; {fix}"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits: u32 = bits.parse().ok().filter(|b| *b <= max).ok_or_else(|| {
            format!("--gateway-address-pool {s:?}: prefix length must be 0..={max}; {fix}")
        })?;
        let n = match ip {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        let host_bits = max - bits;
        let size_minus_one = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let base = n & !size_minus_one;
        let (mut first, mut last) = (base, base | size_minus_one);
        if ip.is_ipv4() && host_bits >= 2 {
            first += 1;
            last -= 1;
        }
        Ok(AddressPool {
            first,
            last,
            v4: ip.is_ipv4(),
            state: Mutex::new(State {
                assigned: BTreeMap::new(),
                cursor: first,
            }),
        })
    }

    fn addr(&self, n: u128) -> IpAddr {
        if self.v4 {
            // In range: `first..=last` lies within a /0..=/32 IPv4 prefix.
            IpAddr::V4(u32::try_from(n).unwrap_or(u32::MAX).into())
        } else {
            IpAddr::V6(n.into())
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let n = match ip {
            IpAddr::V4(a) if self.v4 => u128::from(u32::from(a)),
            IpAddr::V6(a) if !self.v4 => u128::from(a),
            _ => return false,
        };
        (self.first..=self.last).contains(&n)
    }

    /// Gives each Gateway of our GatewayClasses that has no `spec.addresses` (or asks
    /// for one) its address; the translator binds and reports it as if the Gateway had
    /// named it. `reported` holds the addresses each Gateway
    /// (namespace, name) already shows in its status (Kubernetes mode): one of those in
    /// the range and free is kept, so a restarted replica, or a standby one, uses the
    /// address the status writer published. Returns a warning per Gateway left without
    /// one because the pool is used up (those bind the default address).
    pub fn assign(&self, res: &Resources, reported: &Reported) -> (Assignments, Vec<String>) {
        let ours: BTreeSet<&str> = res
            .gateway_classes
            .iter()
            .filter(|c| c.spec.controller_name == CONTROLLER_NAME)
            .map(|c| c.metadata.name.as_str())
            .collect();
        let key = |g: &sluice_resources::Gateway| {
            (
                g.metadata.namespace_or_default().to_string(),
                g.metadata.name.clone(),
            )
        };
        let wants: Vec<usize> = (0..res.gateways.len())
            .filter(|&i| {
                let g = &res.gateways[i];
                let asks =
                    g.spec.addresses.is_empty() || g.spec.addresses.iter().any(asks_for_address);
                asks && ours.contains(g.spec.gateway_class_name.as_str())
            })
            .collect();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { assigned, cursor } = &mut *state;
        let live: BTreeSet<(String, String)> =
            wants.iter().map(|&i| key(&res.gateways[i])).collect();
        assigned.retain(|k, _| live.contains(k));
        let mut used: BTreeSet<IpAddr> = assigned.values().copied().collect();
        // Addresses Gateways ask for themselves are not handed out either.
        for g in &res.gateways {
            used.extend(
                g.spec
                    .addresses
                    .iter()
                    .filter_map(|a| a.value.parse::<IpAddr>().ok()),
            );
        }
        let mut warnings = Vec::new();
        let mut out = Assignments::new();
        for i in wants {
            let k = key(&res.gateways[i]);
            let current = assigned.get(&k).copied();
            let published = reported
                .get(&k)
                .into_iter()
                .flatten()
                .copied()
                .find(|ip| self.contains(*ip) && (current == Some(*ip) || !used.contains(ip)));
            let ip = match (published, current) {
                (Some(ip), _) => {
                    if let Some(old) = current.filter(|c| *c != ip) {
                        used.remove(&old);
                    }
                    used.insert(ip);
                    assigned.insert(k.clone(), ip);
                    Some(ip)
                }
                (None, Some(ip)) => Some(ip),
                (None, None) => {
                    // From the cursor to the end of the range, then from its start.
                    let free = (*cursor..=self.last)
                        .chain(self.first..*cursor)
                        .find(|&n| !used.contains(&self.addr(n)));
                    free.map(|n| {
                        *cursor = if n == self.last { self.first } else { n + 1 };
                        let ip = self.addr(n);
                        used.insert(ip);
                        assigned.insert(k.clone(), ip);
                        ip
                    })
                }
            };
            match ip {
                Some(ip) => {
                    out.insert(k, ip);
                }
                None => warnings.push(format!(
                    "Gateway {}/{}: --gateway-address-pool is used up, so it binds the default address; give a larger range",
                    k.0, k.1
                )),
            }
        }
        (out, warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: sluice}\nspec: {controllerName: sluice.dev/gateway-controller}\n";

    fn resources(gateways: &[(&str, &str)]) -> Resources {
        let mut yaml = String::from(CLASS);
        for (name, class) in gateways {
            yaml += &format!(
                "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  gatewayClassName: {class}\n  listeners: [{{name: http, port: 80, protocol: HTTP}}]\n"
            );
        }
        sluice_resources::load_str("test.yaml", &yaml)
            .expect("load")
            .resources
    }

    /// Each Gateway's addresses as the translator binds them, given the pool's
    /// answer (a Gateway of another class binds nothing of ours: empty).
    fn addresses(res: &Resources, assigned: Assignments) -> Vec<(String, Vec<String>)> {
        let inputs = sluice_translate::Inputs {
            assigned,
            ..Default::default()
        };
        let t = sluice_translate::translate(res, &inputs);
        res.gateways
            .iter()
            .map(|g| {
                let bound = t.bindings.iter().find(|b| b.name == g.metadata.name);
                let a = bound
                    .into_iter()
                    .flat_map(|b| &b.addresses)
                    .filter(|a| !a.is_unspecified())
                    .map(|a| a.to_string())
                    .collect();
                (g.metadata.name.clone(), a)
            })
            .collect()
    }

    #[test]
    fn each_gateway_keeps_its_own_address_and_freed_ones_return() {
        let pool = AddressPool::parse("198.18.2.0/30").expect("pool");
        let res = resources(&[("a", "sluice"), ("b", "sluice"), ("other", "foreign")]);
        let (assigned, warnings) = pool.assign(&res, &Reported::new());
        assert!(warnings.is_empty());
        let got = addresses(&res, assigned);
        assert_eq!(got[0], ("a".into(), vec!["198.18.2.1".into()]));
        assert_eq!(got[1], ("b".into(), vec!["198.18.2.2".into()]));
        assert!(got[2].1.is_empty(), "another controller's Gateway: {got:?}");

        // A Gateway sorted before both does not move them; the pool (2 hosts) is used up.
        let res = resources(&[("0a", "sluice"), ("a", "sluice"), ("b", "sluice")]);
        let (assigned, warnings) = pool.assign(&res, &Reported::new());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("default/0a"), "{warnings:?}");
        let got = addresses(&res, assigned);
        assert_eq!(got[1].1, vec!["198.18.2.1".to_string()]);
        assert_eq!(got[2].1, vec!["198.18.2.2".to_string()]);

        // `a` deleted: its address goes to the next Gateway that needs one (the only
        // free one here).
        let res = resources(&[("0a", "sluice"), ("b", "sluice")]);
        let (assigned, warnings) = pool.assign(&res, &Reported::new());
        assert!(warnings.is_empty());
        let got = addresses(&res, assigned);
        assert_eq!(got[0].1, vec!["198.18.2.1".to_string()]);
        assert_eq!(got[1].1, vec!["198.18.2.2".to_string()]);
    }

    #[test]
    fn an_address_entry_without_a_value_is_filled_in() {
        let pool = AddressPool::parse("198.18.2.0/24").expect("pool");
        let yaml = format!(
            "{CLASS}---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: g, namespace: default}}
spec:
  gatewayClassName: sluice
  addresses: [{{type: IPAddress}}]
  listeners: [{{name: http, port: 80, protocol: HTTP}}]
"
        );
        let res = sluice_resources::load_str("test.yaml", &yaml)
            .expect("load")
            .resources;
        let (assigned, warnings) = pool.assign(&res, &Reported::new());
        assert!(warnings.is_empty());
        assert_eq!(
            addresses(&res, assigned)[0].1,
            vec!["198.18.2.1".to_string()]
        );
    }

    #[test]
    fn addresses_reported_in_status_are_kept_across_restarts() {
        // A new process (empty memory) that finds `b` reporting .5 keeps it there;
        // `a` reports an address outside the range, which is ignored.
        let pool = AddressPool::parse("198.18.2.0/24").expect("pool");
        let reported = super::reported(&[
            serde_json::json!({"metadata": {"namespace": "default", "name": "b"},
                "status": {"addresses": [{"type": "IPAddress", "value": "198.18.2.5"}]}}),
            serde_json::json!({"metadata": {"namespace": "default", "name": "a"},
                "status": {"addresses": [{"type": "IPAddress", "value": "10.0.0.1"}]}}),
        ]);
        let res = resources(&[("a", "sluice"), ("b", "sluice")]);
        let (assigned, warnings) = pool.assign(&res, &reported);
        assert!(warnings.is_empty());
        let got = addresses(&res, assigned);
        assert_eq!(got[0].1, vec!["198.18.2.1".to_string()]);
        assert_eq!(got[1].1, vec!["198.18.2.5".to_string()]);
    }

    #[test]
    fn a_freed_address_is_reused_last() {
        let pool = AddressPool::parse("198.18.2.0/29").expect("pool"); // .1 to .6
        let res = resources(&[("a", "sluice"), ("b", "sluice")]);
        pool.assign(&res, &Reported::new());
        // `a` (.1) goes, `c` comes: it gets .3, not .1.
        let res = resources(&[("b", "sluice"), ("c", "sluice")]);
        let (assigned, _) = pool.assign(&res, &Reported::new());
        let got = addresses(&res, assigned);
        assert_eq!(got[0].1, vec!["198.18.2.2".to_string()]);
        assert_eq!(got[1].1, vec!["198.18.2.3".to_string()]);
    }

    #[test]
    fn bad_ranges_say_how_to_write_one() {
        for bad in ["198.18.2.0", "198.18.2.0/33", "nope/24"] {
            let e = AddressPool::parse(bad).err().expect("refused");
            assert!(e.contains("CIDR form"), "{e}");
        }
        let v6 = AddressPool::parse("fd00::/127").expect("v6");
        assert_eq!(v6.addr(v6.first).to_string(), "fd00::");
        assert_eq!(v6.addr(v6.last).to_string(), "fd00::1");
    }
}
