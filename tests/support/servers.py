"""Real servers for the adapter-source tests, on 127.0.0.1 only, each behind TLS from a CA the
test makes: an HTTPS file server (the standard library's, with directory listings), the CNCF
distribution registry (pushed to with oras) and versitygw (an S3 gateway over a directory).

Each starts on a free port, is ready when it answers, and is stopped (SIGTERM, then SIGKILL) on
exit. A missing binary fails with ToolMissing naming it and the command that builds it.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import http.server
import ipaddress
import json
import os
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from loraplane.adapters.sources.credentials import S3Credentials
from loraplane.adapters.sources.s3 import sign

from . import tools

LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class LocalCA:
    """A CA and one server certificate it signed, for 127.0.0.1 and localhost."""

    cert: Path
    server_cert: Path
    server_key: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def make_ca(directory: Path, hosts: tuple[str, ...] = (LOCALHOST,)) -> LocalCA:
    """A CA and a server certificate for `hosts` (IP addresses) and localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "loraplane test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOCALHOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    *(x509.IPAddress(ipaddress.ip_address(h)) for h in hosts),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    out = LocalCA(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    out.cert.write_bytes(ca.public_bytes(pem))
    out.server_cert.write_bytes(server.public_bytes(pem))
    out.server_key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return out


@dataclass
class Server:
    url: str
    log: Path


def _wait(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes] | None, log: Path, what: str
) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within 60 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _answers(url: str, ca: LocalCA) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ca.client_context()):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer (401, 403) means it is up
        except (urllib.error.URLError, OSError):
            return False

    return check


@contextlib.contextmanager
def _process(argv: list[str], log: Path, ready_url: str, ca: LocalCA, what: str) -> Iterator[None]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(_answers(ready_url, ca), proc, log, what)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- HTTPS files -----------------------------------------------------------------------------


class _Files(http.server.SimpleHTTPRequestHandler):
    # Paths whose body breaks off halfway, as a connection that dies mid-download does.
    truncate: frozenset[str] = frozenset()

    def copyfile(self, source: Any, outputfile: Any) -> None:
        if self.path in self.truncate:
            data = source.read()
            outputfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().copyfile(source, outputfile)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def https_files(
    root: Path, ca: LocalCA, *, truncate: frozenset[str] = frozenset(), host: str = LOCALHOST
) -> Iterator[Server]:
    """The standard library's file server (with its HTML directory listings) over TLS; the
    paths in `truncate` send half their body and hang up."""
    handler = functools.partial(
        type("Files", (_Files,), {"truncate": truncate}), directory=str(root)
    )
    httpd = http.server.ThreadingHTTPServer((host, 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(ca.server_cert), str(ca.server_key))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(url=f"https://{host}:{httpd.server_address[1]}", log=root)
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- OCI registry ----------------------------------------------------------------------------


@dataclass
class Registry(Server):
    host: str  # 127.0.0.1:<port>, the registry part of references
    storage: Path
    username: str
    password: str

    def blob_path(self, digest: str) -> Path:
        """Where the registry's filesystem driver keeps a blob's bytes."""
        hexa = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"


def _provisioned_password(log: Path) -> str | None:
    """The password the registry generated for its user `docker` (it logs it once)."""
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("user") == "docker" and entry.get("password"):
                return str(entry["password"])
    return None


@contextlib.contextmanager
def registry(work: Path, ca: LocalCA) -> Iterator[Registry]:
    """distribution's registry with htpasswd auth (Basic, over TLS): it provisions the user
    `docker` with a random password, which it logs and the fixture reads."""
    binary = tools.registry()
    port = tools.free_port()
    work.mkdir(parents=True, exist_ok=True)
    storage = work / "storage"
    config = work / "config.yml"
    config.write_text(
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "info", "formatter": "json"},
                "storage": {"filesystem": {"rootdirectory": str(storage)}},
                "http": {
                    "addr": f"{LOCALHOST}:{port}",
                    "tls": {"certificate": str(ca.server_cert), "key": str(ca.server_key)},
                },
                "auth": {"htpasswd": {"realm": "loraplane-test", "path": str(work / "htpasswd")}},
            }
        )
    )
    log = work / "registry.log"
    url = f"https://{LOCALHOST}:{port}"
    with _process([str(binary), "serve", str(config)], log, f"{url}/v2/", ca, "registry"):
        password = _provisioned_password(log)
        if password is None:
            raise RuntimeError(f"the registry logged no provisioned password:\n{log.read_text()}")
        yield Registry(
            url=url,
            log=log,
            host=f"{LOCALHOST}:{port}",
            storage=storage,
            username="docker",
            password=password,
        )


