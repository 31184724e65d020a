"""A gRPC backend for the tests: `python server.py PORT NAME` serves echo.Echo on
127.0.0.1:PORT. Say, Shout and Whisper answer with the request's bytes (EchoRequest and EchoReply
share their wire format), an `x-backend: NAME` header, the request's `x-hello` header
as `x-seen-hello`, and an `x-served: NAME` trailer. A request with an `x-fail` header
gets NOT_FOUND instead, with that header's value as the message."""

import sys
from concurrent import futures

import grpc


def handler(name):
    def call(request, context):
        md = dict(context.invocation_metadata())
        context.send_initial_metadata(
            (("x-backend", name), ("x-seen-hello", md.get("x-hello", "none")))
        )
        context.set_trailing_metadata((("x-served", name),))
        if "x-fail" in md:
            context.abort(grpc.StatusCode.NOT_FOUND, md["x-fail"])
        return request

    return grpc.unary_unary_rpc_method_handler(call)


def main():
    port, name = sys.argv[1], sys.argv[2]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "echo.Echo", {m: handler(name) for m in ("Say", "Shout", "Whisper")}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
