//! Status types: what `translate()` says about each object, in the Gateway API's shapes.
//!
//! Kinds, condition types and reasons are enums, spelled here once as the Gateway API
//! spells them; nothing else in Sluice writes them as strings. [`merge_transition_times`]
//! is the one place that decides a condition's `lastTransitionTime`.

use std::fmt;

use serde::{Deserialize, Serialize};
use sluice_resources::{ParentReference, RouteGroupKind};

/// An enum whose variants serialize as their own names (the API's spellings).
macro_rules! spelled {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $v:ident),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$v),+];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$v => stringify!($v)),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// Compares with the API's spelling (tests, and objects read back as JSON).
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownName(s.to_string()))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A name that is not one of an enum's spellings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName(pub String);

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown name {:?}", self.0)
    }
}

impl std::error::Error for UnknownName {}

spelled! {
    /// The kinds Sluice reports a status for (and reads from the API server).
    #[allow(clippy::upper_case_acronyms)]
    pub enum Kind {
        GatewayClass,
        Gateway,
        ListenerSet,
        HTTPRoute,
        GRPCRoute,
        TLSRoute,
        TCPRoute,
        UDPRoute,
        BackendTLSPolicy,
        WasmFilter,
        Ingress,
    }
}

impl Kind {
    /// Whether the kind's status is a list of `parents` (the route kinds).
    pub fn is_route(self) -> bool {
        matches!(
            self,
            Kind::HTTPRoute | Kind::GRPCRoute | Kind::TLSRoute | Kind::TCPRoute | Kind::UDPRoute
        )
    }
}

spelled! {
    /// A condition's `type`.
    pub enum ConditionType {
        /// GatewayClass, Gateway, listener, route parent, policy ancestor: the object
        /// (or the part) is valid and taken up.
        Accepted,
        /// Gateway and listener: the data plane serves it.
        Programmed,
        /// Listener, route parent, Gateway (its TLS client certificate): every reference
        /// resolves.
        ResolvedRefs,
        /// Listener: another listener on the same port conflicts with it.
        Conflicted,
        /// GatewayClass: the installed Gateway API CRDs are a version Sluice supports.
        SupportedVersion,
        /// Gateway: a frontend TLS validation lets clients without a valid certificate in
        /// (`AllowInsecureFallback`).
        InsecureFrontendValidationMode,
        /// WasmFilter: the component loaded and its `configure` accepted the config.
        Ready,
    }
}

