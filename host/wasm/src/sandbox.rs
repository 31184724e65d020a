//! What a filter gets of WASI: almost nothing.
//!
//! A filter built with Rust's std for `wasm32-wasip2` imports WASI interfaces even when
//! it never uses them. Sluice links its own small answers for the few calls std makes
//! on its own or that a filter may reasonably try, and a trap for everything else:
//!
//! - environment and arguments: empty; no working directory;
//! - wall clock: frozen at the Unix epoch (API 0.2's `wall-clock` import has the time
//!   of day); monotonic clock: real, so `std::time::Instant` measures;
//! - random numbers: real (std seeds its hash maps from them);
//! - file system: no preopened directories, so every path is "not found";
//! - sockets and name lookups: `access-denied`;
//! - stdout and stderr: written to the filter's log (`info` and `warn`, one entry per
//!   write, under the same per-filter rate limit as the `log` import), so `println!`
//!   and `eprintln!` work;
//! - anything else: a trap whose message names the call and says what to use instead.
//!
//! None of it blocks or touches the async runtime, so a filter can run on the
//! gateway's worker threads.

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, Resource, ResourceType, Val};
use wasmtime::{AsContextMut, StoreContextMut};
use wasmtime::{Engine, Result};

use crate::host::HostState;

type Shim = fn(&[Val], &mut [Val]) -> Result<()>;

/// A shim for stdout and stderr: the store (for the log), the handles the call was
/// given, its parameters and its results.
type OutputShim = fn(StoreContextMut<'_, HostState>, &[u32], &[Val], &mut [Val]) -> Result<()>;

fn random_bytes(len: u64) -> Vec<Val> {
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    // The OS source cannot fail on Linux once the process runs; fall back to a
    // per-call seed rather than trap if it ever does.
    if getrandom::fill(&mut buf).is_err() {
        let seed = crate::host::monotonic_nanos();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed.rotate_left(i as u32 % 64) ^ i as u64) as u8;
        }
    }
    buf.into_iter().map(Val::U8).collect()
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

fn set(results: &mut [Val], v: Val) -> Result<()> {
    match results.first_mut() {
        Some(r) => {
            *r = v;
            Ok(())
        }
        None => wasmtime::bail!("shim called with no result slot"),
    }
}

fn denied() -> Val {
    Val::Result(Err(Some(Box::new(Val::Enum("access-denied".into())))))
}

fn shim(interface: &str, func: &str) -> Option<Shim> {
    Some(match (interface, func) {
        ("wasi:cli/environment", "get-environment" | "get-arguments") => {
            |_, r| set(r, Val::List(Vec::new()))
        }
        ("wasi:cli/environment", "initial-cwd") => |_, r| set(r, Val::Option(None)),
        ("wasi:clocks/wall-clock", "now") => |_, r| {
            set(
                r,
                Val::Record(vec![
                    ("seconds".into(), Val::U64(0)),
                    ("nanoseconds".into(), Val::U32(0)),
                ]),
            )
        },
        ("wasi:clocks/wall-clock", "resolution") => |_, r| {
            set(
                r,
                Val::Record(vec![
                    ("seconds".into(), Val::U64(1)),
                    ("nanoseconds".into(), Val::U32(0)),
                ]),
            )
        },
        ("wasi:clocks/monotonic-clock", "now") => {
            |_, r| set(r, Val::U64(crate::host::monotonic_nanos()))
        }
        ("wasi:clocks/monotonic-clock", "resolution") => |_, r| set(r, Val::U64(1)),
        ("wasi:random/random", "get-random-bytes")
        | ("wasi:random/insecure", "get-insecure-random-bytes") => |p, r| {
            let len = match p.first() {
                Some(Val::U64(n)) => *n,
                _ => 0,
            };
            set(r, Val::List(random_bytes(len)))
        },
        ("wasi:random/random", "get-random-u64")
        | ("wasi:random/insecure", "get-insecure-random-u64") => {
            |_, r| set(r, Val::U64(random_u64()))
        }
        ("wasi:random/insecure-seed", "insecure-seed") => |_, r| {
            set(
                r,
                Val::Tuple(vec![Val::U64(random_u64()), Val::U64(random_u64())]),
            )
        },
        ("wasi:filesystem/preopens", "get-directories") => |_, r| set(r, Val::List(Vec::new())),
        ("wasi:sockets/tcp-create-socket", "create-tcp-socket")
        | ("wasi:sockets/udp-create-socket", "create-udp-socket")
        | ("wasi:sockets/ip-name-lookup", "resolve-addresses") => |_, r| set(r, denied()),
        _ => return None,
    })
}

/// The resource handle `get-stdout` and `get-stderr` return: which stream it is.
const STDOUT: u32 = 1;
const STDERR: u32 = 2;

