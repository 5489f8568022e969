"""Container launcher: runs as the container's first process, then execs the container command.

Invoked as `python -I launch.py SPEC.json` in a new session (process group) by runner.py. In
order it: joins the container's cgroup (so every descendant can be found and killed), enters the
pod's network namespace, unshares a private mount and UTS namespace, bind-mounts each volume at
its mountPath (creating the target if missing, read-only where asked), sets the hostname to the
pod name, changes to workingDir and execs the command. Standard library only, single-threaded.

Every volume source and every `keep` path (the venv and the checkout that stand in for the image)
is opened before the first mount and mounted from its descriptor: a volume mounted over one of
their parents (an emptyDir at /tmp, with the checkout under /tmp) then hides nothing they need;
a kept path that a mount did shadow is bound again at its own path.
"""

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

libc = ctypes.CDLL(None, use_errno=True)


def check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src: str, dst: str, flags: int) -> None:
    check(libc.mount(src.encode(), dst.encode(), None, flags, None), f"mount {src} {dst}")


def _same(path: str, fd: int) -> bool:
    """`path` still names the directory `fd` was opened on (no mount hid it)."""
    try:
        now = os.stat(path)
    except OSError:
        return False
    was = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (was.st_dev, was.st_ino)


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    if spec.get("cgroup"):
        with open(os.path.join(spec["cgroup"], "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    if spec.get("netns"):
        fd = os.open(spec["netns"], os.O_RDONLY)
        check(libc.setns(fd, CLONE_NEWNET), "setns")
        os.close(fd)
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    mount("none", "/", MS_REC | MS_PRIVATE)
    hostname = spec["hostname"][:63].encode()
    check(libc.sethostname(hostname, len(hostname)), "sethostname")
    sources = [os.open(m["source"], os.O_PATH) for m in spec["mounts"]]
    kept = [(p, os.open(p, os.O_PATH)) for p in spec.get("keep", []) if os.path.isdir(p)]
    for m, fd in zip(spec["mounts"], sources, strict=True):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(m["target"], exist_ok=True)
        elif not os.path.exists(m["target"]):
            os.makedirs(os.path.dirname(m["target"]), exist_ok=True)
            open(m["target"], "a").close()
        mount(f"/proc/self/fd/{fd}", m["target"], MS_BIND | MS_REC)
        if m["readOnly"]:
            mount("none", m["target"], MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
    for path, fd in kept:
        if not _same(path, fd):
            os.makedirs(path, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, MS_BIND | MS_REC)
    if spec.get("workingDir"):
        os.makedirs(spec["workingDir"], exist_ok=True)
        os.chdir(spec["workingDir"])
    argv, env = spec["argv"], spec["env"]
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        sys.stderr.write(f"processnode: cannot start {argv[0]!r}: {exc}\n")
        sys.exit(128)


if __name__ == "__main__":
    try:
        main()
    except OSError as exc:
        sys.stderr.write(f"processnode: container setup failed: {exc}\n")
        sys.exit(128)
