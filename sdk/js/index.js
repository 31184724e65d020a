// Write Sluice gateway filters in JavaScript.
//
// A filter is a class with the hooks it needs; `exportFilter` turns it into the
// functions componentize-js exports as the `sluice:filter/filter@0.2.0` world:
//
//   import { Filter, ConfigError, exportFilter } from "./sluice-filter.js";
//
//   class Hello extends Filter {
//     constructor(config) {
//       super(config);
//       this.greeting = config?.greeting ?? "hello";
//       if (!this.greeting) throw new ConfigError(".greeting", "must not be empty");
//     }
//     onRequest(request) { request.setHeader("x-hello", this.greeting); }
//   }
//
//   export const { configure, onRequest, onRequestBody, onResponse, onResponseBody,
//     onRequestStreamStart, onRequestChunk, onRequestStreamEnd, onResponseStreamStart,
//     onResponseChunk, onResponseStreamEnd } = exportFilter(Hello);
//
// Hooks, each optional (the defaults let everything through):
// - constructor(config): the WasmFilter's spec.config, parsed from JSON (null when
//   unset). Throw `ConfigError(path, message)` for a bad config: the WasmFilter's
//   status lists it, and the filter is not used.
// - onRequest(request) / onResponse(response): headers, method, path, status, through
//   the WIT's `request`/`response` resources. onRequest may return
//   `new Respond(status, headers, body)` to answer instead of forwarding.
// - Bodies (filter API 0.2): set `static requestBody`/`responseBody` to BUFFERED or
//   STREAMED. Buffered: onRequestBody(request, body) / onResponseBody(response, body)
//   return undefined (keep), bytes or a string (replace), or a Respond. Streamed:
//   onRequestStreamStart(request), onRequestChunk(chunk) returning undefined (pass it
//   on) or bytes (send these instead), onRequestStreamEnd(trailers) returning bytes to
//   add at the end; the same for responses.
//
// Each gateway instance of the filter builds one object of the class and keeps it for
// every request that instance serves: keep per-request state in the `context`
// interface, not on `this`.

export const NONE = "none";
export const BUFFERED = "buffered";
export const STREAMED = "streamed";

/** A problem in the filter's config; `path` is a JSON path such as `.keys[0]`. */
export class ConfigError extends Error {
  constructor(path, message) {
    super(`${path}: ${message}`);
    this.path = path;
    this.detail = message;
  }
}

/** An answer the filter gives instead of forwarding the request. */
export class Respond {
  constructor(status, headers = [], body = new Uint8Array()) {
    this.status = status;
    this.headers = headers.map(([k, v]) => [String(k), String(v)]);
    this.body = bytes(body);
  }
}

/** Every hook lets the message through unchanged; override the ones you need. */
export class Filter {
  static requestBody = NONE;
  static responseBody = NONE;
  constructor(_config) {}
  onRequest(_request) {}
  onRequestBody(_request, _body) {}
  onResponse(_response) {}
  onResponseBody(_response, _body) {}
  onRequestStreamStart(_request) {}
  onRequestChunk(_chunk) {}
  onRequestStreamEnd(_trailers) {
    return new Uint8Array();
  }
  onResponseStreamStart(_response) {}
  onResponseChunk(_chunk) {}
  onResponseStreamEnd(_trailers) {
    return new Uint8Array();
  }
}

function bytes(b) {
  if (b === undefined || b === null) return new Uint8Array();
  return typeof b === "string" ? new TextEncoder().encode(b) : new Uint8Array(b);
}

const MODES = new Set([NONE, BUFFERED, STREAMED]);

/** The world's exports, running filter class `Cls`. */
export function exportFilter(Cls) {
  let filter;
  const direct = (r) => ({ status: r.status, headers: r.headers, body: r.body });
  const bodyAction = (r) =>
    r === undefined || r === null
      ? { tag: "continue" }
      : r instanceof Respond
        ? { tag: "respond", val: direct(r) }
        : { tag: "replace", val: bytes(r) };
  const chunkAction = (r) =>
    r === undefined || r === null ? { tag: "pass" } : { tag: "replace", val: bytes(r) };
  const mode = (name, value) => {
    if (!MODES.has(value)) {
      throw [{ path: "", message: `${Cls.name}.${name} is ${JSON.stringify(value)}: use NONE, BUFFERED or STREAMED` }];
    }
    return value;
  };
  return {
    configure(config) {
      try {
        filter = new Cls(JSON.parse(config));
      } catch (e) {
        // The world's `result<needs, list<config-error>>`: what is thrown is the error.
        throw e instanceof ConfigError
          ? [{ path: e.path, message: e.detail }]
          : [{ path: "", message: `${e?.name ?? "Error"}: ${e?.message ?? e}` }];
      }
      return {
        requestBody: mode("requestBody", Cls.requestBody),
        responseBody: mode("responseBody", Cls.responseBody),
      };
    },
    onRequest(request) {
      const r = filter.onRequest(request);
      return r instanceof Respond ? { tag: "respond", val: direct(r) } : { tag: "continue" };
    },
    onRequestBody: (request, body) => bodyAction(filter.onRequestBody(request, body)),
    onResponse(response) {
      filter.onResponse(response);
    },
    onResponseBody: (response, body) => bodyAction(filter.onResponseBody(response, body)),
    onRequestStreamStart(request) {
      filter.onRequestStreamStart(request);
    },
    onRequestChunk: (chunk) => chunkAction(filter.onRequestChunk(chunk)),
    onRequestStreamEnd: (trailers) => bytes(filter.onRequestStreamEnd(trailers)),
    onResponseStreamStart(response) {
      filter.onResponseStreamStart(response);
    },
    onResponseChunk: (chunk) => chunkAction(filter.onResponseChunk(chunk)),
    onResponseStreamEnd: (trailers) => bytes(filter.onResponseStreamEnd(trailers)),
  };
}
