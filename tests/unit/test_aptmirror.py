"""hack/aptmirror.py: the Debian mirror hack/images.sh debootstraps from, read from apt's sources
in both of apt's formats."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aptmirror import debian_mirror, parse_deb822, parse_one_line, read_sources

from tests.conftest import REPO

SCRIPT = REPO / "hack" / "aptmirror.py"

ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] https://one.example/debian/ bookworm main
deb-src http://src.example/debian bookworm main
deb http://one.example/debian-security bookworm-security main  # trailing comment
"""

DEB822 = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://two.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://two.example/debian-security
Suites: bookworm-security
Components: main
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_one_line_format_skips_comments_options_and_deb_src() -> None:
    sources = parse_one_line(ONE_LINE)
    assert [(s.types, s.uris, s.suites) for s in sources] == [
        (("deb",), ("https://one.example/debian/",), ("bookworm",)),
        (("deb-src",), ("http://src.example/debian",), ("bookworm",)),
        (("deb",), ("http://one.example/debian-security",), ("bookworm-security",)),
    ]
    assert debian_mirror(sources, "bookworm") == "https://one.example/debian"


def test_deb822_format_with_comments_inside_a_stanza() -> None:
    sources = parse_deb822(DEB822)
    assert [(s.types, s.uris, s.suites) for s in sources] == [
        (("deb",), ("http://two.example/debian",), ("bookworm", "bookworm-updates")),
        (("deb",), ("http://two.example/debian-security",), ("bookworm-security",)),
    ]
    assert debian_mirror(sources, "bookworm") == "http://two.example/debian"


def test_deb822_multi_value_fields_continuation_lines_and_enabled_no() -> None:
    text = (
        "Types: deb-src deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb-src deb\nURIs: mirror+file:/etc/apt/mirrors.txt\n http://three.example/debian\n"
        "Suites: bookworm\n"
    )
    sources = parse_deb822(text)
    assert not sources[0].enabled
    assert sources[1].uris == ("mirror+file:/etc/apt/mirrors.txt", "http://three.example/debian")
    # Disabled sources and URIs debootstrap cannot fetch from are passed over.
    assert debian_mirror(sources, "bookworm") == "http://three.example/debian"


def test_another_release_falls_back_to_a_debian_archive_uri() -> None:
    sources = parse_deb822(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: trixie-security\n\n"
        "Types: deb\nURIs: http://four.example/debian/\nSuites: trixie trixie-updates\n"
    )
    assert debian_mirror(sources, "bookworm") == "http://four.example/debian"


def test_no_debian_source_gives_none() -> None:
    ubuntu = parse_one_line("deb http://archive.example/ubuntu noble main universe\n")
    assert debian_mirror(ubuntu, "bookworm") is None
    assert debian_mirror([], "bookworm") is None


def test_read_sources_in_apts_order_and_only_list_and_sources_files(tmp_path: Path) -> None:
    apt = write(
        tmp_path,
        {
            "sources.list": "deb http://first.example/debian bookworm main\n",
            "sources.list.d/a.sources": DEB822,
            "sources.list.d/b.list": ONE_LINE,
            "sources.list.d/c.list.disabled": "deb http://off.example/debian bookworm main\n",
            "sources.list.d/d.save": "deb http://off.example/debian bookworm main\n",
        },
    )
    origins = [Path(s.origin).name for s in read_sources(apt)]
    assert origins == ["sources.list", "a.sources", "a.sources", "b.list", "b.list", "b.list"]
    assert debian_mirror(read_sources(apt), "bookworm") == "http://first.example/debian"


def test_the_command_prints_the_mirror_or_says_what_to_set(tmp_path: Path) -> None:
    apt = write(tmp_path / "ok", {"sources.list.d/debian.sources": DEB822})
    run = [sys.executable, str(SCRIPT), "--apt-dir"]
    out = subprocess.run([*run, str(apt)], capture_output=True, text=True, check=True)
    assert out.stdout == "http://two.example/debian\n"

    empty = write(tmp_path / "empty", {"sources.list": "# nothing\n"})
    proc = subprocess.run([*run, str(empty)], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "DEBIAN_MIRROR" in proc.stderr and str(empty) in proc.stderr


def test_images_sh_names_no_mirror_host() -> None:
    text = (REPO / "hack" / "images.sh").read_text()
    assert "DEBIAN_MIRROR:-h" not in text  # no mirror written into the script
    assert "${DEBIAN_MIRROR:-}" in text and "aptmirror.py" in text
