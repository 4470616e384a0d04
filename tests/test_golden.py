"""Golden files pin encoders as well as decoders: fixed input and parameters give exact bytes.

A change in any codec's output must be a deliberate new format version (a new golden file),
never an accident. The inputs are rebuilt by `tests/data/make_golden.py`, which wrote the files.
"""

import numpy as np
import pytest

import featcodec
from featcodec import entropy, video
from featcodec.codecs.learned import CODER_VERSION, symbol_count
from featcodec.container import Bitstream
from featcodec.registry import codec_ids
from tests.common import GOLDEN, check_backwards_compatibility
from tests.data.make_golden import CASES, golden_input

# Lightweight versions 4, 5 and 6 are pinned at the kernel (test_codecs): their files were written when
# the codec designed version 4 tables, then version 5 ones by default, and when `fast` meant version 6.
# The codecs with networks, the auto-tiler and the learned codec, have tests of their own below.
PINNED = sorted(name for name in CASES if CASES[name]["method"] not in ("autotiler", "learned")
                and not (CASES[name]["method"] == "lightweight" and name.endswith(("_v4", "_v5", "_v6"))))


def test_every_codec_has_a_golden_file():
    assert set(codec_ids()) <= {case["method"] for case in CASES.values()}
    for name in CASES:
        assert (GOLDEN / f"{name}.fcb").exists(), f"run: python tests/data/make_golden.py {name}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_file_decodes(name):
    check_backwards_compatibility(name)


@pytest.mark.parametrize("name", PINNED)
def test_encoder_gives_the_golden_bytes(name):
    golden = Bitstream.parse((GOLDEN / f"{name}.fcb").read_bytes())
    data, codec = golden_input(name)
    assert codec.get_config() == golden.header["codec"]
    fresh = Bitstream.parse(featcodec.encode(data, codec, layer="golden/layer:0"))
    assert fresh.header["samples"] == golden.header["samples"]
    for i in range(golden.n_samples):
        assert fresh.payload(i) == golden.payload(i), f"{name} sample {i}: the encoder's bytes changed"


def test_autotiler_encoder_is_pinned():
    """The auto-tiler's HEVC half is pinned byte for byte. Its network half runs in onnxruntime,
    whose float sums may differ in the last bit between CPU instruction sets, so its integer
    latent frame is pinned to the golden one within one step (and almost everywhere exactly)."""
    name = "autotiler_v1"
    golden = Bitstream.parse((GOLDEN / f"{name}.fcb").read_bytes())
    data, codec = golden_input(name)
    assert codec.get_config() == golden.header["codec"]
    info = golden.header["samples"][0]
    count, height, width = info["frame"]
    payload = golden.payload(0)
    golden_frame = video.decode_frames(payload[4:], count, height, width, codec.bitdepth)[0]  # lossless
    frame, frame_info = codec.latent_frame(data[0])
    assert {k: info[k] for k in frame_info} == frame_info
    assert np.abs(frame.astype(int) - golden_frame[: frame.shape[0], : frame.shape[1]]).max() <= 1
    assert np.mean(frame == golden_frame[: frame.shape[0], : frame.shape[1]]) >= 0.999
    stream, video_info = codec._code_frames(golden_frame[None, : frame.shape[0], : frame.shape[1]])
    assert stream == payload
    assert {k: info[k] for k in video_info if k != "kbits"} == {k: v for k, v in video_info.items() if k != "kbits"}


def test_learned_encoder_is_pinned():
    """The learned codec's symbols are pinned within one step of the golden ones (its encoder runs in
    onnxruntime, as the auto-tiler's does), and the kernel codes the golden symbols to the golden bytes."""
    name = "learned_v1"
    golden = Bitstream.parse((GOLDEN / f"{name}.fcb").read_bytes())
    data, codec = golden_input(name)
    assert codec.get_config() == golden.header["codec"]
    info = golden.header["samples"][0]
    count = symbol_count(info["step"])
    golden_symbols = entropy.decode_symbols(golden.payload(0), tuple(info["latent"]), count, version=CODER_VERSION)
    _, latent = codec.latent(data[0])
    symbols = np.clip(np.rint(latent / info["step"]), 0, count - 1).astype(np.uint8)
    assert np.abs(symbols.astype(int) - golden_symbols).max() <= 1
    assert np.mean(symbols == golden_symbols) >= 0.999
    assert entropy.encode_symbols(golden_symbols, count, version=CODER_VERSION) == golden.payload(0)
