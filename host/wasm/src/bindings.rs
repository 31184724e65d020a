//! The one place `bindgen!` runs: one module per `sluice:filter` version, with the WIT
//! resources mapped to the host types that back them.
//!
//! 0.2 imports the 0.1 interfaces unchanged (`sluice:filter/log@0.1.0`, ...), so `with`
//! maps them to the 0.1 bindings: the host implements each interface once, and only
//! 0.2's own interfaces (`context`) are new.

pub mod v0_1 {
    wasmtime::component::bindgen!({
        world: "sluice:filter/filter@0.1.0",
        path: "wit",
        // Host functions return `wasmtime::Result`, so a host-side failure (a resource
        // handle the guest should not have) traps the guest instead of panicking.
        // `kv` may wait on Redis (`spec.kv.redis`): async, as outbound calls are.
        imports: {
            "sluice:filter/kv.get": async | trappable,
            "sluice:filter/kv.set": async | trappable,
            "sluice:filter/kv.increment": async | trappable,
            "sluice:filter/kv.delete": async | trappable,
            default: trappable,
        },
        // Every guest call is async: a running guest yields to the executor at each
        // epoch tick, so a slow filter never holds a worker thread (see `Pool::call`).
        exports: { default: async },
        with: {
            "sluice:filter/types.request": crate::host::RequestCtx,
            "sluice:filter/types.response": crate::host::ResponseCtx,
        },
    });
}

pub mod v0_2 {
    wasmtime::component::bindgen!({
        world: "sluice:filter/filter@0.2.0",
        path: "wit",
        // An outbound call waits on the network: an async host function, so the guest
        // is suspended and its thread serves other tasks meanwhile.
        imports: {
            "sluice:filter/outbound.send": async | trappable,
            "sluice:filter/outbound.start": trappable,
            "sluice:filter/outbound.[method]call.write": async | trappable,
            "sluice:filter/outbound.[method]call.finish": async | trappable,
            "sluice:filter/outbound.[drop]call": trappable,
            // Digests are hashed off the guest's thread; `update` waits when too much
            // is queued, `finish` for what is (see `crate::digest`).
            "sluice:filter/digest.[method]hasher.update": async | trappable,
            "sluice:filter/digest.[method]hasher.finish": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: {
            "sluice:filter/types@0.1.0": crate::bindings::v0_1::sluice::filter0_1_0::types,
            "sluice:filter/log@0.1.0": crate::bindings::v0_1::sluice::filter0_1_0::log,
            "sluice:filter/metrics@0.1.0": crate::bindings::v0_1::sluice::filter0_1_0::metrics,
            "sluice:filter/kv@0.1.0": crate::bindings::v0_1::sluice::filter0_1_0::kv,
            "sluice:filter/clock@0.1.0": crate::bindings::v0_1::sluice::filter0_1_0::clock,
            "sluice:filter/body.trailers": crate::host::TrailersCtx,
            "sluice:filter/digest.hasher": crate::host::HasherCtx,
            "sluice:filter/outbound.call": crate::host::CallCtx,
        },
    });
}