/// stdout and stderr, which the filter's log receives. `None` for other functions.
fn output(interface: &str, func: &str) -> Option<OutputShim> {
    Some(match (interface, func) {
        ("wasi:cli/stdout", "get-stdout") => |mut store, _, _, r| {
            let stream = Resource::<()>::new_own(STDOUT).try_into_resource_any(&mut store)?;
            set(r, Val::Resource(stream))
        },
        ("wasi:cli/stderr", "get-stderr") => |mut store, _, _, r| {
            let stream = Resource::<()>::new_own(STDERR).try_into_resource_any(&mut store)?;
            set(r, Val::Resource(stream))
        },
        (
            "wasi:io/streams",
            "[method]output-stream.write" | "[method]output-stream.blocking-write-and-flush",
        ) => |mut store, reps, p, r| {
            let (Some(&rep), Some(Val::List(bytes))) = (reps.first(), p.get(1)) else {
                wasmtime::bail!("output-stream.write called with unexpected arguments");
            };
            let bytes: Vec<u8> = bytes
                .iter()
                .map(|b| match b {
                    Val::U8(b) => *b,
                    _ => b'?',
                })
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            let text = text.trim_end_matches(['\n', '\r']);
            if !text.is_empty() {
                let level = if rep == STDERR {
                    crate::bindings::v0_1::sluice::filter0_1_0::log::Level::Warn
                } else {
                    crate::bindings::v0_1::sluice::filter0_1_0::log::Level::Info
                };
                crate::bindings::v0_1::sluice::filter0_1_0::log::Host::write(
                    store.data_mut(),
                    level,
                    text.to_string(),
                )?;
            }
            set(r, Val::Result(Ok(None)))
        },
        // Waiting for stdout or stderr to take bytes: they always do, so the pollable
        // is always ready. (No other pollable can be made: subscribing to a clock or
        // an input stream traps.)
        ("wasi:io/streams", "[method]output-stream.subscribe") => |mut store, _, _, r| {
            let ready = Resource::<()>::new_own(0).try_into_resource_any(&mut store)?;
            set(r, Val::Resource(ready))
        },
        ("wasi:io/poll", "[method]pollable.ready") => |_, _, _, r| set(r, Val::Bool(true)),
        ("wasi:io/poll", "[method]pollable.block") => |_, _, _, _| Ok(()),
        ("wasi:io/poll", "poll") => |_, _, p, r| {
            let n = match p.first() {
                Some(Val::List(l)) => l.len(),
                _ => 0,
            };
            set(r, Val::List((0..n).map(|i| Val::U32(i as u32)).collect()))
        },
        ("wasi:io/streams", "[method]output-stream.check-write") => {
            |_, _, _, r| set(r, Val::Result(Ok(Some(Box::new(Val::U64(4096))))))
        }
        (
            "wasi:io/streams",
            "[method]output-stream.flush" | "[method]output-stream.blocking-flush",
        ) => |_, _, _, r| set(r, Val::Result(Ok(None))),
        _ => return None,
    })
}

/// What to use instead of a WASI call a filter cannot make, for the trap's message.
fn instead(interface: &str) -> &'static str {
    match interface {
        "wasi:filesystem/types" | "wasi:filesystem/preopens" => {
            "filters have no files: put what the filter needs in its WasmFilter spec.config"
        }
        "wasi:sockets/tcp" | "wasi:sockets/udp" | "wasi:sockets/network" => {
            "filters have no sockets: call a granted backend with sluice_sdk::outbound"
        }
        "wasi:io/poll" | "wasi:clocks/monotonic-clock" => {
            "filters cannot sleep or wait on WASI: wait on sluice_sdk::outbound calls"
        }
        "wasi:cli/stdin" => "filters have no stdin",
        _ => "use the sluice:filter imports (sluice_sdk) instead",
    }
}

/// Links this component's WASI imports into `linker`: the shims above where they
/// apply, a trap everywhere else. Only `wasi:` interfaces are touched; the filter
/// world's own imports are linked once, by the runtime.
pub(crate) fn link(
    linker: &mut Linker<HostState>,
    component: &Component,
    engine: &Engine,
) -> Result<()> {
    let ty = component.component_type();
    for (name, item) in ty.imports(engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        let interface = name.split('@').next().unwrap_or(name);
        if !interface.starts_with("wasi:") {
            continue;
        }
        let mut inst = linker.instance(name)?;
        for (export, item) in instance.exports(engine) {
            match item.ty {
                ComponentItem::ComponentFunc(_) => {
                    if let Some(o) = output(interface, export) {
                        inst.func_new(export, move |mut store, _, params, results| {
                            // A borrowed handle given to a dynamic host function must
                            // be taken by it before it returns: taken here, once.
                            let mut reps = Vec::new();
                            let flat = params.iter().flat_map(|p| match p {
                                Val::List(items) => items.iter().collect::<Vec<_>>(),
                                p => vec![p],
                            });
                            for p in flat {
                                if let Val::Resource(r) = p {
                                    reps.push(r.try_into_resource::<()>(&mut store)?.rep());
                                }
                            }
                            o(store.as_context_mut(), &reps, params, results)
                        })?;
                        continue;
                    }
                    match shim(interface, export) {
                        Some(s) => {
                            inst.func_new(export, move |_, _, params, results| s(params, results))?
                        }
                        None => {
                            let what = format!("{name}#{export}");
                            let fix = instead(interface);
                            inst.func_new(export, move |_, _, _, _| {
                                wasmtime::bail!(
                                    "{what} is not available to filters, which run without WASI: {fix}"
                                )
                            })?
                        }
                    }
                }
                // Resources of denied interfaces (streams, descriptors, sockets) can
                // never be created, so a placeholder type is enough.
                ComponentItem::Resource(_) => {
                    inst.resource(export, ResourceType::host::<()>(), |_, _| Ok(()))?
                }
                _ => {}
            }
        }
    }
    Ok(())
}
