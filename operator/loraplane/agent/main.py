"""Entry point of the agent sidecar (`loraplane-agent`)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import TypeVar

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError

from loraplane.agent import protocol
from loraplane.agent.apply import apply
from loraplane.agent.engine import Engine
from loraplane.agent.readiness import ReadinessCheck, RequiredStore
from loraplane.agent.store import AdapterStore
from loraplane.cli import parse_args
from loraplane.config import AgentSettings
from loraplane.vllm.client import VLLMClient

log = logging.getLogger("loraplane.agent")
SESSION = web.AppKey("session", aiohttp.ClientSession)
LOADS = web.AppKey("loads", aiohttp.ClientSession)
VLLM = web.AppKey("vllm", VLLMClient)
METRICS_RUNNER = web.AppKey("metrics_runner", web.AppRunner)
M = TypeVar("M", bound=BaseModel)


def _authorized(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(header, f"Bearer {token}")


def _json(body: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(body.model_dump(mode="json", by_alias=True), status=status)


async def _body(request: web.Request, model: type[M]) -> M:
    try:
        return model.model_validate(await request.json())
    except ValidationError as exc:
        # Without the input: a fetch request carries credentials, and the answer is logged.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise web.HTTPBadRequest(text=f"bad {model.__name__}: {problems}") from None
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"bad {model.__name__}: {exc}") from exc


def metrics_app(engine: Engine) -> web.Application:
    """/metrics alone, on a port of its own: read-only, so open to whoever scrapes vLLM."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(engine)

    async def scrape(_: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app


def build_app(cfg: AgentSettings) -> web.Application:
    required = RequiredStore(cfg.adapter_root)
    readiness = ReadinessCheck(required, cfg.readiness_refresh_seconds)
    engine = Engine(cfg)
    adapters = AdapterStore(
        cfg.adapter_root,
        cfg.model_path,
        cfg.agent_token,
        cfg.peer_timeout_seconds,
        cfg.source_context(),
    )
    app = web.Application()

    def guard(request: web.Request) -> None:
        if not _authorized(request, cfg.agent_token):
            raise web.HTTPUnauthorized(text="missing or wrong agent token")

    async def on_startup(app: web.Application) -> None:
        session = app[SESSION] = aiohttp.ClientSession(trace_configs=[readiness.trace_config()])
        app[LOADS] = aiohttp.ClientSession()
        app[VLLM] = VLLMClient(
            cfg.vllm_url, cfg.vllm_api_key, session, timeout=cfg.vllm_probe_timeout_seconds
        )
        if cfg.metrics_port is not None:
            runner = app[METRICS_RUNNER] = web.AppRunner(metrics_app(engine), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "0.0.0.0", cfg.metrics_port).start()

    async def on_cleanup(app: web.Application) -> None:
        await app[SESSION].close()
        await app[LOADS].close()
        if METRICS_RUNNER in app:
            await app[METRICS_RUNNER].cleanup()

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.Response:
        result = await readiness.check(request.app[VLLM])
        return web.Response(status=200 if result.ready else 503, text=result.reason)

    async def get_required(request: web.Request) -> web.Response:
        guard(request)
        return _json(protocol.RequiredAdapters(adapters=required.load()))

    async def put_required(request: web.Request) -> web.Response:
        guard(request)
        required.save((await _body(request, protocol.RequiredAdapters)).adapters)
        return _json(protocol.RequiredAdapters(adapters=required.load()))

    async def apply_adapters(request: web.Request) -> web.StreamResponse:
        guard(request)
        req = await _body(request, protocol.ApplyRequest)
        # Its own connections: the readiness check counts those of its session.
        vllm = VLLMClient(
            cfg.vllm_url,
            cfg.vllm_api_key,
            request.app[LOADS],
            timeout=cfg.vllm_probe_timeout_seconds,
            load_timeout=req.load_timeout_seconds,
        )
        response = web.StreamResponse(headers={"Content-Type": protocol.APPLY_CONTENT_TYPE})
        await response.prepare(request)
        results = apply(adapters, vllm, req)
        following = asyncio.ensure_future(anext(results))
        try:
            while True:
                done, _ = await asyncio.wait({following}, timeout=req.heartbeat_seconds)
                if not done:
                    await response.write(b"\n")  # still at work
                    continue
                try:
                    applied = following.result()
                except StopAsyncIteration:
                    break
                line = applied.model_dump_json(by_alias=True, exclude_none=True) + "\n"
                await response.write(line.encode())
                following = asyncio.ensure_future(anext(results))
        finally:  # the operator went away: the fetches and loads it asked for stop
            following.cancel()
            await results.aclose()
        await response.write_eof()
        return response

    async def version(request: web.Request) -> web.StreamResponse:
        """A stored version for a peer of the same base model (which checks its digest)."""
        guard(request)
        name, digest = request.match_info["name"], request.match_info["digest"]
        try:
            archive = await asyncio.to_thread(adapters.archive, name, digest)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        if archive is None:
            raise web.HTTPNotFound(text=f"no version {digest} of {name} here")
        response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        await response.prepare(request)
        try:
            with archive.open("rb") as data:
                while chunk := await asyncio.to_thread(data.read, 1 << 20):
                    await response.write(chunk)
        finally:
            archive.unlink(missing_ok=True)
        await response.write_eof()
        return response

    async def residency(request: web.Request) -> web.Response:
        guard(request)
        return _json(await asyncio.to_thread(engine.residency))

    async def prune(request: web.Request) -> web.Response:
        guard(request)
        keep = (await _body(request, protocol.PruneRequest)).keep
        removed = await asyncio.to_thread(adapters.prune, keep)
        return _json(protocol.PruneResult(removed=removed))

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get(protocol.HEALTHZ, healthz)
    app.router.add_get(protocol.READYZ, readyz)
    app.router.add_get(protocol.REQUIRED, get_required)
    app.router.add_put(protocol.REQUIRED, put_required)
    app.router.add_post(protocol.APPLY, apply_adapters)
    app.router.add_post(protocol.PRUNE, prune)
    app.router.add_get(protocol.VERSION, version)
    app.router.add_get(protocol.RESIDENCY, residency)
    return app


def main() -> None:
    parse_args(
        "loraplane-agent",
        "The loraplane agent, the sidecar of each vLLM pod: fetches and verifies adapter files "
        "into the adapter store, registers them with the pod's vLLM, and serves the pod's "
        "readiness.",
        AgentSettings,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cfg = AgentSettings.from_env()
    log.info("agent listening on :%d, vLLM at %s", cfg.agent_port, cfg.vllm_url)
    # No access log: kubelet probes every two seconds would drown everything else.
    web.run_app(build_app(cfg), host="0.0.0.0", port=cfg.agent_port, print=None, access_log=None)


if __name__ == "__main__":
    main()
