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

import pytest

from loraplane.agent import protocol

REPO = Path(__file__).resolve().parents[2]
IMAGES_SH = REPO / "hack" / "images.sh"
# A tag of its own, so the test never replaces the image a developer built as :dev.
IMAGE = "ghcr.io/loraplane/loraplane:e2e-test"
NON_ROOT_UID = 65532  # images/operator/Containerfile's USER
# A cold build downloads the dependencies from PyPI and copies whole trees on vfs: minutes.
BUILD_TIMEOUT = 1800
# Long enough for the agent's imports on a loaded 2-core machine.
AGENT_START_TIMEOUT = 60.0


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


@pytest.fixture(scope="session")
def operator_image() -> str:
    if shutil.which("buildah") is None:
        pytest.fail("buildah is not installed: run hack/images.sh base (it installs it)")
    done = subprocess.run(
        [str(IMAGES_SH), "operator", IMAGE.rsplit(":", 1)[1]],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert done.returncode == 0, f"hack/images.sh operator failed:\n{done.stderr[-4000:]}"
    return IMAGE


@pytest.fixture(scope="session")
def container(operator_image: str) -> Iterator[str]:
    """A working container of the image (what `buildah run` runs commands in)."""
    done = buildah("from", operator_image)
    assert done.returncode == 0, done.stderr
    name = done.stdout.strip().splitlines()[-1]
    yield name
    buildah("rm", name)


@pytest.fixture(scope="session")
def image_config(operator_image: str) -> dict[str, object]:
    done = buildah("inspect", "--type", "image", operator_image)
    assert done.returncode == 0, done.stderr
    config: dict[str, object] = json.loads(done.stdout)["OCIv1"]["config"]
    return config


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