spelled! {
    /// A condition's `reason`, with the Gateway API's spellings where the API names one.
    pub enum Reason {
        /// Accepted=True: the object or the part is valid.
        Accepted,
        /// Programmed=True: the data plane serves the Gateway or listener.
        Programmed,
        /// ResolvedRefs=True: every reference resolves.
        ResolvedRefs,
        /// SupportedVersion=True: the CRDs are a supported version.
        SupportedVersion,
        /// Conflicted=False: no other listener on the port conflicts.
        NoConflicts,
        /// Conflicted=True on a listener whose hostname another listener on the port
        /// already has; Accepted=False on a BackendTLSPolicy an older one shadows.
        Conflicted,
        /// Conflicted=True: a listener on the same port speaks another protocol.
        ProtocolConflict,
        /// Conflicted=True: a listener on the same port and protocol has the same
        /// hostname.
        HostnameConflict,
        /// Accepted=False: a field holds a value Sluice does not implement (a filter
        /// type, a regular expression that does not compile, ...).
        UnsupportedValue,
        /// Gateway Accepted=False: one of its listeners is not valid; ListenerSet
        /// Accepted: some (True) or all (False) of its listeners are not valid.
        ListenersNotValid,
        /// ListenerSet Accepted=False: the Gateway's `allowedListeners` keeps it out.
        NotAllowed,
        /// ListenerSet Accepted=False: its Gateway is not accepted.
        ParentNotAccepted,
        /// Gateway or GatewayClass Accepted=False: the spec is not valid.
        Invalid,
        /// Accepted=False: `spec.infrastructure.parametersRef` or a GatewayClass's
        /// `parametersRef` does not resolve.
        InvalidParameters,
        /// Gateway Accepted=False: an address type Sluice cannot bind.
        UnsupportedAddress,
        /// Gateway Programmed=False: the host does not own an address in
        /// `spec.addresses`.
        AddressNotUsable,
        /// Listener Accepted=False: its port is held by another process.
        PortUnavailable,
        /// Listener Accepted=False: a protocol Sluice does not serve.
        UnsupportedProtocol,
        /// Listener ResolvedRefs=False: `allowedRoutes.kinds` names a kind the
        /// listener cannot carry.
        InvalidRouteKinds,
        /// ResolvedRefs=False: a certificate Secret is missing or not a valid
        /// `kubernetes.io/tls` pair.
        InvalidCertificateRef,
        /// ResolvedRefs=False: a CA certificate reference does not resolve or holds no
        /// valid certificate.
        InvalidCACertificateRef,
        /// ResolvedRefs=False: a CA certificate reference names a kind other than
        /// ConfigMap or Secret.
        InvalidCACertificateKind,
        /// Listener Accepted=False: none of its frontend CA certificates is usable.
        NoValidCACertificate,
        /// Gateway ResolvedRefs=False: `spec.tls.backend.clientCertificateRef` does not
        /// resolve to a valid pair.
        InvalidClientCertificateRef,
        /// ResolvedRefs=False: a reference names a kind Sluice does not know.
        InvalidKind,
        /// ResolvedRefs=False: a cross-namespace reference that no ReferenceGrant allows.
        RefNotPermitted,
        /// Route ResolvedRefs=False: a backend Service does not exist.
        BackendNotFound,
        /// Route Accepted=False: the parent Gateway or listener does not exist.
        NoMatchingParent,
        /// Route Accepted=False: no listener hostname intersects the route's.
        NoMatchingListenerHostname,
        /// Route Accepted=False: the listeners' `allowedRoutes` keep the route out.
        NotAllowedByListeners,
        /// Gateway InsecureFrontendValidationMode=True: `AllowInsecureFallback` is set.
        ConfigurationChanged,
        /// Gateway Programmed=False or WasmFilter Ready=False: waiting to be taken up.
        Pending,
        /// Route ResolvedRefs=False: an ExtensionRef names a WasmFilter that does not
        /// exist.
        FilterNotFound,
        /// Route ResolvedRefs=False: an ExtensionRef names a WasmFilter that is not
        /// Ready.
        FilterNotReady,
        /// WasmFilter Ready=True: the component is loaded and configured.
        Loaded,
        /// WasmFilter Ready=False: the first pull from the registry is in flight.
        Pulling,
        /// WasmFilter Ready=False: `sluice check` does not pull OCI images.
        NotPulled,
        /// WasmFilter Ready=False: `spec.source` sets none of path, url and oci.
        UnsupportedSource,
        /// WasmFilter Ready=False: `spec.source.path` cannot be read.
        SourceNotFound,
        /// WasmFilter Ready=False: the URL or registry cannot be reached (retried).
        SourceUnavailable,
        /// WasmFilter Ready=False: the bytes' digest is not the pinned one.
        DigestMismatch,
        /// WasmFilter Ready=False: `spec.source.oci.image` is not a valid reference.
        InvalidReference,
        /// WasmFilter Ready=False: the registry has no such image or tag.
        ImageNotFound,
        /// WasmFilter Ready=False: the registry refused the credentials.
        Unauthorized,
        /// WasmFilter Ready=False: the pull Secret is missing or not a
        /// `kubernetes.io/dockerconfigjson` Secret.
        InvalidPullSecret,
        /// WasmFilter Ready=False: the image holds no Wasm component in a layout
        /// Sluice reads.
        InvalidImage,
        /// WasmFilter Ready=False: the bytes are not a valid component of the filter
        /// world.
        InvalidComponent,
        /// WasmFilter Ready=False: the filter's `configure` refused `spec.config`.
        InvalidConfig,
        /// WasmFilter Ready=False: the filter trapped while starting.
        Trapped,
        /// WasmFilter Ready=False: `spec.kv.redis.passwordSecretRef` names a Secret or
        /// key that does not exist.
        InvalidKvSecret,
        /// WasmFilter Ready=False: the filter trust policy asks for a signature, and
        /// the registry holds none for the image's digest.
        Unsigned,
        /// WasmFilter Ready=False: the image has signatures, but none by a key the
        /// filter trust policy names for it, or none for its digest.
        SignatureInvalid,
        /// WasmFilter Ready=False: no policy of the filter trust policy names the
        /// image, and the policy denies unmatched images.
        UntrustedImage,
        /// WasmFilter Ready=False: a GatewayClass's filter trust policy is invalid, so
        /// no OCI filter can be verified.
        InvalidTrustPolicy,
    }
}

/// Why a condition is False: its reason and a message that says what to fix.
pub(crate) type Problem = (Reason, String);

spelled! {
    /// A condition's `status`.
    pub enum ConditionStatus {
        True,
        False,
        Unknown,
    }
}

