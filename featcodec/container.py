"""The ``.fcb`` container: magic, version, a JSON header and one section per sample.

Byte layout (all integers little-endian; see docs/FORMAT.md)::

    offset      size     field
    0           8        magic  89 46 43 42 0D 0A 1A 0A  ("\\x89FCB\\r\\n\\x1a\\n")
    8           2        format version (uint16) = 1
    10          2        flags (uint16), reserved, 0
    12          4        header length H (uint32), at most MAX_HEADER_BYTES
    16          4        section count N (uint32), at most MAX_SAMPLES
    20          H        header: UTF-8 JSON object
    20+H        12*N     index: per section, payload length (uint64) and payload CRC32 (uint32)
    20+H+12N    4        CRC32 of every byte before it
    24+H+12N    …        the N payloads back to back; the file ends with the last one

Streamed layout (flags bit 0 set), written sample by sample when the count is not known in
advance (``featcodec encode - --stream``)::

    0           20       preamble as above, flags = 1, section count 0
    20          H        header: as above, but "shape" is [0, C, H, W] and there is no "samples"
    20+H        4        CRC32 of every byte before it
    then per sample      info length I (uint32), info CRC32 (uint32), payload length P (uint64),
                         payload CRC32 (uint32), I bytes of side information (JSON), P bytes
    end                  a record with I = P = 0, its info CRC field holding the sample count

A reader emits each sample as its record completes; a stream cut anywhere decodes every
complete sample before the cut and then reports where it was cut. `Bitstream.parse` reads
either layout into the same object (the header completed from the records).

Every length is checked against what is left of the file before it is used, and the
declared tensor shape is bounded, so a corrupted or hostile file cannot make the
reader allocate more than the file's own size plus one decoded sample.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CorruptStreamError, UnsupportedFormatError

MAGIC = b"\x89FCB\r\n\x1a\n"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 16 << 20
MAX_SAMPLES = 1 << 24
MAX_ELEMENTS_PER_SAMPLE = 1 << 31
DTYPES = ("float16", "float32", "float64")
LAYOUTS = ("nchw", "nhwc")

FLAG_STREAMED = 1
_PREAMBLE = struct.Struct("<8sHHII")
_RECORD = struct.Struct("<IIQI")
_INDEX_ENTRY = struct.Struct("<QI")
_CRC = struct.Struct("<I")
_REQUIRED = {"codec": dict, "shape": list, "dtype": str, "layout": str, "batched": bool, "samples": list}


def crc32(data) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _json_bytes(value: dict[str, Any]) -> bytes:
    """Compact, key-sorted, strict JSON: the form every header and side information is stored in."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _header_bytes(header: dict[str, Any]) -> bytes:
    header_bytes = _json_bytes(header)
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(header_bytes)} bytes exceeds {MAX_HEADER_BYTES}")
    return header_bytes


def pack(header: dict[str, Any], payloads: list[bytes]) -> bytes:
    """Serialise a header and its per-sample payloads into one ``.fcb`` bytestring."""
    header_bytes = _header_bytes(header)
    parts = [_PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(header_bytes), len(payloads)), header_bytes]
    parts += [_INDEX_ENTRY.pack(len(p), crc32(p)) for p in payloads]
    head = b"".join(parts)
    return b"".join([head, _CRC.pack(crc32(head)), *payloads])


def stream_head(header: dict[str, Any]) -> bytes:
    """The preamble and header of a streamed file (`header` without "samples"; "shape" [0, C, H, W])."""
    header_bytes = _header_bytes(header)
    head = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, FLAG_STREAMED, len(header_bytes), 0) + header_bytes
    return head + _CRC.pack(crc32(head))


def stream_record(payload: bytes, info: dict[str, Any]) -> bytes:
    """One sample of a streamed file."""
    info_bytes = _json_bytes(info)
    return _RECORD.pack(len(info_bytes), crc32(info_bytes), len(payload), crc32(payload)) + info_bytes + payload


def stream_end(count: int) -> bytes:
    """The record that closes a streamed file of `count` samples."""
    return _RECORD.pack(0, count & 0xFFFFFFFF, 0, 0)


class StreamCut(CorruptStreamError):
    """A streamed file that ends before its end record; `complete` samples came before the cut."""

    def __init__(self, complete: int, detail: str):
        super().__init__(f"stream cut after {complete} complete sample(s) ({detail})")
        self.complete = complete


