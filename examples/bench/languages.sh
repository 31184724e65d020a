#!/usr/bin/env bash
# What a filter costs by the language it is written in: builds the Python and
# JavaScript hello examples (sdk/python, sdk/js) as their docs say, timing each build,
# then runs `cargo bench -p sluice-harness --bench components` with them. The Rust
# hello filter (filters/hello) is the baseline every figure is divided by.
#
#   examples/bench/languages.sh
#
# It uses the componentize-py and componentize-js that .ci/run installs in
# target/tools (or $SLUICE_COMPONENTIZE_PY, and $SLUICE_COMPONENTIZE_JS for a
# node_modules folder holding @bytecodealliance/componentize-js).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
py=${SLUICE_COMPONENTIZE_PY:-$repo/target/tools/py/bin/componentize-py}
modules=$(realpath "${SLUICE_COMPONENTIZE_JS:-$repo/target/tools/js/node_modules}")
[ -x "$py" ] || { echo "no componentize-py at $py: run .ci/run once, or set SLUICE_COMPONENTIZE_PY" >&2; exit 1; }
[ -d "$modules/@bytecodealliance/componentize-js" ] || { echo "no componentize-js in $modules: run .ci/run once, or set SLUICE_COMPONENTIZE_JS" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
seconds() { local t=$SECONDS; "$@" >&2; echo $((SECONDS - t)); }

# Python: the wrapper from sdk/python on the import path, as `pip install` would put it.
py_build=$(cd sdk/python/examples/hello && PYTHONDONTWRITEBYTECODE=1 seconds "$py" \
  -d "$repo/wit" -w sluice:filter/filter@0.2.0 componentize app -p . -p "$repo/sdk/python" \
  -o "$work/hello-py.wasm")

# JavaScript: componentize-js reads only the files beside app.js.
mkdir "$work/js"
cp sdk/js/examples/hello/app.js "$work/js/"
cp sdk/js/index.js "$work/js/sluice-filter.js"
ln -s "$modules" "$work/js/node_modules"
cat > "$work/js/build.mjs" <<JS
import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile } from "node:fs/promises";
const { component } = await componentize({ sourcePath: "app.js", witPath: "$repo/wit",
  worldName: "sluice:filter/filter@0.2.0", disableFeatures: ["http", "fetch-event"] });
await writeFile("hello.wasm", component);
JS
js_build=$(cd "$work/js" && seconds node build.mjs)

echo "builds: componentize-py ${py_build} s, componentize-js ${js_build} s (wall, whole seconds)"
cargo bench -p sluice-harness --bench components -- \
  python="$work/hello-py.wasm" js="$work/js/hello.wasm"
