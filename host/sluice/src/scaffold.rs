//! `sluice filter new NAME`: a ready filter crate, outside any workspace; with
//! `--lang python` or `--lang js`, a ready Python or JavaScript filter project (see
//! [`new_python`] and [`new_js`]).
//!
//! What it writes builds and tests as it is: a cdylib (a filter is a component), a
//! release profile for small components, the dev-profile setting that makes harness
//! tests fast, one filter, one harness test and a README that goes on to attaching and
//! publishing it. The SDK and the harness are named by version, and by `path` as well
//! when this binary runs from a checkout of Sluice (or `--sdk` names one), so the crate
//! builds today and after they are published.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The version of the SDK and the harness this Sluice speaks.
const SDK_VERSION: &str = "0.1";

/// The language `sluice filter new` writes a filter in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// The folder a new filter goes in: `dir`, else `./name`; it must not hold anything.
fn target_dir(name: &str, dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty: choose another NAME or --dir",
            dir.display()
        );
    }
    Ok(dir)
}

/// Writes `files` under `dir`.
fn write_files(dir: &Path, files: &[(&str, String)]) -> anyhow::Result<()> {
    for (path, text) in files {
        let to = dir.join(path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&to, text).with_context(|| format!("writing {}", to.display()))?;
    }
    Ok(())
}

/// Writes the crate `name` into `dir` (default: `./name`); returns the directory.
pub fn new(name: &str, dir: Option<PathBuf>, sdk: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let dir = target_dir(name, dir)?;
    let sdk = match sdk {
        Some(s) => Some(
            s.canonicalize()
                .with_context(|| format!("--sdk {}: no such directory", s.display()))?,
        ),
        None => checkout_sdk(),
    };
    if let Some(s) = &sdk
        && !s.join("Cargo.toml").is_file()
    {
        bail!(
            "--sdk {}: not the SDK (no Cargo.toml): give the sdk/ folder of a Sluice checkout",
            s.display()
        );
    }
    let dep = |sub: &str| match &sdk {
        Some(s) => {
            let p = if sub.is_empty() {
                s.clone()
            } else {
                s.join(sub)
            };
            format!(
                "{{ version = \"{SDK_VERSION}\", path = \"{}\" }}",
                p.display().to_string().replace('\\', "/")
            )
        }
        None => format!("\"{SDK_VERSION}\""),
    };
    let lib = name.replace('-', "_");
    let ty = type_name(name);
    let files = [
        ("Cargo.toml", cargo_toml(name, &dep(""), &dep("harness"))),
        ("src/lib.rs", LIB_RS.replace("{Type}", &ty)),
        ("tests/filter.rs", TEST_RS.to_string()),
        (
            "README.md",
            README_MD.replace("{name}", name).replace("{lib}", &lib),
        ),
        (".gitignore", "/target\n".to_string()),
    ];
    write_files(&dir, &files)?;
    Ok(dir)
}

/// What a Python or JavaScript project of filter `name` has beside its code: the WIT
/// (its componentizer reads it), a config and a `sluice filter test` case.
fn wit_and_case(name: &str) -> [(&'static str, String); 4] {
    [
        (
            "wit/filter.wit",
            include_str!("../../../wit/filter.wit").to_string(),
        ),
        (
            "wit/deps/sluice-filter-0.1.0/filter.wit",
            include_str!("../../../wit/deps/sluice-filter-0.1.0/filter.wit").to_string(),
        ),
        ("config.yaml", "greeting: hi\n".to_string()),
        ("request.yaml", REQUEST_YAML.replace("{name}", name)),
    ]
}

/// Writes the Python filter `name` into `dir` (default: `./name`); returns the
/// directory. It needs nothing from a checkout: the WIT and the wrapper
/// (`sdk/python/sluice_filter`) are written beside `app.py`, so componentize-py (from
/// PyPI) is the only tool to install.
pub fn new_python(name: &str, dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let dir = target_dir(name, dir)?;
    let ty = type_name(name);
    let files = [
        ("app.py", APP_PY.replace("{Type}", &ty)),
        (
            "sluice_filter/__init__.py",
            include_str!("../../../sdk/python/sluice_filter/__init__.py").to_string(),
        ),
        (
            "README.md",
            (README_PY.to_string() + ATTACH_MD).replace("{name}", name),
        ),
        (".gitignore", "/*.wasm\n__pycache__/\n/.venv/\n".to_string()),
    ];
    write_files(&dir, &files)?;
    write_files(&dir, &wit_and_case(name))?;
    Ok(dir)
}

/// A crate name cargo takes: ASCII letters, digits, `-` and `_`, starting with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64;
    if !ok {
        bail!(
            "{name:?} is not a crate name: use ASCII letters, digits, - and _, starting with a letter (e.g. api-key)"
        );
    }
    Ok(())
}

