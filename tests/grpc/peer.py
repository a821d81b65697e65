#!/usr/bin/env python3
"""gRPC peer for tests/grpc.rs, with grpcio and raw-bytes generic handlers (no protoc step).

  peer.py server NAME PORT_FILE   serve /canaryd.test.Echo/{Unary,Chat,Fail} on 127.0.0.1:0
                                  (h2c), write the port to PORT_FILE, run until killed
  peer.py client TARGET           run the scenario against TARGET (host:port), print JSON

Unary answers b"NAME:" + request; Chat (bidirectional streaming) answers each message the
same way; Fail aborts with UNAVAILABLE. Every answer carries trailing metadata x-served-by.
"""
import json
import sys
from concurrent import futures

import grpc

SVC = "canaryd.test.Echo"


def serve(name, port_file):
    tag = name.encode() + b":"

    def unary(req, ctx):
        ctx.set_trailing_metadata((("x-served-by", name),))
        return tag + req

    def chat(it, ctx):
        ctx.set_trailing_metadata((("x-served-by", name),))
        for msg in it:
            yield tag + msg

    def fail(req, ctx):
        ctx.abort(grpc.StatusCode.UNAVAILABLE, f"{name} is failing on purpose")

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SVC, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    import os
    os.rename(port_file + ".tmp", port_file)
    server.wait_for_termination()


def client(target):
    out = {}
    with grpc.insecure_channel(target) as ch:
        unary = ch.unary_unary(f"/{SVC}/Unary")
        chat = ch.stream_stream(f"/{SVC}/Chat")
        fail = ch.unary_unary(f"/{SVC}/Fail")

        resp, call = unary.with_call(b"hi", timeout=10)
        out["unary_default"] = resp.decode()
        out["unary_default_trailer"] = dict(call.trailing_metadata()).get("x-served-by")
        resp = unary(b"hi", metadata=(("x-canary", "always"),), timeout=10)
        out["unary_canary"] = resp.decode()

        replies = chat(iter([b"one", b"two", b"three"]), metadata=(("x-canary", "always"),), timeout=10)
        out["chat_canary"] = [r.decode() for r in replies]
        out["chat_trailer"] = dict(replies.trailing_metadata()).get("x-served-by")

        try:
            fail(b"x", metadata=(("x-canary", "always"),), timeout=10)
            out["fail_code"] = "OK"
        except grpc.RpcError as e:
            out["fail_code"] = e.code().name
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2], sys.argv[3])
    else:
        client(sys.argv[2])
