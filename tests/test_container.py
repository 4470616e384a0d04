"""The .fcb container: layout, CRCs, truncation, corruption, bounds."""

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import featcodec
from featcodec.container import FORMAT_VERSION, MAGIC, MAX_ELEMENTS_PER_SAMPLE, Bitstream, crc32, pack
from featcodec.errors import CorruptStreamError, FeatcodecError, UnsupportedFormatError

SMALL = featcodec.encode(np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3), "uniform", levels=4)


def test_layout_matches_docs():
    assert SMALL[:8] == MAGIC
    version, flags, header_len, n = struct.unpack_from("<HHII", SMALL, 8)
    assert (version, flags, n) == (FORMAT_VERSION, 0, 2)
    header = json.loads(SMALL[20 : 20 + header_len])
    assert header["shape"] == [2, 2, 3, 3]
    index_end = 20 + header_len + 12 * n
    assert struct.unpack_from("<I", SMALL, index_end)[0] == crc32(SMALL[:index_end])
    lengths = [struct.unpack_from("<QI", SMALL, 20 + header_len + 12 * i)[0] for i in range(n)]
    assert index_end + 4 + sum(lengths) == len(SMALL)


def test_sample_read_alone_does_not_touch_others():
    stream = Bitstream.parse(SMALL)
    corrupted = bytearray(SMALL)
    corrupted[stream.offsets[1]] ^= 0xFF  # damage sample 1 only
    np.testing.assert_array_equal(featcodec.decode(bytes(corrupted), sample=0), featcodec.decode(SMALL, sample=0))
    with pytest.raises(CorruptStreamError, match="CRC mismatch in sample 1"):
        featcodec.decode(bytes(corrupted))


@pytest.mark.parametrize("cut", range(len(SMALL)))
def test_truncation_at_every_offset(cut):
    with pytest.raises(FeatcodecError):
        featcodec.decode(SMALL[:cut])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(SMALL) - 1), st.integers(0, 7)), min_size=1, max_size=4))
def test_random_bit_flips(flips):
    data = bytearray(SMALL)
    for offset, bit in flips:
        data[offset] ^= 1 << bit
    if bytes(data) == SMALL:
        return  # flips cancelled out
    with pytest.raises(FeatcodecError):
        featcodec.decode(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data):
    with pytest.raises(FeatcodecError):
        featcodec.decode(MAGIC + data)


def _forge(header_changes, payloads=(b"",)):
    header = featcodec.info(featcodec.encode(np.zeros((1, 1, 1), np.float32), "raw"))
    header = {k: header[k] for k in ("featcodec", "codec", "layer", "shape", "batched", "dtype", "layout",
                                     "samples", "models", "payload_bytes", "bits_per_element",
                                     "compression_ratio", "dataset")}
    header.update(header_changes)
    return pack(header, list(payloads))


def test_oversized_declared_shape_refused_before_allocation():
    huge = _forge({"shape": [10**6, 10**6, 10**6], "samples": [{}]}, payloads=[b"\0" * 4])
    with pytest.raises(CorruptStreamError, match="exceeds"):
        featcodec.decode(huge)
    just_over = int(np.sqrt(MAX_ELEMENTS_PER_SAMPLE)) + 1
    with pytest.raises(CorruptStreamError, match="exceeds"):
        featcodec.decode(_forge({"shape": [1, just_over, just_over], "samples": [{}]}, payloads=[b""]))


def test_payload_shorter_than_shape_is_corrupt():
    with pytest.raises(CorruptStreamError, match="raw payload"):
        featcodec.decode(_forge({"shape": [1, 100, 100]}, payloads=[b"\0" * 4]))


def test_unknown_version_and_flags():
    data = bytearray(SMALL)
    data[8:10] = struct.pack("<H", FORMAT_VERSION + 1)
    with pytest.raises(UnsupportedFormatError, match="version 2"):
        featcodec.decode(bytes(data))


def test_bad_magic_and_empty():
    with pytest.raises(CorruptStreamError, match="bad magic"):
        featcodec.decode(b"PK\x03\x04" + SMALL[4:])
    with pytest.raises(CorruptStreamError):
        featcodec.decode(b"")


def test_trailing_bytes_refused():
    with pytest.raises(CorruptStreamError, match="trailing"):
        featcodec.decode(SMALL + b"\0")


def test_header_crc_message_names_both_values():
    data = bytearray(SMALL)
    data[30] ^= 1
    with pytest.raises(CorruptStreamError, match=r"stored [0-9a-f]{8}, computed [0-9a-f]{8}"):
        featcodec.decode(bytes(data))


def test_unknown_codec_in_header():
    data = _forge({"codec": {"id": "from-the-future"}})
    with pytest.raises(featcodec.UnknownCodecError, match="from-the-future"):
        featcodec.decode(data)
