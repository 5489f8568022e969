"""Pod sandboxes: one network namespace, veth and IP per pod (or loopback IPs as a loud fallback).

Layout (shared with hack/cluster.sh): bridge lpbr0 holds 10.244.0.1/16 on the host; each pod gets
netns `lp-<8 hex of uid>`, a veth whose host end `lpv<8 hex>` is enslaved to lpbr0 and whose pod end
is `eth0`, an address from 10.244.1.0 .. 10.244.255.254 and a default route via 10.244.0.1.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import threading
from dataclasses import dataclass

from .util import run

log = logging.getLogger(__name__)

BRIDGE = "lpbr0"
GATEWAY = "10.244.0.1"
PREFIX_LEN = 16
FIRST_IP = int(ipaddress.IPv4Address("10.244.1.0"))
LAST_IP = int(ipaddress.IPv4Address("10.244.255.254"))
LOOPBACK_FIRST = int(ipaddress.IPv4Address("127.0.1.2"))
LOOPBACK_LAST = int(ipaddress.IPv4Address("127.0.1.254"))


@dataclass
class Sandbox:
    uid: str
    ip: str
    netns: str | None  # None in loopback fallback mode

    @property
    def netns_path(self) -> str | None:
        return f"/run/netns/{self.netns}" if self.netns else None


def short_id(uid: str) -> str:
    return uid.replace("-", "")[:8]


class Network:
    """Allocates pod IPs and creates/destroys sandboxes. Thread-safe."""

    def __init__(self, first_ip: str = "10.244.1.0") -> None:
        self._lock = threading.Lock()
        self._by_uid: dict[str, str] = {}
        self._first = int(ipaddress.IPv4Address(first_ip))
        if not FIRST_IP <= self._first <= LAST_IP:
            raise ValueError(f"first pod IP {first_ip} is outside 10.244.1.0-10.244.255.254")
        # x.y.z.0 is a valid address in a /16, but it looks like a network: start after it.
        self._cursor = self._first + 1 if self._first % 256 == 0 else self._first
        self.mode = "netns"

    def start(self, mode: str = "auto") -> None:
        if mode == "loopback":
            self.mode = "loopback"
            log.error("POD NETWORK FORCED TO LOOPBACK FALLBACK (--network loopback): 127.0.1.x")
            return
        try:
            self._ensure_bridge()
            test = f"lp-selftest-{os.getpid()}"
            run("ip", "netns", "add", test)
            run("ip", "netns", "del", test)
        except Exception as exc:  # whatever fails, there are no usable netns
            if mode == "netns":
                raise
            self.mode = "loopback"
            banner = "!" * 78
            log.error(
                "%s\nNETWORK NAMESPACES UNAVAILABLE (%s).\nFALLING BACK TO ONE LOOPBACK IP PER "
                "POD (127.0.1.x): pods share the host network stack, ports can collide and pod "
                "IPs are reachable only from this host.\n%s",
                banner,
                exc,
                banner,
            )
        log.info("pod network mode: %s", self.mode)

    def _ensure_bridge(self) -> None:
        if os.path.exists(f"/sys/class/net/{BRIDGE}"):
            return
        log.warning("bridge %s missing (hack/cluster.sh normally creates it); creating it", BRIDGE)
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{GATEWAY}/{PREFIX_LEN}", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")

    def _allocate(self, uid: str) -> str:
        with self._lock:
            if uid in self._by_uid:
                return self._by_uid[uid]
            first, last = (
                (self._first, LAST_IP) if self.mode == "netns" else (LOOPBACK_FIRST, LOOPBACK_LAST)
            )
            if not first <= self._cursor <= last:
                self._cursor = first
            used = set(self._by_uid.values())
            # Next-fit, so a freed address is not handed out again at once (stale ARP entries).
            for _ in range(last - first + 1):
                candidate = str(ipaddress.IPv4Address(self._cursor))
                self._cursor = self._cursor + 1 if self._cursor < last else first
                if candidate not in used:
                    self._by_uid[uid] = candidate
                    return candidate
            raise RuntimeError("pod IP range exhausted")

    def _release(self, uid: str) -> None:
        with self._lock:
            self._by_uid.pop(uid, None)

    def setup(self, uid: str) -> Sandbox:
        ip = self._allocate(uid)
        if self.mode == "loopback":
            log.warning("pod %s gets loopback IP %s (no network namespace)", uid, ip)
            return Sandbox(uid, ip, None)
        sid = short_id(uid)
        netns, host_if, pod_if = f"lp-{sid}", f"lpv{sid}", f"lpp{sid}"
        try:
            self._delete_links(netns, host_if)
            run("ip", "netns", "add", netns)
            run("ip", "link", "add", host_if, "type", "veth", "peer", "name", pod_if)
            run("ip", "link", "set", pod_if, "netns", netns)
            run("ip", "link", "set", host_if, "master", BRIDGE, "up")
            run("ip", "-n", netns, "link", "set", pod_if, "name", "eth0")
            run("ip", "-n", netns, "addr", "add", f"{ip}/{PREFIX_LEN}", "dev", "eth0")
            run("ip", "-n", netns, "link", "set", "eth0", "up")
            run("ip", "-n", netns, "link", "set", "lo", "up")
            run("ip", "-n", netns, "route", "add", "default", "via", GATEWAY)
            # The address may have belonged to a deleted pod: forget its old MAC on the host.
            run("ip", "neigh", "del", ip, "dev", BRIDGE, check=False)
        except Exception:
            self._delete_links(netns, host_if)
            self._release(uid)
            raise
        return Sandbox(uid, ip, netns)

    def teardown(self, sandbox: Sandbox) -> None:
        if sandbox.netns:
            self._kill_netns_pids(sandbox.netns)
            self._delete_links(sandbox.netns, f"lpv{short_id(sandbox.uid)}")
        self._release(sandbox.uid)

    @staticmethod
    def _delete_links(netns: str, host_if: str) -> None:
        run("ip", "link", "del", host_if, check=False)
        run("ip", "netns", "del", netns, check=False)

    @staticmethod
    def _kill_netns_pids(netns: str) -> None:
        out = run("ip", "netns", "pids", netns, check=False).stdout
        for pid in out.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)

    def remove_stale(self, uid: str) -> None:
        """Removes the sandbox an earlier run of the node left for pod uid, if any."""
        sid = short_id(uid)
        netns = f"lp-{sid}"
        if os.path.exists(f"/run/netns/{netns}"):
            log.info("removing leftover network namespace %s", netns)
            self._kill_netns_pids(netns)
        self._delete_links(netns, f"lpv{sid}")