/// `api-key` -> `ApiKey`.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The SDK of the checkout this binary was built in, if it is still there.
fn checkout_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk");
    sdk.join("Cargo.toml")
        .is_file()
        .then(|| sdk.canonicalize().ok())
        .flatten()
}

fn cargo_toml(name: &str, sdk: &str, harness: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A filter is a WebAssembly component: `cargo build --release --target wasm32-wasip2`
# makes target/wasm32-wasip2/release/*.wasm. The gateway refuses a core module (a
# wasm32-wasip1 build) and a crate without this line builds no .wasm at all.
[lib]
crate-type = ["cdylib"]

[dependencies]
sluice-sdk = {sdk}
serde = {{ version = "1", features = ["derive"] }}

[dev-dependencies]
sluice-harness = {harness}
http = "1"
serde_json = "1"

# Small, fast components.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = "debuginfo"

# The harness runs the gateway's Wasm runtime inside `cargo test`: with its
# dependencies optimized a test run takes well under a second instead of several.
# Without their debug info, their first build is quicker and target/ much smaller.
[profile.dev.package."*"]
opt-level = 2
debug = false

# A workspace of its own, wherever the crate is.
[workspace]
"#
    )
}

const LIB_RS: &str = r#"//! A Sluice filter. It adds `x-hello: <greeting>` to every request and answers
//! `/hello` itself; change `on_request` (and add `on_response`) to do your own work.
//! The hooks, bodies, outbound calls and limits are in Sluice's docs/filters.md.

use serde::Deserialize;
use sluice_sdk::{Action, Filter, Request, config_error};

/// `spec.config` of the WasmFilter, parsed once per instance. Unknown fields are
/// refused, so a typo shows in the WasmFilter's status instead of being ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// What to greet with; "world" when not set.
    #[serde(default = "world")]
    greeting: String,
}

fn world() -> String {
    "world".into()
}

struct {Type} {
    greeting: String,
}

impl Filter for {Type} {
    // `Option`: a WasmFilter without `spec.config` is fine too.
    type Config = Option<Config>;

    fn new(config: Option<Config>) -> Result<Self, sluice_sdk::ConfigErrors> {
        let greeting = config.map_or_else(world, |c| c.greeting);
        // Check the config here, once, and say where the problem is.
        if greeting.is_empty() {
            return Err(vec![config_error(".greeting", "must not be empty")]);
        }
        Ok({Type} { greeting })
    }

    fn on_request(&self, request: &Request) -> Action {
        if request.path() == "/hello" {
            // On the gateway's /metrics as sluice_filter_greetings_total.
            sluice_sdk::metrics::counter_add("greetings", 1);
            return Action::respond(200, format!("hello, {}\n", self.greeting));
        }
        // println! goes to the gateway's log, with this filter's name.
        if request.get_header("x-debug").is_some() {
            println!("greeting {}", request.path());
        }
        // Setting a header fails only for an invalid name or value; these are fixed.
        let _ = request.set_header("x-hello", &self.greeting);
        Action::Continue
    }
}

sluice_sdk::export!({Type});
"#;

const TEST_RS: &str = r#"//! The filter, built for wasm32-wasip2 and run in the gateway's own runtime, with its
//! limits and sandbox: no gateway needed.

use serde_json::json;
use sluice_harness::{Harness, Outcome};

fn load(config: serde_json::Value) -> Result<Harness, sluice_harness::FilterError> {
    let wasm = sluice_harness::build(env!("CARGO_MANIFEST_DIR"))
        .expect("build the filter (rustup target add wasm32-wasip2)");
    Harness::load(&wasm, config)
}

