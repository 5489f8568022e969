"""Pod volumes, materialized under $LORAPLANE_HOME/pods/<uid>/volumes/<name> on the host.

Each container later bind-mounts them at their mountPath inside its own mount namespace
(launch.py), so two containers of a pod see the same directory, as in a real pod.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

from .envs import field_ref
from .kube import ApiError, Kube, ns_path
from .util import quantity, run, write_atomic

log = logging.getLogger(__name__)

Obj = dict[str, Any]
SA_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
SYNTHETIC_SA_VOLUME = "kube-api-access-processnode"
# Like the kubelet: refresh a projected token once 80% of its lifetime has passed.
TOKEN_REFRESH_FRACTION = 0.8


class VolumeError(Exception):
    """A volume cannot be set up yet (the kubelet reports FailedMount and keeps trying)."""


@dataclass
class Mount:
    source: str
    target: str
    read_only: bool


class PodVolumes:
    def __init__(self, kube: Kube, home: str, pod: Obj, pod_ip: str, host_ip: str) -> None:
        self.kube, self.pod, self.pod_ip, self.host_ip = kube, pod, pod_ip, host_ip
        self.ns = pod["metadata"]["namespace"]
        self.home = home
        self.pod_dir = f"{home}/pods/{pod['metadata']['uid']}"
        self.root = f"{self.pod_dir}/volumes"
        self.paths: dict[str, str] = {}
        self.read_only: set[str] = set()
        self._token_due: dict[str, float] = {}
        self.volumes = list(pod["spec"].get("volumes") or [])
        if self._needs_synthetic_sa_volume():
            self.volumes.append(_sa_volume())

    def _needs_synthetic_sa_volume(self) -> bool:
        """Adds the token volume when the ServiceAccount admission plugin did not."""
        spec = self.pod["spec"]
        if spec.get("automountServiceAccountToken") is False:
            return False
        if any(v["name"].startswith("kube-api-access-") for v in self.volumes):
            return False
        containers = (spec.get("initContainers") or []) + spec.get("containers", [])
        return not any(
            m.get("mountPath") == SA_MOUNT_PATH
            for c in containers
            for m in c.get("volumeMounts") or []
        )

    # --- setup and refresh -------------------------------------------------------------

    def setup(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        self._write_etc_files()
        for vol in self.volumes:
            self._materialize(vol, first=True)

    def _write_etc_files(self) -> None:
        """/etc/hosts and /etc/resolv.conf of the pod, as the kubelet manages them.

        There is no cluster DNS and the host's resolver is not reachable from a pod netns: a
        nameserver on the pod's own loopback makes lookups fail at once instead of timing out
        (Python's http.server, for one, resolves its hostname at bind time).
        """
        name = self.pod["metadata"]["name"]
        lines = [
            "# Kubernetes-managed hosts file (loraplane process node).",
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            f"{self.pod_ip}\t{name}",
        ]
        for alias in self.pod["spec"].get("hostAliases") or []:
            lines.append(f"{alias['ip']}\t{' '.join(alias.get('hostnames') or [])}")
        write_atomic(f"{self.pod_dir}/etc-hosts", ("\n".join(lines) + "\n").encode())
        write_atomic(
            f"{self.pod_dir}/resolv.conf",
            b"# no DNS for pods on the loraplane process "
            b"node: fail fast\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )

    def refresh(self) -> None:
        """Updates configMap, secret and projected volumes (and due tokens), as a kubelet does."""
        for vol in self.volumes:
            if any(k in vol for k in ("configMap", "secret", "projected", "downwardAPI")):
                try:
                    self._materialize(vol, first=False)
                except (VolumeError, ApiError, OSError) as exc:
                    log.warning("refreshing volume %s of %s: %s", vol["name"], self.ns, exc)

    def _materialize(self, vol: Obj, first: bool) -> None:
        name = vol["name"]
        path = f"{self.root}/{name}"
        if "emptyDir" in vol:
            if first:
                self._empty_dir(path, vol["emptyDir"] or {})
        elif "hostPath" in vol:
            path = self._host_path(vol["hostPath"])
        elif "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]
            path = f"{self.home}/pvcs/{self.ns}/{claim['claimName']}"
            os.makedirs(path, exist_ok=True)
            if claim.get("readOnly"):
                self.read_only.add(name)
        elif "configMap" in vol or "secret" in vol:
            if "configMap" in vol:
                kind, src = "configmaps", vol["configMap"]
            else:
                kind, src = "secrets", vol["secret"]
            files = self._object_files(kind, src.get("name") or src.get("secretName", ""), src)
            self._write_files(path, files, src.get("defaultMode", 0o644))
            self.read_only.add(name)
        elif "projected" in vol:
            self._write_files(
                path,
                self._projected(name, vol["projected"]),
                0o644,
                default_mode=vol["projected"].get("defaultMode", 0o644),
            )
            self.read_only.add(name)
        elif "downwardAPI" in vol:
            src = vol["downwardAPI"]
            files = self._downward(src.get("items") or [], src.get("defaultMode", 0o644))
            self._write_files(path, files, src.get("defaultMode", 0o644))
            self.read_only.add(name)
        else:
            raise VolumeError(f"volume {name}: unsupported volume type {sorted(vol)}")
        self.paths[name] = path

    def _empty_dir(self, path: str, spec: Obj) -> None:
        os.makedirs(path, exist_ok=True)
        if spec.get("medium") == "Memory" and not os.path.ismount(path):
            opts = "mode=0777"
            if spec.get("sizeLimit"):
                opts += f",size={int(quantity(spec['sizeLimit']))}"
            run("mount", "-t", "tmpfs", "-o", opts, "tmpfs", path)
        else:
            os.chmod(path, 0o777)

    def _host_path(self, spec: Obj) -> str:
        path, kind = spec["path"], spec.get("type", "")
        if kind == "DirectoryOrCreate":
            os.makedirs(path, exist_ok=True)
        elif kind == "FileOrCreate" and not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        elif kind in ("Directory", "File", "Socket", "CharDevice", "BlockDevice") and not (
            os.path.exists(path)
        ):
            raise VolumeError(f"hostPath type check failed: {path} is not a {kind}")
        return str(path)

    def _object_files(self, kind: str, name: str, src: Obj) -> dict[str, tuple[bytes, int | None]]:
        try:
            obj = self.kube.get(ns_path(self.ns, kind, name))
        except ApiError as exc:
            if exc.status == 404 and src.get("optional"):
                return {}
            if exc.status == 404:
                raise VolumeError(f'{kind[:-1]} "{name}" not found') from exc
            raise
        data: dict[str, bytes] = {}
        if kind == "secrets":
            data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        else:
            data = {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
            data.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
        if not src.get("items"):
            return {k: (v, None) for k, v in data.items()}
        files: dict[str, tuple[bytes, int | None]] = {}
        for item in src["items"]:
            if item["key"] not in data:
                if src.get("optional"):
                    continue
                raise VolumeError(f'{kind[:-1]} "{name}" has no key {item["key"]}')
            files[item["path"]] = (data[item["key"]], item.get("mode"))
        return files

    def _downward(self, items: list[Obj], mode: int) -> dict[str, tuple[bytes, int | None]]:
        files: dict[str, tuple[bytes, int | None]] = {}
        meta = self.pod["metadata"]
        for item in items:
            if "fieldRef" not in item:
                continue
            fp = item["fieldRef"]["fieldPath"]
            if fp in ("metadata.labels", "metadata.annotations"):
                kv = meta.get(fp.split(".")[1]) or {}
                text = "\n".join(f'{k}="{v}"' for k, v in sorted(kv.items()))
            else:
                text = field_ref(self.pod, fp, self.pod_ip, self.host_ip)
            files[item["path"]] = (text.encode(), item.get("mode"))
        return files

    def _projected(self, vol_name: str, spec: Obj) -> dict[str, tuple[bytes, int | None]]:
        files: dict[str, tuple[bytes, int | None]] = {}
        for source in spec.get("sources") or []:
            if "serviceAccountToken" in source:
                tok = source["serviceAccountToken"]
                files[tok["path"]] = (self._token(vol_name, tok), 0o600)
            elif "configMap" in source:
                files.update(
                    self._object_files(
                        "configmaps", source["configMap"]["name"], source["configMap"]
                    )
                )
            elif "secret" in source:
                files.update(
                    self._object_files("secrets", source["secret"]["name"], source["secret"])
                )
            elif "downwardAPI" in source:
                files.update(self._downward(source["downwardAPI"].get("items") or [], 0o644))
        return files

    def _token(self, vol_name: str, tok: Obj) -> bytes:
        key = f"{vol_name}/{tok['path']}"
        path = f"{self.root}/{vol_name}/{tok['path']}"
        if key in self._token_due and time.time() < self._token_due[key] and os.path.exists(path):
            with open(path, "rb") as f:
                return f.read()
        ttl = int(tok.get("expirationSeconds", 3607))
        meta = self.pod["metadata"]
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        spec: Obj = {
            "expirationSeconds": ttl,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        }
        if tok.get("audience"):
            spec["audiences"] = [tok["audience"]]
        try:
            resp = self.kube.create(
                ns_path(self.ns, "serviceaccounts", sa) + "/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
            )
        except ApiError as exc:
            raise VolumeError(f"token for service account {sa}: {exc}") from exc
        self._token_due[key] = time.time() + TOKEN_REFRESH_FRACTION * ttl
        return str(resp["status"]["token"]).encode()

    def _write_files(
        self,
        path: str,
        files: dict[str, tuple[bytes, int | None]],
        mode: int,
        default_mode: int | None = None,
    ) -> None:
        os.makedirs(path, exist_ok=True)
        fallback = default_mode if default_mode is not None else mode
        for rel, (data, file_mode) in files.items():
            write_atomic(os.path.join(path, rel), data, file_mode or fallback)
        wanted = {os.path.normpath(os.path.join(path, rel)) for rel in files}
        for dirpath, _, names in os.walk(path):
            for n in names:
                full = os.path.normpath(os.path.join(dirpath, n))
                if full not in wanted:
                    os.unlink(full)

    # --- use -----------------------------------------------------------------------------

    def mounts_for(self, container: Obj) -> list[Mount]:
        mounts: list[Mount] = []
        for vm in container.get("volumeMounts") or []:
            if vm["name"] not in self.paths:
                raise VolumeError(f"volumeMount {vm['name']} has no volume")
            source = self.paths[vm["name"]]
            if vm.get("subPath"):
                source = os.path.join(source, vm["subPath"])
                if not os.path.exists(source):
                    os.makedirs(source, exist_ok=True)
            read_only = bool(vm.get("readOnly")) or vm["name"] in self.read_only
            mounts.append(Mount(source, vm["mountPath"], read_only))
        if SYNTHETIC_SA_VOLUME in self.paths:
            mounts.append(Mount(self.paths[SYNTHETIC_SA_VOLUME], SA_MOUNT_PATH, True))
        taken = {m.target for m in mounts}
        for source, target in (("etc-hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")):
            if target not in taken:
                mounts.append(Mount(f"{self.pod_dir}/{source}", target, False))
        return mounts

    def size_violation(self) -> str | None:
        """Returns an eviction message when a disk-backed emptyDir outgrew its sizeLimit."""
        for vol in self.volumes:
            spec = vol.get("emptyDir")
            if not spec or not spec.get("sizeLimit") or spec.get("medium") == "Memory":
                continue
            out = run("du", "-s", "-B1", self.paths[vol["name"]], check=False).stdout.split()
            if out and int(out[0]) > quantity(spec["sizeLimit"]):
                return (
                    f'Usage of EmptyDir volume "{vol["name"]}" exceeds the limit '
                    f'"{spec["sizeLimit"]}". '
                )
        return None

    def teardown(self) -> None:
        remove_pod_dir(self.pod_dir)


def remove_pod_dir(pod_dir: str) -> None:
    """Unmounts whatever is mounted below pod_dir (tmpfs emptyDirs), then deletes it."""
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f]
    for point in sorted(points, reverse=True):
        if point == pod_dir or point.startswith(pod_dir + "/"):
            run("umount", "-l", point, check=False)
    shutil.rmtree(pod_dir, ignore_errors=True)


def _sa_volume() -> Obj:
    return {
        "name": SYNTHETIC_SA_VOLUME,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
                {
                    "downwardAPI": {
                        "items": [
                            {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                        ]
                    }
                },
            ],
        },
    }
