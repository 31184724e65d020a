"""Write Sluice gateway filters in Python.

A filter is a class with the hooks it needs; ``export`` turns it into the
``WitWorld`` class that componentize-py exports as the ``sluice:filter/filter@0.2.0``
world::

    import sluice_filter as sf

    class Hello(sf.Filter):
        def __init__(self, config):
            self.greeting = (config or {}).get("greeting", "hello")
            if not self.greeting:
                raise sf.ConfigError(".greeting", "must not be empty")

        def on_request(self, request):
            request.set_header("x-hello", self.greeting)

    WitWorld = sf.export(Hello)

Build it with componentize-py (from PyPI), against the gateway's WIT::

    componentize-py -d wit -w sluice:filter/filter@0.2.0 componentize app -o hello.wasm

Hooks, each optional (the defaults let everything through):

- ``__init__(config)``: the WasmFilter's ``spec.config``, parsed from JSON (``None``
  when unset). Raise ``ConfigError(path, message)`` for a bad config: the WasmFilter's
  status lists it, and the filter is not used.
- ``on_request(request)`` / ``on_response(response)``: headers, method, path, status,
  through the ``request``/``response`` resources of the WIT. ``on_request`` may return
  ``Respond(status, headers, body)`` to answer instead of forwarding.
- Bodies (filter API 0.2): set ``request_body``/``response_body`` to ``BUFFERED`` or
  ``STREAMED``.

  - Buffered: ``on_request_body(request, body)`` / ``on_response_body(response,
    body)`` return ``None`` (keep), ``bytes`` (replace) or ``Respond``.
  - Streamed: ``on_request_stream_start(request)``, then ``on_request_chunk(chunk)``
    for each chunk, returning ``None`` (pass it on) or ``bytes`` (send these instead),
    then ``on_request_stream_end(trailers)``, returning bytes to add at the end; the
    same for responses.

Each gateway instance of the filter builds one object of the class and keeps it for
every request that instance serves: keep per-request state in the ``context``
interface, not on ``self``.
"""

import json

NONE = "none"
BUFFERED = "buffered"
STREAMED = "streamed"

__all__ = [
    "BUFFERED",
    "ConfigError",
    "Filter",
    "NONE",
    "Respond",
    "STREAMED",
    "export",
]


class ConfigError(Exception):
    """A problem in the filter's config: ``path`` is a JSON path such as ``.keys[0]``."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class Respond:
    """An answer the filter gives instead of forwarding the request."""

    def __init__(self, status: int, headers=(), body: bytes = b""):
        self.status = int(status)
        self.headers = [(str(k), str(v)) for k, v in headers]
        self.body = body.encode() if isinstance(body, str) else bytes(body)


class Filter:
    """Every hook lets the message through unchanged; override the ones you need."""

    request_body = NONE
    response_body = NONE

    def __init__(self, config):
        pass

    def on_request(self, request):
        return None

    def on_request_body(self, request, body: bytes):
        return None

    def on_response(self, response):
        return None

    def on_response_body(self, response, body: bytes):
        return None

    def on_request_stream_start(self, request):
        return None

    def on_request_chunk(self, chunk: bytes):
        return None

    def on_request_stream_end(self, trailers) -> bytes:
        return b""

    def on_response_stream_start(self, response):
        return None

    def on_response_chunk(self, chunk: bytes):
        return None

    def on_response_stream_end(self, trailers) -> bytes:
        return b""


def export(cls):
    """The ``WitWorld`` class componentize-py exports, running filter class ``cls``."""
    # The bindings exist only inside a componentize-py build.
    import wit_world
    from componentize_py_types import Err
    from wit_world.imports import body, types

    modes = {
        NONE: body.BodyMode.NONE,
        BUFFERED: body.BodyMode.BUFFERED,
        STREAMED: body.BodyMode.STREAMED,
    }
    state = {}

    def mode(name, attr):
        if attr not in modes:
            raise Err([types.ConfigError(path="", message=f"{cls.__name__}.{name} is {attr!r}: use NONE, BUFFERED or STREAMED")])
        return modes[attr]

    def direct(r):
        return types.DirectResponse(status=r.status, headers=r.headers, body=r.body)

    def body_action(r):
        if r is None:
            return body.BodyAction_Continue()
        if isinstance(r, Respond):
            return body.BodyAction_Respond(direct(r))
        return body.BodyAction_Replace(bytes(r))

    def chunk_action(r):
        if r is None:
            return body.ChunkAction_Pass()
        return body.ChunkAction_Replace(bytes(r))

    def f():
        return state["filter"]

    class WitWorld(wit_world.WitWorld):
        def configure(self, config: str):
            try:
                state["filter"] = cls(json.loads(config))
            except ConfigError as e:
                raise Err([types.ConfigError(path=e.path, message=e.message)])
            except Exception as e:  # the config made the constructor fail
                raise Err([types.ConfigError(path="", message=f"{type(e).__name__}: {e}")])
            return body.Needs(
                request_body=mode("request_body", cls.request_body),
                response_body=mode("response_body", cls.response_body),
            )

        def on_request(self, request):
            r = f().on_request(request)
            if isinstance(r, Respond):
                return types.RequestAction_Respond(direct(r))
            return types.RequestAction_Continue()

        def on_request_body(self, request, b: bytes):
            return body_action(f().on_request_body(request, b))

        def on_response(self, response):
            f().on_response(response)

        def on_response_body(self, response, b: bytes):
            return body_action(f().on_response_body(response, b))

        def on_request_stream_start(self, request):
            f().on_request_stream_start(request)

        def on_request_chunk(self, chunk: bytes):
            return chunk_action(f().on_request_chunk(chunk))

        def on_request_stream_end(self, trailers) -> bytes:
            return bytes(f().on_request_stream_end(trailers) or b"")

        def on_response_stream_start(self, response):
            f().on_response_stream_start(response)

        def on_response_chunk(self, chunk: bytes):
            return chunk_action(f().on_response_chunk(chunk))

        def on_response_stream_end(self, trailers) -> bytes:
            return bytes(f().on_response_stream_end(trailers) or b"")

    return WitWorld