#[test]
fn greets_every_request_and_answers_hello() {
    let f = load(json!({"greeting": "there"})).expect("load");
    let req = http::Request::get("/").body(()).expect("request");
    match f.on_request(req).expect("on_request") {
        Outcome::Continue(req) => assert_eq!(req.headers()["x-hello"], "there"),
        Outcome::Respond(r) => panic!("answered {} instead", r.status()),
    }
    let req = http::Request::get("/hello").body(()).expect("request");
    match f.on_request(req).expect("on_request") {
        Outcome::Respond(r) => assert_eq!(r.body().as_slice(), b"hello, there\n"),
        Outcome::Continue(_) => panic!("/hello went on to the backend"),
    }
}

#[test]
fn refuses_an_empty_greeting_with_its_path() {
    let Err(err) = load(json!({"greeting": ""})) else {
        panic!("an empty greeting was accepted");
    };
    assert_eq!(
        err.config_errors,
        vec![(".greeting".to_string(), "must not be empty".to_string())]
    );
}
"#;

const README_MD: &str = r#"# {name}

A Sluice filter, made by `sluice filter new`.

## Build

```sh
rustup target add wasm32-wasip2
cargo build --release --target wasm32-wasip2
ls target/wasm32-wasip2/release/{lib}.wasm
```

## Test

```sh
cargo test
```

`tests/filter.rs` builds the filter and runs it in the gateway's own runtime
(`sluice-harness`): requests in, what the filter did out.

## Attach

Put the `.wasm` in the gateway's config folder, next to:

```yaml
apiVersion: sluice.dev/v1alpha1
kind: WasmFilter
metadata: {name: {name}, namespace: default}
spec:
  source: {path: {lib}.wasm}
  config: {greeting: there}
---
# in an HTTPRoute rule:
#   filters:
#   - type: ExtensionRef
#     extensionRef: {group: sluice.dev, kind: WasmFilter, name: {name}}
```

`sluice check DIR` exits 1 and says why if the filter refuses its config.

## Publish

```sh
sluice filter push target/wasm32-wasip2/release/{lib}.wasm REGISTRY/filters/{name}:v1
```

and point the WasmFilter at `spec.source.oci: {image: REGISTRY/filters/{name}:v1}`.
"#;

/// Writes the JavaScript filter `name` into `dir` (default: `./name`); returns the
/// directory. As with Python, the WIT and the wrapper (`sdk/js/index.js`, as
/// `sluice-filter.js`: componentize-js reads only files beside `app.js`) are written
/// into it; `npm install` brings componentize-js, and `npm run build` builds.
pub fn new_js(name: &str, dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let dir = target_dir(name, dir)?;
    let ty = type_name(name);
    let files = [
        ("app.js", APP_JS.replace("{Type}", &ty)),
        (
            "sluice-filter.js",
            include_str!("../../../sdk/js/index.js").to_string(),
        ),
        ("build.mjs", BUILD_MJS.replace("{name}", name)),
        ("package.json", PACKAGE_JSON.replace("{name}", name)),
        (
            "README.md",
            (README_JS.to_string() + ATTACH_MD).replace("{name}", name),
        ),
        (".gitignore", "/*.wasm\n/node_modules/\n".to_string()),
    ];
    write_files(&dir, &files)?;
    write_files(&dir, &wit_and_case(name))?;
    Ok(dir)
}

const APP_JS: &str = r#"// A Sluice filter in JavaScript. It adds `x-hello: <greeting>` to every request and
// answers /hello itself; change onRequest (and add onResponse) to do your own work.
// The hooks, bodies and the sandbox are in Sluice's docs/filters.md, "Filters in
// JavaScript".
import { ConfigError, Filter, Respond, exportFilter } from "./sluice-filter.js";

class {Type} extends Filter {
  constructor(config) {
    super(config);
    // spec.config of the WasmFilter, parsed from JSON (null when unset).
    this.greeting = config?.greeting ?? "world";
    if (typeof this.greeting !== "string" || !this.greeting) {
      throw new ConfigError(".greeting", "must not be empty");
    }
  }

  onRequest(request) {
    if (request.path() === "/hello") {
      return new Respond(200, [["content-type", "text/plain"]], `hello, ${this.greeting}\n`);
    }
    request.setHeader("x-hello", this.greeting);
  }
}

