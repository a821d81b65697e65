"""An h2c-capable upstream for tests/upgrade.rs: hypercorn (which answers `Upgrade: h2c` with
101 and then speaks HTTP/2) serving a trivial ASGI app that says which HTTP version it was
reached over and which Upgrade header it saw.

Usage: h2c_origin.py PORT_FILE — binds 127.0.0.1 on an ephemeral port and writes the port
to PORT_FILE once it listens.
"""
import asyncio
import os
import socket
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    headers = dict(scope["headers"])
    upgrade = headers.get(b"upgrade", b"-").decode()
    settings = "yes" if b"http2-settings" in headers else "no"
    body = f"http/{scope['http_version']} upgrade={upgrade} http2-settings={settings}\n"
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body.encode()})


def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.loglevel = "WARNING"
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(sock.getsockname()[1]))
    os.rename(tmp, sys.argv[1])
    asyncio.run(serve(app, config))


if __name__ == "__main__":
    main()
