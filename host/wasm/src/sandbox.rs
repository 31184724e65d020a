//! What a filter gets of WASI: almost nothing.
//!
//! A filter built with Rust's std for `wasm32-wasip2` imports WASI interfaces even when
//! it never uses them. Sluice links its own small answers for the few calls std makes
//! on its own or that a filter may reasonably try, and a trap for everything else:
//!
//! - environment and arguments: empty; no working directory;
//! - wall clock: frozen at the Unix epoch; monotonic clock: frozen at 0 (use the
//!   `clock` import of the filter world for real time);
//! - random numbers: real (std seeds its hash maps from them);
//! - file system: no preopened directories, so every path is "not found";
//! - sockets and name lookups: `access-denied`;
//! - anything else, including stdout and stderr: a trap. (The SDK sends panic
//!   messages to the `log` import instead.)
//!
//! None of it blocks or touches the async runtime, so a filter can run on the
//! gateway's worker threads.

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, ResourceType, Val};
use wasmtime::{Engine, Result};

use crate::host::HostState;

type Shim = fn(&[Val], &mut [Val]) -> Result<()>;

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
        ("wasi:clocks/monotonic-clock", "now") => |_, r| set(r, Val::U64(0)),
        ("wasi:clocks/monotonic-clock", "resolution") => |_, r| set(r, Val::U64(1_000_000_000)),
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
                ComponentItem::ComponentFunc(_) => match shim(interface, export) {
                    Some(s) => {
                        inst.func_new(export, move |_, _, params, results| s(params, results))?
                    }
                    None => {
                        let what = format!("{name}#{export}");
                        inst.func_new(export, move |_, _, _, _| {
                            wasmtime::bail!(
                                "{what} is not available to filters: they run without WASI"
                            )
                        })?
                    }
                },
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
