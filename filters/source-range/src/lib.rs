//! Lets requests in or keeps them out by the address they come from, as
//! ingress-nginx's `allowlist-source-range` and `denylist-source-range`, Traefik's
//! `ipAllowList` and Envoy's RBAC on the source IP do:
//!
//! ```yaml
//! config:
//!   allow: ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]  # only these, when given
//!   deny: ["10.9.0.0/16"]     # never these: checked first
//!   trustedHops: 0            # default; see below
//!   status: 403               # default: the answer to a request kept out
//! ```
//!
//! `allow` and `deny` hold IPv4 and IPv6 addresses and CIDR ranges (bits past the
//! prefix are ignored, as nginx ignores them); at least one of the two lists must be
//! given. A request is kept out when its address is in `deny`, or when `allow` is given
//! and its address is not in it. An IPv4 client on a dual-stack socket is matched as
//! IPv4.
//!
//! **The address.** With `trustedHops: 0` it is the connection's peer (filter API 0.2
//! `connection.client`). Behind load balancers or proxies that append the address they
//! got the request from to `x-forwarded-for`, set `trustedHops` to how many there
//! are: the address is then the `trustedHops`-th entry of `x-forwarded-for` counted from
//! its right end (the one your outermost proxy appended), as Envoy's
//! `xff_num_trusted_hops` picks it. Entries to its left are what the client sent and
//! are never trusted. A request whose header has fewer entries, or an entry that is not
//! an address there, has no trustworthy address: it is kept out (unless only `deny` is
//! given, when there is nothing to match it against and it goes on).
//!
//! Each request kept out counts in `sluice_filter_source_range_denied_total`.

use std::net::IpAddr;

use serde::Deserialize;
use sluice_sdk::{Action, ConfigErrors, Filter, Request, config_error, connection, metrics};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    #[serde(default)]
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    trusted_hops: u32,
    #[serde(default = "default_status")]
    status: u16,
}

fn default_status() -> u16 {
    403
}

/// A range of addresses: the network's bits, and how many lead.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Range {
    V4(u32, u32),
    V6(u128, u32),
}

impl Range {
    fn parse(s: &str) -> Result<Range, String> {
        let (ip, bits) = match s.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (s, None),
        };
        let ip: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or a CIDR range"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(match ip {
            IpAddr::V4(v4) => Range::V4(u32::from(v4) & mask32(bits), bits),
            IpAddr::V6(v6) => Range::V6(u128::from(v6) & mask128(bits), bits),
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip.to_canonical()) {
            (Range::V4(net, bits), IpAddr::V4(a)) => u32::from(a) & mask32(bits) == net,
            (Range::V6(net, bits), IpAddr::V6(a)) => u128::from(a) & mask128(bits) == net,
            _ => false,
        }
    }
}

fn mask32(bits: u32) -> u32 {
    u32::MAX.checked_shl(32 - bits).unwrap_or(0)
}

fn mask128(bits: u32) -> u128 {
    u128::MAX.checked_shl(128 - bits).unwrap_or(0)
}

struct SourceRange {
    allow: Option<Vec<Range>>,
    deny: Vec<Range>,
    trusted_hops: usize,
    status: u16,
}

fn ranges(field: &str, list: &[String], errors: &mut ConfigErrors) -> Vec<Range> {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| match Range::parse(s) {
            Ok(r) => Some(r),
            Err(e) => {
                errors.push(config_error(format!(".{field}[{i}]"), e));
                None
            }
        })
        .collect()
}

/// One `x-forwarded-for` entry: an address, perhaps with a port (`192.0.2.1:80`,
/// `[2001:db8::1]:80`).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    e.parse::<IpAddr>()
        .ok()
        .or_else(|| e.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

impl SourceRange {
    /// The address to judge the request by, if there is one to trust.
    fn address(&self, req: &Request) -> Option<IpAddr> {
        if self.trusted_hops == 0 {
            return connection::client().map(|a| a.ip());
        }
        let values = req.get_header_all("x-forwarded-for");
        let entries: Vec<&str> = values.iter().flat_map(|v| v.split(',')).collect();
        let i = entries.len().checked_sub(self.trusted_hops)?;
        forwarded_address(entries[i])
    }

    fn allowed(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else {
            return self.allow.is_none();
        };
        if self.deny.iter().any(|r| r.contains(ip)) {
            return false;
        }
        self.allow
            .as_ref()
            .is_none_or(|a| a.iter().any(|r| r.contains(ip)))
    }
}

impl Filter for SourceRange {
    type Config = Config;

    fn new(c: Config) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let allow = c.allow.as_ref().map(|a| ranges("allow", a, &mut errors));
        let deny = ranges("deny", &c.deny, &mut errors);
        if c.allow.is_none() && c.deny.is_empty() {
            errors.push(config_error(
                ".allow",
                "give allow (the only addresses let in) or deny (addresses kept out), or both",
            ));
        }
        if !(100..=599).contains(&c.status) {
            errors.push(config_error(
                ".status",
                "must be an HTTP status, 100 to 599",
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(SourceRange {
            allow,
            deny,
            trusted_hops: c.trusted_hops as usize,
            status: c.status,
        })
    }

    fn on_request(&self, req: &Request) -> Action {
        if self.allowed(self.address(req)) {
            return Action::Continue;
        }
        metrics::counter_add("source_range_denied", 1);
        Action::Respond {
            status: self.status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: b"forbidden: your address may not use this route\n".to_vec(),
        }
    }
}

sluice_sdk::export!(SourceRange);