def oras_push(reg: Registry, reference: str, directory: Path, ca: LocalCA) -> str:
    """`oras push` the files of `directory` (each a layer, titled by its name); the manifest
    digest it reports."""
    files = sorted(
        p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")
    )
    out = subprocess.run(
        [
            str(tools.oras()),
            "push",
            "--ca-file",
            str(ca.cert),
            "--username",
            reg.username,
            "--password-stdin",
            "--artifact-type",
            "application/vnd.loraplane.adapter.v1",
            "--format",
            "json",
            reference,
            *files,
        ],
        cwd=directory,
        input=reg.password,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"oras push {reference} failed:\n{out.stdout}\n{out.stderr}")
    return str(json.loads(out.stdout)["digest"])


# --- S3 --------------------------------------------------------------------------------------


@dataclass
class S3Server(Server):
    root: Path  # the posix backend's directory: <root>/<bucket>/<key>
    credentials: S3Credentials
    ca: LocalCA

    def _call(self, method: str, path: str, body: bytes = b"") -> None:
        url = self.url + path
        payload = hashlib.sha256(body).hexdigest()
        now = datetime.datetime.now(datetime.UTC)
        headers = sign(method, url, "us-east-1", self.credentials, now, payload)
        request = urllib.request.Request(url, data=body or None, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=30, context=self.ca.client_context()):
            pass

    def make_bucket(self, bucket: str) -> None:
        self._call("PUT", f"/{bucket}")

    def upload(self, bucket: str, prefix: str, directory: Path) -> None:
        """PUT every non-hidden file of `directory` under `prefix/`."""
        for f in sorted(directory.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                self._call("PUT", f"/{bucket}/{prefix}/{f.name}", f.read_bytes())


@contextlib.contextmanager
def versitygw(
    work: Path, ca: LocalCA, access_key: str, secret_key: str, host: str = LOCALHOST
) -> Iterator[S3Server]:
    """versitygw's posix backend over `work`/root, its root user with these keys, TLS on."""
    from pydantic import SecretStr

    binary = tools.versitygw()
    port = tools.free_port()
    root = work / "root"
    root.mkdir(parents=True, exist_ok=True)
    log = work / "versitygw.log"
    url = f"https://{host}:{port}"
    argv = [
        str(binary),
        "--port",
        f"{host}:{port}",
        "--access",
        access_key,
        "--secret",
        secret_key,
        "--cert",
        str(ca.server_cert),
        "--key",
        str(ca.server_key),
        "posix",
        str(root),
    ]
    credentials = S3Credentials(
        access_key_id=SecretStr(access_key), secret_access_key=SecretStr(secret_key)
    )
    with _process(argv, log, f"{url}/", ca, "versitygw"):
        yield S3Server(url=url, log=log, root=root, credentials=credentials, ca=ca)


# --- Hugging Face hub ------------------------------------------------------------------------

GIT_ENV = {
    "GIT_AUTHOR_NAME": "loraplane",
    "GIT_AUTHOR_EMAIL": "tests@loraplane.dev",
    "GIT_COMMITTER_NAME": "loraplane",
    "GIT_COMMITTER_EMAIL": "tests@loraplane.dev",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), *args],
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {repo}: {out.stderr}")
    return out.stdout.strip()


@dataclass
class HubRepo:
    """A model repository as the hub keeps one: git, with weights in LFS."""

    path: Path

    def lfs_object(self, oid: str) -> Path:
        return self.path / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid

    def commit(self, directory: Path, message: str, *, branch: str = "main") -> str:
        """Replace the repository's files with `directory`'s (safetensors through LFS, as
        `git lfs track "*.safetensors"` does); the new commit's sha."""
        if not (self.path / ".git").exists():
            self.path.mkdir(parents=True, exist_ok=True)
            _git(self.path, "init", "-q", "-b", branch)
        elif _git(self.path, "branch", "--list", branch):
            _git(self.path, "checkout", "-q", branch)
        else:
            _git(self.path, "checkout", "-q", "-b", branch)
        for old in self.path.iterdir():
            if old.name != ".git":
                old.unlink()
        for f in sorted(directory.iterdir()):
            if not f.is_file() or f.name.startswith("."):
                continue
            data = f.read_bytes()
            if f.suffix == ".safetensors":
                oid = hashlib.sha256(data).hexdigest()
                obj = self.lfs_object(oid)
                obj.parent.mkdir(parents=True, exist_ok=True)
                obj.write_bytes(data)
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\n"
                (self.path / f.name).write_text(pointer + f"size {len(data)}\n")
            else:
                (self.path / f.name).write_bytes(data)
        (self.path / "README.md").write_text(f"# {message}\nNot part of the adapter.\n")
        _git(self.path, "add", "-A")
        _git(self.path, "commit", "-q", "-m", message)
        return _git(self.path, "rev-parse", "HEAD")


