//! The one place `bindgen!` runs: the `sluice:filter/filter` world, with the WIT
//! resources mapped to the host types that back them.

wasmtime::component::bindgen!({
    world: "filter",
    path: "../../wit",
    // Host functions return `wasmtime::Result`, so a host-side failure (a resource
    // handle the guest should not have) traps the guest instead of panicking.
    imports: { default: trappable },
    // Every guest call is async: a running guest yields to the executor at each epoch
    // tick, so a slow filter never holds a worker thread (see `Pool::call`).
    exports: { default: async },
    with: {
        "sluice:filter/types.request": crate::host::RequestCtx,
        "sluice:filter/types.response": crate::host::ResponseCtx,
    },
});
