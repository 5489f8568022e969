"""The url source: a tarball, or a directory index, over HTTPS, pinned by sha256.

The pin is the identity: a tarball is checked against it before a byte of it is unpacked, a
directory's files (the adapter digest) before they become a version. Nothing is stored from an
unpinned URL: the API requires the pin.
"""

from __future__ import annotations

import contextlib
import fnmatch
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

from loraplane.adapters.sources.protocol import (
    InvalidArchive,
    SizeBudget,
    SourceContext,
    SourceNotFound,
)
from loraplane.adapters.sources.transfer import (
    Client,
    adapter_root,
    hoist,
    relative_file,
    stream_to_file,
    unpack_tar,
)
from loraplane.adapters.sources.versions import DigestMismatch
from loraplane.api.sources import URLSource

# The files of a directory index that make up an adapter: what vLLM and its tokenizer read.
DIRECTORY_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
    "vocab.json",
    "merges.txt",
)
DOWNLOAD_NAME = ".download"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def index_files(base: str, html: str) -> list[str]:
    """The adapter files an HTML directory listing links to, directly under `base`."""
    parser = _Links()
    parser.feed(html)
    found: set[str] = set()
    for href in parser.hrefs:
        absolute = urllib.parse.urljoin(base, href)
        if not absolute.startswith(base):
            continue
        name = urllib.parse.unquote(absolute[len(base) :].split("?", 1)[0].split("#", 1)[0])
        if name and "/" not in name and any(fnmatch.fnmatch(name, p) for p in DIRECTORY_FILES):
            found.add(name)
    return sorted(found)


class URLFetcher:
    kind = "url"

    def __init__(self, source: URLSource, context: SourceContext) -> None:
        self.url = source.url
        self.sha256 = source.sha256.removeprefix("sha256:")
        # The query may carry a signature (a presigned URL): never in messages.
        self.description = source.url.split("?", 1)[0]
        self._client = Client(context, self.description)

    def resolve(self) -> str:
        return f"{self.description}@{self.sha256}"

    def download(self, staged: Path, budget: SizeBudget) -> str | None:
        if self.description.endswith("/"):
            self._directory(staged, budget)
            return self.sha256
        self._tarball(staged, budget)
        return None

    def _tarball(self, staged: Path, budget: SizeBudget) -> None:
        archive = staged / DOWNLOAD_NAME
        got = stream_to_file(self._client.get(self.url), archive, budget, self.description)
        if got != self.sha256:
            raise DigestMismatch(
                f"{self.description} has sha256 {got}, not the pinned {self.sha256}"
            )
        try:
            # Unpacked sizes count afresh: a small compressed tarball may hold a large adapter.
            unpack_tar(
                archive, staged, SizeBudget(budget.limit, self.description), self.description
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                archive.unlink()
        hoist(staged, adapter_root(staged))

    def _directory(self, staged: Path, budget: SizeBudget) -> None:
        with self._client.get(self.url) as response:
            listing = response.read(4 << 20).decode("utf-8", "replace")
        files = index_files(self.url.split("?", 1)[0], listing)
        if "adapter_config.json" not in files:
            raise SourceNotFound(f"{self.description} lists no adapter_config.json")
        for name in files:
            rel = relative_file(name, self.description)
            response = self._client.get(urllib.parse.urljoin(self.url, urllib.parse.quote(name)))
            stream_to_file(response, staged / rel, budget, self.description)
        if not any(staged.iterdir()):
            raise InvalidArchive(f"{self.description}: no files")