@dataclass
class Hub(Server):
    mirrors: Path  # <mirrors>/models/<org>/<name>: one git repository each

    def repo(self, repo_id: str) -> HubRepo:
        return HubRepo(self.mirrors / "models" / repo_id)


@contextlib.contextmanager
def olah(work: Path, ca: LocalCA) -> Iterator[Hub]:
    """olah, a self-hosted hub-compatible server, offline, serving the git repositories under
    `work`/mirrors as model repositories, over TLS."""
    binary = tools.olah()
    port = tools.free_port()
    mirrors = work / "mirrors"
    (mirrors / "models").mkdir(parents=True, exist_ok=True)
    config = work / "olah.toml"
    netloc = f"{LOCALHOST}:{port}"
    config.write_text(
        "\n".join(
            [
                "[basic]",
                f'host = "{LOCALHOST}"',
                f"port = {port}",
                f'ssl-key = "{ca.server_key}"',
                f'ssl-cert = "{ca.server_cert}"',
                f'repos-path = "{work / "repos"}"',
                f'mirrors-path = ["{mirrors}"]',
                'mirror-scheme = "https"',
                f'mirror-netloc = "{netloc}"',
                f'mirror-lfs-netloc = "{netloc}"',
                "[accessibility]",
                "offline = true",
                "",
            ]
        )
    )
    log = work / "olah.log"
    url = f"https://{netloc}"
    argv = [str(binary), "--config", str(config), "--log-path", str(work / "logs")]
    with _process(argv, log, f"{url}/api/whoami-v2", ca, "olah"):
        yield Hub(url=url, log=log, mirrors=mirrors)


# olah has no access control: this gate in front of it answers as the hub does for a private
# repository (the hub's own wording and X-Error-Code), and forwards what a valid token may read.
# It is a fake of the hub's authorization only; the repository protocol is olah's.
class _HubGate(http.server.BaseHTTPRequestHandler):
    upstream = ""
    token = ""
    context: ssl.SSLContext | None = None
    HOP = frozenset({"connection", "transfer-encoding", "keep-alive", "content-length"})

    def _refuse(self, code: str | None, message: str) -> None:
        self.send_response(401)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _forward(self, head: bool) -> None:
        given = self.headers.get("Authorization")
        if given is None:
            return self._refuse("RepoNotFound", "Repository not found")
        if given != f"Bearer {self.token}":
            return self._refuse(None, "Invalid credentials in Authorization header")
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")
        }
        request = urllib.request.Request(
            self.upstream + self.path, headers=headers, method="HEAD" if head else "GET"
        )
        try:
            response = urllib.request.urlopen(request, timeout=30, context=self.context)
        except urllib.error.HTTPError as exc:
            response = exc
        with response:
            body = b"" if head else response.read()
            self.send_response(response.status)
            for key, value in response.headers.items():
                if key.lower() not in self.HOP:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._forward(head=False)

    def do_HEAD(self) -> None:
        self._forward(head=True)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def private_hub(hub: Hub, ca: LocalCA, token: str) -> Iterator[Server]:
    """`hub` as a private one: every request needs `Authorization: Bearer <token>`."""
    handler = type(
        "Gate", (_HubGate,), {"upstream": hub.url, "token": token, "context": ca.client_context()}
    )
    httpd = http.server.ThreadingHTTPServer((LOCALHOST, 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(ca.server_cert), str(ca.server_key))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(url=f"https://{LOCALHOST}:{httpd.server_address[1]}", log=hub.log)
    finally:
        httpd.shutdown()
        httpd.server_close()
