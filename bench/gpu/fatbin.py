"""Drop the GPU code a card can never run from a shared library's CUDA fat binaries.

vLLM's wheel carries its kernels for every architecture it supports (sm_75 to sm_120), each
architecture's cubin zstd-compressed inside the library's `.nv_fatbin` section, so xz cannot shrink
them. The lent machine's card is an sm_90 (H100/H200), and a cubin runs only on its own major
architecture, so the other cubins are dead weight there: about 35 MiB of the 79 MiB repack.

The section holds one fat binary per translation unit, each found by the address the library
registers, so none may move. Inside each, this keeps the entries the card can use and moves them
to the front, then fills the rest with zeros; the header's size then counts only those. The rule,
per fat binary, for an `arch` card:

- it has a cubin for `arch`: keep those cubins only (the driver prefers a matching cubin to
  compiling PTX, and a fat binary is one module: it never mixes images);
- else it has PTX for `arch` or older: keep that PTX only (the driver compiles it at load);
- else nothing in it runs on the card: leave it as it is.

Layout (as read by cuobjdump and the open parsers of it): a fat binary is a 16-byte header (magic
0xBA55ED50, version, header size, size of what follows), then entries, each a header (kind: 1 PTX,
2 cubin; its header size; its payload size; the architecture at byte 28) and its payload.

`python -m bench.gpu.fatbin --arch 90 LIB...` rewrites the libraries in place and prints what
each lost; the build of the GPU kit (hack/gpu-kit.sh) runs it.
"""

from __future__ import annotations

import argparse
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

MAGIC = 0xBA55ED50
HEADER = struct.Struct("<IHHQ")  # magic, version, header size, size of the entries
ENTRY = struct.Struct("<HHIQ")  # kind, version, header size, payload size
ARCH_OFFSET = 28  # uint32 in an entry's header
PTX, CUBIN = 1, 2
SECTION = ".nv_fatbin"


@dataclass(frozen=True)
class Entry:
    kind: int
    arch: int
    start: int  # offset of the entry's header in the file
    length: int  # header and payload


@dataclass
class Pruned:
    fatbins: int = 0
    kept: int = 0
    dropped: int = 0
    dropped_bytes: int = 0


def section(data: bytes | bytearray, name: str = SECTION) -> tuple[int, int] | None:
    """(offset, size) of an ELF64 little-endian file's section, or None."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        (name_at,) = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name_at, offset, size

    strings = header(shstrndx)[1]
    wanted = name.encode()
    for i in range(shnum):
        name_at, offset, size = header(i)
        start = strings + name_at
        if bytes(data[start : start + len(wanted) + 1]) == wanted + b"\0":
            return offset, size
    return None


def fatbins(data: bytes | bytearray, start: int, end: int) -> list[tuple[int, list[Entry]]]:
    """Each fat binary in [start, end): its offset and entries."""
    out: list[tuple[int, list[Entry]]] = []
    at = start
    while at + HEADER.size <= end:
        magic, _version, header_size, size = HEADER.unpack_from(data, at)
        if magic != MAGIC:
            at += 8  # fat binaries are 8-byte aligned; padding sits between them
            continue
        entries: list[Entry] = []
        cursor, stop = at + header_size, at + header_size + size
        if stop > end:
            raise ValueError(f"fat binary at {at:#x} runs past its section")
        while cursor < stop:
            kind, _v, entry_header, payload = ENTRY.unpack_from(data, cursor)
            (arch,) = struct.unpack_from("<I", data, cursor + ARCH_OFFSET)
            length = entry_header + payload
            if length <= 0 or cursor + length > stop:
                raise ValueError(f"entry at {cursor:#x} runs past its fat binary")
            entries.append(Entry(kind, arch, cursor, length))
            cursor += length
        out.append((at, entries))
        at = stop
    return out


def keep(entries: list[Entry], arch: int) -> list[Entry]:
    """The entries an `arch` card can use (all of them when it can use none)."""
    cubins = [e for e in entries if e.kind == CUBIN and e.arch == arch]
    if cubins:
        return cubins
    ptx = [e for e in entries if e.kind == PTX and e.arch <= arch]
    return ptx or entries


def prune(data: bytearray, arch: int) -> Pruned:
    """Rewrite `data` (a shared library) in place; the file keeps its size and layout."""
    result = Pruned()
    found = section(data)
    if found is None:
        return result
    offset, size = found
    for at, entries in fatbins(data, offset, offset + size):
        result.fatbins += 1
        kept = keep(entries, arch)
        result.kept += len(kept)
        if len(kept) == len(entries):
            continue
        magic, version, header_size, old_size = HEADER.unpack_from(data, at)
        body = b"".join(bytes(data[e.start : e.start + e.length]) for e in kept)
        begin = at + header_size
        data[begin : begin + old_size] = body + bytes(old_size - len(body))
        HEADER.pack_into(data, at, magic, version, header_size, len(body))
        result.dropped += len(entries) - len(kept)
        result.dropped_bytes += old_size - len(body)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, required=True, help="the card's sm number, e.g. 90")
    parser.add_argument("libraries", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.libraries:
        data = bytearray(path.read_bytes())
        result = prune(data, args.arch)
        if result.dropped:
            path.write_bytes(data)
        print(
            f"{path}: {result.fatbins} fat binaries, kept {result.kept} entries, dropped "
            f"{result.dropped} ({result.dropped_bytes / 2**20:.1f} MiB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