def read_stream(read) -> tuple[dict[str, Any], Any]:
    """Read a streamed file through `read(n)` (returns up to n bytes; fewer only at the end):
    the header, and an iterator of (info, payload memory, payload CRC) per sample, in order. The
    iterator raises `StreamCut` where the data ends early and `CorruptStreamError` on damage."""
    preamble = _read_exact(read, _PREAMBLE.size)
    if len(preamble) < _PREAMBLE.size or preamble[:8] != MAGIC:
        raise CorruptStreamError("not a featcodec file (bad magic)" if preamble[:8] != MAGIC[: len(preamble[:8])]
                                 else "truncated file: the preamble is cut")
    magic, version, flags, header_len, _ = _PREAMBLE.unpack(preamble)
    _check_preamble(version, header_len, 0)
    rest = _read_exact(read, header_len + _CRC.size)
    if len(rest) < header_len + _CRC.size:
        raise CorruptStreamError("truncated file: the header is cut")
    (stored,) = _CRC.unpack_from(rest, header_len)
    if stored != crc32(bytes(preamble) + bytes(rest[:header_len])):
        raise CorruptStreamError("header CRC mismatch")
    if flags != FLAG_STREAMED:
        raise UnsupportedFormatError(f"flags {flags:#06x}: not a streamed featcodec file")
    header = _json_object(rest[:header_len], "header")
    if not isinstance(header.get("shape"), list) or len(header["shape"]) != 4:
        raise CorruptStreamError("streamed header needs a shape [0, C, H, W]")

    def records():
        count = 0
        while True:
            head = _read_exact(read, _RECORD.size)
            if len(head) < _RECORD.size:
                raise StreamCut(count, f"{len(head)} of a record's {_RECORD.size} header bytes")
            info_len, info_crc, payload_len, payload_crc = _RECORD.unpack(head)
            if info_len == 0 and payload_len == 0:
                if info_crc != count:
                    raise CorruptStreamError(f"end record counts {info_crc} samples, the stream holds {count}")
                if read(1):
                    raise CorruptStreamError("trailing bytes after the end record")
                return
            if info_len > MAX_HEADER_BYTES or count >= MAX_SAMPLES:
                raise CorruptStreamError(f"implausible sample record (info of {info_len} bytes, sample {count})")
            info_bytes = _read_exact(read, info_len)
            if len(info_bytes) < info_len:
                raise StreamCut(count, "inside a sample's side information")
            if crc32(info_bytes) != info_crc:
                raise CorruptStreamError(f"CRC mismatch in the side information of sample {count}")
            info = _json_object(info_bytes, f"side information of sample {count}")
            payload = _read_exact(read, payload_len)
            if len(payload) < payload_len:
                raise StreamCut(count, f"{len(payload)} of sample {count}'s {payload_len} payload bytes")
            count += 1
            yield info, payload, payload_crc

    return header, records()


READ_CHUNK = 1 << 24


def _read_exact(read, n: int):
    """Up to n bytes from `read`, looping over short reads (a pipe gives what it has). Asked for at
    most READ_CHUNK bytes at a time, so a length a hostile stream declares allocates only as far as
    bytes really arrive."""
    first = read(min(n, READ_CHUNK))
    if len(first) == n or not first:
        return first
    parts, got = [first], len(first)
    while got < n:
        more = read(min(n - got, READ_CHUNK))
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(bytes(p) for p in parts)


def _json_object(raw, what: str):
    try:
        value = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptStreamError(f"{what} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise CorruptStreamError(f"{what} is not a JSON object")
    return value


def _check_preamble(version: int, header_len: int, n_sections: int) -> None:
    if version != FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"format version {version} is not supported (this featcodec reads version {FORMAT_VERSION})"
        )
    if header_len > MAX_HEADER_BYTES or n_sections > MAX_SAMPLES:
        raise CorruptStreamError(f"implausible header length {header_len} or section count {n_sections}")


