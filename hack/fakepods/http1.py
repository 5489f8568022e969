"""A small asyncio HTTP/1.1 server: keep-alive, Content-Length bodies, the local address known.

One listening socket per port on 0.0.0.0 answers every fake pod: the address a connection came
in on says which pod it is for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from fakevllm import Response, json_response

log = logging.getLogger(__name__)

# (local address, method, path, headers, body) -> the answer; None closes the connection, as
# an address nobody listens on would refuse it.
App = Callable[[str, str, str, dict[str, str], bytes], Awaitable[Response | None]]
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
MAX_HEAD = 65536


def render(response: Response, keep_alive: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}",
        f"date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}",
        f"content-length: {len(response.body)}",
    ]
    if response.content_type:
        lines.append(f"content-type: {response.content_type}")
    lines += [f"{k}: {v}" for k, v in response.headers]
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


async def serve(app: App, host: str, port: int, keep_alive: float) -> asyncio.Server:
    """`keep_alive`: seconds an idle connection stays open, as the server this one stands for
    keeps it (uvicorn 5 s for vLLM, aiohttp 75 s for the agent)."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        local = writer.get_extra_info("sockname")[0]
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), keep_alive)
                except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    writer.write(render(Response(400), keep_alive=False))
                    return
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    # The operator's client always sends a length; a fake needs no more.
                    writer.write(render(Response(400), keep_alive=False))
                    return
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                path = target.split("?", 1)[0]
                try:
                    response = await app(local, method.upper(), path, headers, body)
                except Exception as exc:  # a bug here must not look like a dropped connection
                    log.exception("%s %s on %s", method, path, local)
                    response = json_response(500, {"detail": f"fakepods: {exc!r}"})
                if response is None:
                    return
                alive = "close" not in headers.get("connection", "").lower() and version.endswith(
                    "1.1"
                )
                writer.write(render(response, alive))
                if writer.transport.get_write_buffer_size() > MAX_HEAD:
                    await writer.drain()
                if not alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    return await asyncio.start_server(
        connection, host, port, reuse_address=True, backlog=1024, limit=MAX_HEAD
    )
