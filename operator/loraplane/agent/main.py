"""Entry point of the agent sidecar (`loraplane-agent`)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from pathlib import Path

import aiohttp
from aiohttp import web

from loraplane.agent.readiness import RequiredStore, evaluate
from loraplane.agent.store import AdapterStore, FetchRequest, Rejected, summary_json

log = logging.getLogger("loraplane.agent")


class AgentConfig:
    def __init__(self) -> None:
        self.port = int(os.environ.get("LORAPLANE_AGENT_PORT", "8081"))
        self.vllm_url = os.environ.get("LORAPLANE_VLLM_URL", "http://127.0.0.1:8000")
        self.adapter_root = Path(os.environ.get("LORAPLANE_ADAPTER_ROOT", "/adapters"))
        self.token = os.environ.get("LORAPLANE_AGENT_TOKEN", "")
        self.vllm_api_key = os.environ.get("VLLM_API_KEY") or None
        model = os.environ.get("LORAPLANE_MODEL_PATH")
        self.model_path = Path(model) if model else None


def _authorized(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(header, f"Bearer {token}")


async def _vllm_state(session: aiohttp.ClientSession, cfg: AgentConfig) -> tuple[bool, list[str]]:
    """(healthy, registered adapter names); unreachable counts as unhealthy."""
    headers = {"Authorization": f"Bearer {cfg.vllm_api_key}"} if cfg.vllm_api_key else {}
    timeout = aiohttp.ClientTimeout(total=2)
    try:
        async with session.get(f"{cfg.vllm_url}/health", timeout=timeout) as resp:
            if resp.status != 200:
                return False, []
        async with session.get(
            f"{cfg.vllm_url}/v1/models", headers=headers, timeout=timeout
        ) as resp:
            if resp.status != 200:
                return False, []
            body = await resp.json()
    except (aiohttp.ClientError, TimeoutError):
        return False, []
    names = [m["id"] for m in body.get("data", []) if m.get("parent")]
    return True, names


def build_app(cfg: AgentConfig) -> web.Application:
    store = RequiredStore(cfg.adapter_root)
    adapters = AdapterStore(cfg.adapter_root, cfg.model_path)
    app = web.Application()

    def guard(request: web.Request) -> None:
        if not _authorized(request, cfg.token):
            raise web.HTTPUnauthorized(text="missing or wrong agent token")

    async def on_startup(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession()

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.Response:
        healthy, registered = await _vllm_state(request.app["session"], cfg)
        result = evaluate(healthy, store.load(), registered)
        return web.Response(status=200 if result.ready else 503, text=result.reason)

    async def get_required(request: web.Request) -> web.Response:
        guard(request)
        return web.json_response({"adapters": store.load()})

    async def put_required(request: web.Request) -> web.Response:
        guard(request)
        body = await request.json()
        names = body.get("adapters") if isinstance(body, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise web.HTTPBadRequest(text='expected {"adapters": ["name", ...]}')
        store.save(names)
        return web.json_response({"adapters": store.load()})

    async def fetch(request: web.Request) -> web.Response:
        guard(request)
        try:
            req = FetchRequest.model_validate(await request.json())
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"bad fetch request: {exc}") from exc
        try:
            path, summary, findings = await adapters.fetch(req)
        except Rejected as exc:
            return web.json_response(
                {
                    "reason": exc.reason,
                    "message": exc.message,
                    "findings": [f.model_dump(mode="json") for f in exc.findings],
                },
                status=422,
            )
        return web.json_response(
            {
                "path": path,
                "summary": summary_json(summary),
                "findings": [f.model_dump(mode="json") for f in findings],
            }
        )

    async def prune(request: web.Request) -> web.Response:
        guard(request)
        body = await request.json()
        keep = body.get("keep") if isinstance(body, dict) else None
        if not isinstance(keep, dict):
            raise web.HTTPBadRequest(text='expected {"keep": {"name": "digest-dir"}}')
        removed = await asyncio.to_thread(adapters.prune, {str(k): str(v) for k, v in keep.items()})
        return web.json_response({"removed": removed})

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/required", get_required)
    app.router.add_put("/v1/required", put_required)
    app.router.add_post("/v1/adapters/fetch", fetch)
    app.router.add_post("/v1/adapters/prune", prune)
    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cfg = AgentConfig()
    log.info("agent listening on :%d, vLLM at %s", cfg.port, cfg.vllm_url)
    # No access log: kubelet probes every two seconds would drown everything else.
    web.run_app(build_app(cfg), host="0.0.0.0", port=cfg.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