export const {
  configure,
  onRequest,
  onRequestBody,
  onResponse,
  onResponseBody,
  onRequestStreamStart,
  onRequestChunk,
  onRequestStreamEnd,
  onResponseStreamStart,
  onResponseChunk,
  onResponseStreamEnd,
} = exportFilter({Type});
"#;

const BUILD_MJS: &str = r#"// `npm run build`: app.js (and the files beside it) into {name}.wasm.
import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile } from "node:fs/promises";

const { component } = await componentize({
  sourcePath: "app.js",
  witPath: "wit",
  worldName: "sluice:filter/filter@0.2.0",
  // A filter is not an HTTP handler: the gateway gives it no wasi:http.
  disableFeatures: ["http", "fetch-event"],
});
await writeFile("{name}.wasm", component);
console.log(`wrote {name}.wasm (${component.length} bytes)`);
"#;

const PACKAGE_JSON: &str = r#"{
  "name": "{name}",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "scripts": {
    "build": "node build.mjs"
  },
  "devDependencies": {
    "@bytecodealliance/componentize-js": "0.23.0"
  }
}
"#;

/// The end of the Python and JavaScript READMEs: attaching and publishing.
const ATTACH_MD: &str = r#"
Then attach it to a route:

```yaml
apiVersion: sluice.dev/v1alpha1
kind: WasmFilter
metadata: {name: {name}}
spec:
  source: {path: {name}.wasm}
  config: {greeting: hi}
```

and an HTTPRoute rule's `filters: [{type: ExtensionRef, extensionRef: {group:
sluice.dev, kind: WasmFilter, name: {name}}}]`, or publish it with `sluice filter push
{name}.wasm registry.example.com/filters/{name}:v1`.
"#;

const README_JS: &str = r#"# {name}

A Sluice filter in JavaScript (`app.js`), built into a WebAssembly component with
[componentize-js](https://www.npmjs.com/package/@bytecodealliance/componentize-js).
`sluice-filter.js` is the wrapper of the filter API and `wit/` the API itself, as this
Sluice speaks it. componentize-js reads only the files beside `app.js`: keep imports
relative (`./...`).

Build and test it:

```sh
npm install && npm run build
sluice filter test {name}.wasm --config config.yaml --request request.yaml
```
"#;

const APP_PY: &str = r#""""A Sluice filter in Python. It adds `x-hello: <greeting>` to every request and
answers /hello itself; change on_request (and add on_response) to do your own work.
The hooks, bodies and the sandbox are in Sluice's docs/filters.md, "Filters in
Python"."""

import sluice_filter as sf


class {Type}(sf.Filter):
    def __init__(self, config):
        # spec.config of the WasmFilter, parsed from JSON (None when unset).
        self.greeting = (config or {}).get("greeting", "world")
        if not isinstance(self.greeting, str) or not self.greeting:
            raise sf.ConfigError(".greeting", "must not be empty")

    def on_request(self, request):
        if request.path() == "/hello":
            return sf.Respond(200, [("content-type", "text/plain")], f"hello, {self.greeting}\n")
        request.set_header("x-hello", self.greeting)


WitWorld = sf.export({Type})
"#;

const REQUEST_YAML: &str = r#"# `sluice filter test {name}.wasm --config config.yaml --request request.yaml`
# runs the filter on this request and checks `expect:`.
request: {path: /api, headers: {host: example.com}}
expect:
  request: {path: /api, headers: {x-hello: hi}}
"#;

const README_PY: &str = r#"# {name}

A Sluice filter in Python (`app.py`), built into a WebAssembly component with
[componentize-py](https://pypi.org/project/componentize-py/). `sluice_filter/` is the
wrapper of the filter API and `wit/` the API itself, as this Sluice speaks it.

Build and test it:

```sh
python3 -m venv .venv && .venv/bin/pip install componentize-py==0.25.1
.venv/bin/componentize-py -d wit -w sluice:filter/filter@0.2.0 componentize app -o {name}.wasm
sluice filter test {name}.wasm --config config.yaml --request request.yaml
```
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(type_name("api-key"), "ApiKey");
        assert_eq!(type_name("rate_limit2"), "RateLimit2");
        assert!(check_name("api-key").is_ok());
        for bad in ["", "1st", "a b", "../x", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
