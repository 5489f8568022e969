"""The Debian mirror hack/images.sh debootstraps from, read from this machine's apt sources
(stdlib only: it runs on the machine's python3, before any venv).

apt reads `sources.list` and then `sources.list.d/*.list` (one-line format) and
`sources.list.d/*.sources` (deb822 format), in that order. The mirror is the first enabled `deb`
source that lists the suite asked for (bookworm); failing that, the first one whose URI is a
Debian archive (its path ends in /debian), which carries every current release.

    python3 hack/aptmirror.py [--apt-dir /etc/apt] [--suite bookworm]
prints the mirror's URI, or exits 1 saying why none was found.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# What debootstrap can fetch from (apt's mirror+, cdrom:, tor+ ... are apt's own).
SCHEMES = ("http", "https", "file")


@dataclass(frozen=True)
class Source:
    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    origin: str  # the file it came from, for messages
    enabled: bool = True


def parse_one_line(text: str, origin: str = "") -> list[Source]:
    """`deb [option=value ...] URI SUITE [COMPONENT ...]` lines."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        kind, rest = words[0], words[1:]
        if rest and rest[0].startswith("["):
            # Options: "[arch=amd64 signed-by=...]", possibly spread over several words.
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) < 2:
            continue
        out.append(Source((kind,), (rest[0],), (rest[1],), origin))
    return out


def parse_deb822(text: str, origin: str = "") -> list[Source]:
    """Stanzas of `Field: value` separated by blank lines; `#` lines are comments, lines that
    start with white space continue the field above."""
    out = []
    for stanza in _stanzas(text):
        fields: dict[str, str] = {}
        last = None
        for line in stanza:
            if line[0] in " \t" and last is not None:
                fields[last] += " " + line.strip()
            elif ":" in line:
                name, value = line.split(":", 1)
                last = name.strip().lower()
                fields[last] = value.strip()
        if "types" not in fields or "uris" not in fields:
            continue
        out.append(
            Source(
                tuple(fields["types"].split()),
                tuple(fields["uris"].split()),
                tuple(fields.get("suites", "").split()),
                origin,
                enabled=fields.get("enabled", "yes").strip().lower() not in {"no", "false", "0"},
            )
        )
    return out


def _stanzas(text: str) -> list[list[str]]:
    stanzas: list[list[str]] = [[]]
    for raw in text.splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if not raw.strip():
            if stanzas[-1]:
                stanzas.append([])
            continue
        stanzas[-1].append(raw.rstrip())
    return [s for s in stanzas if s]


def read_sources(apt_dir: Path) -> list[Source]:
    """Every source under `apt_dir` (normally /etc/apt), in the order apt reads them."""
    out = []
    main = apt_dir / "sources.list"
    if main.is_file():
        out += parse_one_line(main.read_text(errors="replace"), str(main))
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if not path.is_file():
                continue
            if path.suffix == ".list":
                out += parse_one_line(path.read_text(errors="replace"), str(path))
            elif path.suffix == ".sources":
                out += parse_deb822(path.read_text(errors="replace"), str(path))
    return out


def _usable(uri: str) -> bool:
    return urlsplit(uri).scheme in SCHEMES


def debian_mirror(sources: list[Source], suite: str) -> str | None:
    """The first enabled deb source listing `suite`, else the first Debian archive; or None."""
    binary = [s for s in sources if s.enabled and "deb" in s.types]
    for source in binary:
        if suite in source.suites:
            for uri in source.uris:
                if _usable(uri):
                    return uri.rstrip("/")
    for source in binary:
        for uri in source.uris:
            if _usable(uri) and urlsplit(uri).path.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apt-dir", type=Path, default=Path("/etc/apt"))
    parser.add_argument("--suite", default="bookworm")
    args = parser.parse_args(argv)
    mirror = debian_mirror(read_sources(args.apt_dir), args.suite)
    if mirror is None:
        print(
            "[images] no Debian mirror in this machine's apt sources "
            f"({args.apt_dir}/sources.list, {args.apt_dir}/sources.list.d/*.list and *.sources): "
            f"none lists {args.suite} or is a "
            "Debian archive (a URI ending in /debian). Set DEBIAN_MIRROR to the URL of a Debian "
            f"mirror that serves {args.suite}.",
            file=sys.stderr,
        )
        return 1
    print(mirror)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