@dataclass
class Bitstream:
    """A parsed ``.fcb`` file: its header and random access to each sample's payload.

    >>> import featcodec, numpy as np
    >>> stream = Bitstream.parse(featcodec.encode(np.zeros((2, 3, 4, 4), np.float32), "raw"))
    >>> stream.n_samples, stream.header["codec"]["id"], len(stream.payload(1))
    (2, 'raw', 192)
    """

    header: dict[str, Any]
    data: memoryview = field(repr=False)
    offsets: list[int] = field(repr=False)
    lengths: list[int] = field(repr=False)
    crcs: list[int] = field(repr=False)

    @property
    def n_samples(self) -> int:
        return len(self.lengths)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.header["shape"][-3:])

    @property
    def group_starts(self) -> list[int]:
        """The samples that start a group (decode from one of them): the header's ``groups`` index,
        or every sample when the codec codes each alone."""
        return self.header.get("groups") or list(range(self.n_samples))

    def payload(self, index: int) -> bytes:
        """The payload of sample `index`, CRC-checked; the others are not read."""
        if not -self.n_samples <= index < self.n_samples:
            raise IndexError(f"sample {index} out of range: the file holds {self.n_samples}")
        index %= self.n_samples
        start = self.offsets[index]
        chunk = bytes(self.data[start : start + self.lengths[index]])
        if crc32(chunk) != self.crcs[index]:
            raise CorruptStreamError(
                f"CRC mismatch in sample {index}: stored {self.crcs[index]:08x}, computed {crc32(chunk):08x}"
            )
        return chunk

    @classmethod
    def parse(cls, data) -> Bitstream:
        """Parse and validate the preamble, header and index of `data` (bytes-like)."""
        data = memoryview(data).cast("B")
        if len(data) < _PREAMBLE.size:
            if bytes(data) != MAGIC[: len(data)]:
                raise CorruptStreamError("not a featcodec file (bad magic)")
            raise CorruptStreamError(f"truncated file: {len(data)} bytes, the preamble alone is {_PREAMBLE.size}")
        magic, version, flags, header_len, n_sections = _PREAMBLE.unpack_from(data)
        if magic != MAGIC:
            raise CorruptStreamError("not a featcodec file (bad magic)")
        _check_preamble(version, header_len, n_sections)
        if flags == FLAG_STREAMED:
            return cls._parse_streamed(data)
        index_start = _PREAMBLE.size + header_len
        head_end = index_start + n_sections * _INDEX_ENTRY.size
        if len(data) < head_end + _CRC.size:
            raise CorruptStreamError(f"truncated file: {len(data)} bytes, its header needs {head_end + _CRC.size}")
        (stored_crc,) = _CRC.unpack_from(data, head_end)
        computed_crc = crc32(data[:head_end])
        if stored_crc != computed_crc:
            raise CorruptStreamError(f"header CRC mismatch: stored {stored_crc:08x}, computed {computed_crc:08x}")
        if flags != 0:
            raise UnsupportedFormatError(f"unknown flags {flags:#06x}: written by a newer featcodec?")
        try:
            header = json.loads(bytes(data[_PREAMBLE.size : index_start]))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptStreamError(f"header is not valid JSON: {err}") from err
        lengths, crcs, offsets = [], [], []
        position = head_end + _CRC.size
        for i in range(n_sections):
            length, crc = _INDEX_ENTRY.unpack_from(data, index_start + i * _INDEX_ENTRY.size)
            offsets.append(position)
            lengths.append(length)
            crcs.append(crc)
            position += length
        if position != len(data):
            what = "truncated" if position > len(data) else "trailing bytes in"
            raise CorruptStreamError(f"{what} file: sections end at byte {position}, file has {len(data)}")
        stream = cls(header, data, offsets, lengths, crcs)
        stream._validate_header()
        return stream

    @classmethod
    def _parse_streamed(cls, data: memoryview) -> Bitstream:
        position = 0

        def read(n: int):
            nonlocal position
            chunk = data[position : position + n]
            position += len(chunk)
            return chunk

        header, records = read_stream(read)
        infos, offsets, lengths, crcs = [], [], [], []
        for info, payload, payload_crc in records:
            infos.append(info)
            offsets.append(position - len(payload))
            lengths.append(len(payload))
            crcs.append(payload_crc)
        header = dict(header)
        header["shape"] = [len(infos), *header["shape"][1:]]
        header["samples"] = infos
        gop = header.get("codec", {}).get("gop", 1) if isinstance(header.get("codec"), dict) else 1
        if isinstance(gop, int) and not isinstance(gop, bool) and gop > 1 and infos:
            header["groups"] = list(range(0, len(infos), gop))
        stream = cls(header, data, offsets, lengths, crcs)
        stream._validate_header()
        return stream

    def _validate_header(self) -> None:
        h = self.header
        if not isinstance(h, dict):
            raise CorruptStreamError("header is not a JSON object")
        for key, kind in _REQUIRED.items():
            if not isinstance(h.get(key), kind):
                raise CorruptStreamError(f"header field {key!r} missing or not a {kind.__name__}")
        shape = h["shape"]
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise CorruptStreamError(f"header shape {shape} is not a list of non-negative integers")
        if len(shape) != (4 if h["batched"] else 3):
            raise CorruptStreamError(f"header shape {shape} does not match batched={h['batched']}")
        n = shape[0] if h["batched"] else 1
        if n != self.n_samples or len(h["samples"]) != n:
            raise CorruptStreamError(f"header declares {n} samples, the file indexes {self.n_samples}")
        if not all(isinstance(info, dict) for info in h["samples"]):
            raise CorruptStreamError("header samples must be JSON objects (each sample's side information)")
        # Python ints do not overflow, so a hostile shape is caught here before any allocation.
        if int(np.prod(shape[-3:], dtype=object)) > MAX_ELEMENTS_PER_SAMPLE:
            raise CorruptStreamError(f"declared sample shape {shape[-3:]} exceeds {MAX_ELEMENTS_PER_SAMPLE} elements")
        groups = h.get("groups")
        if groups is not None and not (
                isinstance(groups, list) and groups and groups[0] == 0
                and all(isinstance(g, int) and not isinstance(g, bool) for g in groups)
                and all(a < b for a, b in zip(groups, groups[1:])) and groups[-1] < max(n, 1)):
            raise CorruptStreamError("header groups must be increasing sample indices from 0")
        if h["dtype"] not in DTYPES or h["layout"] not in LAYOUTS:
            raise CorruptStreamError(f"unknown dtype {h['dtype']!r} or layout {h['layout']!r} in header")