impl From<bool> for ConditionStatus {
    fn from(ok: bool) -> Self {
        if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// The API's limit on a condition message (32768 bytes).
const MAX_MESSAGE: usize = 32768;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: ConditionType,
    pub status: ConditionStatus,
    pub reason: Reason,
    pub message: String,
    pub observed_generation: i64,
    /// Set by [`merge_transition_times`] when the status is written to the API server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

impl Condition {
    pub fn new(
        type_: ConditionType,
        ok: bool,
        reason: Reason,
        message: impl Into<String>,
        generation: i64,
    ) -> Self {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Condition {
            type_,
            status: ok.into(),
            reason,
            message,
            observed_generation: generation,
            last_transition_time: None,
        }
    }
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// The statuses in force, with those of the WasmFilters in `pending` taken from `new`:
/// the rest of the new config is not serving yet (it waits for those filters' first
/// pull), so its status is not shown yet.
pub fn with_pending(
    current: &[ObjectStatus],
    new: Vec<ObjectStatus>,
    pending: &[sluice_ir::FilterKey],
) -> Vec<ObjectStatus> {
    let is_pending = |s: &ObjectStatus| {
        s.kind == Kind::WasmFilter
            && pending
                .iter()
                .any(|k| k.namespace == s.metadata.namespace && k.name == s.metadata.name)
    };
    let mut out: Vec<ObjectStatus> = current.iter().filter(|s| !is_pending(s)).cloned().collect();
    out.extend(new.into_iter().filter(is_pending));
    out
}

/// A condition as the API server holds it: only what [`merge_transition_times`] needs,
/// read leniently (another controller may use types and reasons Sluice does not know).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedCondition {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub last_transition_time: Option<String>,
}

/// Gives each condition in `desired` its `lastTransitionTime`: the one `current` holds
/// for the same type when the status did not change, else `now` (as the Gateway API's
/// and Kubernetes' condition conventions require).
pub fn merge_transition_times(desired: &mut [Condition], current: &[ObservedCondition], now: &str) {
    for c in desired {
        let kept = current
            .iter()
            .find(|o| c.type_ == o.type_.as_str() && c.status == o.status.as_str())
            .and_then(|o| o.last_transition_time.clone());
        c.last_transition_time = Some(kept.unwrap_or_else(|| now.to_string()));
    }
}

/// One object's computed status, in the shape of a Kubernetes object (for `/status`
/// and for the status subresource).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    pub api_version: String,
    pub kind: Kind,
    pub metadata: StatusMeta,
    pub status: Status,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusMeta {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    pub generation: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Status {
    Conditions(ConditionsStatus),
    Gateway(GatewayStatus),
    Route(RouteStatus),
    WasmFilter(WasmFilterStatus),
    Policy(PolicyStatus),
    Ingress(IngressStatus),
}

/// An Ingress's status: where it is served (`status.loadBalancer`, all that the API
/// server keeps) and, in `/status` and `sluice check` only, what of it is not served
/// as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressStatus {
    pub load_balancer: LoadBalancerStatus,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<crate::ingress::Note>,
}

impl IngressStatus {
    /// Whether part of the Ingress is not served.
    pub fn has_errors(&self) -> bool {
        self.notes
            .iter()
            .any(|n| n.level == crate::ingress::Level::Error)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LoadBalancerStatus {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<LoadBalancerIngress>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoadBalancerIngress {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// A policy's status, per Gateway it takes effect under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    pub ancestors: Vec<PolicyAncestorStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorStatus {
    pub ancestor_ref: ParentReference,
    pub controller_name: String,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmFilterStatus {
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// For OCI sources: the image serving, pinned by manifest digest
    /// (`registry/repository@sha256:...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The key of the filter trust policy that signed the image, when the policy asks
    /// for a signature: `key (algorithm fingerprint) of policy class/name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub config_errors: Vec<ConfigErrorStatus>,
    /// Each outbound grant and whether it resolves.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<OutboundStatus>,
}

/// One of a WasmFilter's outbound grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutboundStatus {
    pub name: String,
    /// `namespace/service:port`.
    pub backend: String,
    /// The reference resolves (kind, ReferenceGrant, Service, port).
    pub resolved: bool,
    /// Why it cannot be called, if it cannot (a reference problem, or no ready
    /// endpoints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigErrorStatus {
    pub path: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConditionsStatus {
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<StatusAddress>,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
    /// How many ListenerSets are accepted (Gateways that set `allowedListeners`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attached_listener_sets: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusAddress {
    #[serde(rename = "type")]
    pub type_: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub attached_routes: u32,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteStatus {
    pub parents: Vec<RouteParentStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentReference,
    pub controller_name: String,
    pub conditions: Vec<Condition>,
}
