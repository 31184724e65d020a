//! ReferenceGrants: whether an object may refer to one in another namespace. Read by
//! every step that resolves references (listener certificates, backends, CA bundles).

use sluice_resources::{GATEWAY_GROUP, Resources};

/// Does a ReferenceGrant in `to_ns` let a `from_kind` (of the Gateway API group) in
/// `from_ns` refer to this object?
pub(crate) fn ref_permitted(
    res: &Resources,
    from_kind: &str,
    from_ns: &str,
    to_group: &str,
    to_kind: &str,
    to_ns: &str,
    to_name: &str,
) -> bool {
    ref_permitted_from(
        res,
        (GATEWAY_GROUP, from_kind),
        from_ns,
        to_group,
        to_kind,
        to_ns,
        to_name,
    )
}

/// As [`ref_permitted`], for a referrer of any group (a WasmFilter is `sluice.dev`).
pub(crate) fn ref_permitted_from(
    res: &Resources,
    (from_group, from_kind): (&str, &str),
    from_ns: &str,
    to_group: &str,
    to_kind: &str,
    to_ns: &str,
    to_name: &str,
) -> bool {
    from_ns == to_ns
        || res.reference_grants.iter().any(|g| {
            g.metadata.namespace.as_deref() == Some(to_ns)
                && g.spec
                    .from
                    .iter()
                    .any(|f| f.group == from_group && f.kind == from_kind && f.namespace == from_ns)
                && g.spec.to.iter().any(|t| {
                    t.group == to_group
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n == to_name)
                })
        })
}
