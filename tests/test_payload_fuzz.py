"""Hostile payloads past the CRCs: a crafted file carries valid CRCs, so every codec's decoder sees
mutated bytes directly. Each decode must end in a result or a featcodec error, never another
exception, a crash or a hang."""

import struct
import zlib

import numpy as np
import pytest

import featcodec
from featcodec.container import Bitstream, pack
from featcodec.errors import FeatcodecError
from tests.common import relu_activations
from tests.test_codecs import make_input

# (codec, parameters, input shape, mutations): HEVC decodes are slower (ffmpeg or PyAV), so fewer of them.
CASES = [
    ("raw", {}, (1, 3, 8, 8), 1000),
    ("raw", {"dtype": "float16", "zstd": 9}, (1, 3, 8, 8), 1000),
    ("uniform", {"levels": 6}, (1, 3, 8, 8), 1000),
    ("lightweight", {"levels": 6}, (1, 6, 16, 16), 2000),
    ("lightweight", {"levels": 16}, (1, 6, 16, 16), 2000),
    ("tiling", {"preset": "ultrafast"}, (1, 4, 16, 16), 200),
    ("fpc", {"preset": "ultrafast"}, (1, 2, 16, 16), 200),
    ("autotiler", {"preset": "ultrafast", "cr": 16}, (1, 24, 16, 16), 200),
]


def mutate(payload: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(payload)
    kind = rng.integers(4)
    if kind == 0 and len(data) > 1:  # truncate
        data = data[: rng.integers(len(data))]
    elif kind == 1:  # flip bits
        for _ in range(rng.integers(1, 5)):
            data[rng.integers(len(data))] ^= 1 << rng.integers(8)
    elif kind == 2:  # overwrite a run
        at = rng.integers(len(data))
        data[at : at + 8] = rng.integers(0, 256, 8).astype(np.uint8).tobytes()
    else:  # insert bytes
        at = rng.integers(len(data) + 1)
        data[at:at] = rng.integers(0, 256, rng.integers(1, 16)).astype(np.uint8).tobytes()
    return bytes(data)


def with_inner_crc(codec_id: str, payload: bytes) -> bytes:
    """HEVC payloads carry their own CRC32 in front: recompute it too, as an attacker would."""
    if codec_id in ("tiling", "fpc", "autotiler") and len(payload) >= 4:
        return struct.pack("<I", zlib.crc32(payload[4:]) & 0xFFFFFFFF) + payload[4:]
    return payload


@pytest.mark.parametrize("codec_id,params,shape,runs", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_mutated_payloads_with_valid_crcs(codec_id, params, shape, runs):
    x = make_input(codec_id, shape) if codec_id == "autotiler" else relu_activations(shape, seed=3)
    stream = Bitstream.parse(featcodec.encode(x, codec_id, **params))
    rng = np.random.default_rng(2026)
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(runs):
        payload = with_inner_crc(codec_id, mutate(stream.payload(0), rng))
        blob = pack(stream.header, [payload])  # fresh section and header CRCs
        try:
            y = featcodec.decode(blob)
            assert y.shape == x.shape and y.dtype == x.dtype
            outcomes["decoded"] += 1
        except FeatcodecError:
            outcomes["refused"] += 1
    assert sum(outcomes.values()) == runs


# Sequences: one sample of a group mutated (the HEVC ones carry their inner CRC, recomputed; FPC's
# covers its access-unit lengths too).
SEQUENCE_CASES = [
    ("lightweight", {"levels": 6, "gop": 3}, (3, 6, 16, 16), 1500),
    ("tiling", {"preset": "ultrafast", "gop": 3}, (3, 4, 16, 16), 150),
    ("fpc", {"preset": "ultrafast", "gop": 3}, (3, 2, 16, 16), 150),
]


@pytest.mark.parametrize("codec_id,params,shape,runs", SEQUENCE_CASES, ids=[c[0] for c in SEQUENCE_CASES])
def test_mutated_sequence_payloads_with_valid_crcs(codec_id, params, shape, runs):
    x = relu_activations(shape, seed=4)
    stream = Bitstream.parse(featcodec.encode(x, codec_id, **params))
    payloads = [stream.payload(i) for i in range(stream.n_samples)]
    rng = np.random.default_rng(2027)
    outcomes = {"decoded": 0, "refused": 0}
    for run in range(runs):
        which = run % len(payloads)
        mutated = list(payloads)
        mutated[which] = with_inner_crc(codec_id, mutate(payloads[which], rng))
        try:
            y = featcodec.decode(pack(stream.header, mutated))
            assert y.shape == x.shape and y.dtype == x.dtype
            outcomes["decoded"] += 1
        except FeatcodecError:
            outcomes["refused"] += 1
    assert sum(outcomes.values()) == runs and outcomes["refused"] > 0
