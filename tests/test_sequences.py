"""Feature sequences: video dumps, inter coding (--gop), random access, streaming, cut streams.

The sequences are real: frames of a bundled fixed-webcam clip run through the reference
detector (`featcodec dump`), cropped to a corner of the S4 maps where a test needs speed.
"""

import io
import struct

import h5py
import numpy as np
import pytest

import featcodec
from featcodec import api, entropy
from featcodec.codecs.lightweight import Lightweight
from featcodec.container import Bitstream, StreamCut
from featcodec.errors import CorruptStreamError, FeatcodecError, InvalidInputError
from tests.conftest import run_cli

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "reference" / "centernet_mbv3_coco.onnx"
CLIP = ROOT / "examples" / "video" / "opencv_tree_20s.mp4"  # a fixed webcam, as split computing sees


@pytest.fixture(scope="module")
def video_dump(tmp_path_factory):
    """16 consecutive frames' S4 activations (128 x 128 x 128 each), dumped through the CLI."""
    path = tmp_path_factory.mktemp("video") / "tree.h5"
    run_cli("dump", MODEL, CLIP, "--layer", "S4", "-o", path, "--max-frames", "16", "--compression", "lzf",
            check=True)
    return path


@pytest.fixture(scope="module")
def frames(video_dump):
    with h5py.File(video_dump) as f:
        return f["S4"][:]


@pytest.fixture(scope="module")
def small(frames):
    """A corner of the maps (32 channels, 48 x 48): the same sequence, cheap to code many times."""
    return np.ascontiguousarray(frames[:, :32, :48, :48])


def test_dump_records_frame_order_and_rate(video_dump, tmp_path):
    with h5py.File(video_dump) as f:
        assert f["S4"].shape == (16, 128, 128, 128)
        assert list(f["frames"][:]) == list(range(16))
        assert f["images"][0].decode() == "opencv_tree_20s.mp4#frame=0"
        assert 2 < __import__("json").loads(f["frames"].attrs["fps"])["opencv_tree_20s.mp4"] < 3
    out = tmp_path / "every.h5"
    run_cli("dump", MODEL, CLIP, "--layer", "S1", "-o", out, "--every", "3", "--max-frames", "4", check=True)
    with h5py.File(out) as f:
        assert list(f["frames"][:]) == [0, 3, 6, 9] and f["S1"].shape[0] == 4


def test_dump_refuses_a_file_that_is_not_a_video(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"not a video at all")
    result = run_cli("dump", MODEL, fake, "--layer", "S1", "-o", tmp_path / "x.h5")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("Error: cannot read video") and b"Traceback" not in result.stderr


# --- inter coding --------------------------------------------------------------------------------

GOP_CODECS = [
    ("lightweight", {"levels": 4}),
    ("tiling", {"qp": 30, "preset": "ultrafast"}),
    ("fpc", {"qp": 30, "preset": "ultrafast"}),
]


@pytest.mark.parametrize("codec_id,params", GOP_CODECS, ids=[c for c, _ in GOP_CODECS])
def test_random_access_gives_the_samples_of_a_full_decode(small, codec_id, params):
    blob = featcodec.encode(small, codec_id, gop=6, **params)
    stream = Bitstream.parse(blob)
    assert stream.header["groups"] == [0, 6, 12] and stream.header["codec"]["gop"] == 6
    full = featcodec.decode(blob)
    for start, stop in ((0, 1), (7, 9), (11, 14), (15, 16)):
        decoded: list[int] = []
        part = featcodec.decode(blob, samples=slice(start, stop), decoded=decoded)
        assert np.array_equal(part, full[start:stop])
        group = start - start % 6
        assert decoded[0] == group and len(decoded) == stop - group  # never more than its group
    assert np.array_equal(featcodec.decode(blob, sample=13), full[13])
    assert np.array_equal(featcodec.decode(blob, samples=range(3, 8)), full[3:8])
    with pytest.raises(InvalidInputError, match="contiguous"):
        featcodec.decode(blob, samples=slice(0, 8, 2))


def test_lightweight_inter_is_exact_and_smaller_on_a_static_camera(small, frames):
    codec = Lightweight(levels=4).calibrate(frames[:4])
    x = frames[:12]
    intra = featcodec.encode(x, codec)
    inter = featcodec.encode(x, Lightweight(table=codec.table, gop=12))
    # the same quantizer: inter coding changes the bits, never a value
    assert np.array_equal(featcodec.decode(inter), featcodec.decode(intra))
    ratio = featcodec.info(inter)["payload_bytes"] / featcodec.info(intra)["payload_bytes"]
    assert ratio < 0.4, ratio  # measured 0.13 on 32 frames of this clip


def test_hevc_inter_spends_fewer_bits_at_one_qp(small):
    sizes = {gop: featcodec.info(featcodec.encode(small, "tiling", qp=30, preset="ultrafast", gop=gop))
             ["payload_bytes"] for gop in (1, 16)}
    assert sizes[16] < 0.5 * sizes[1], sizes


def test_inter_kbpi_target_is_met(small):
    blob = featcodec.encode(small[:8], "tiling", kbpi=4, gop=8, preset="ultrafast")
    info = featcodec.info(blob)
    kbits = 8 * info["payload_bytes"] / 1000 / 8
    assert 0.9 * 4 <= kbits <= 1.1 * 4, kbits
    assert 1 <= info["samples"][0]["encodes"] <= 3


def test_autotiler_groups_decode_like_a_full_decode(frames):
    blob = featcodec.encode(frames[:4], "autotiler", cr=16, qp=30, preset="ultrafast", gop=4)
    full = featcodec.decode(blob)
    assert np.array_equal(featcodec.decode(blob, samples=slice(2, 4)), full[2:4])


def test_gop_is_checked():
    for bad in (0, -1, 2.5, True, 5000):
        with pytest.raises(InvalidInputError, match="gop"):
            featcodec.get_codec("lightweight", gop=bad)


def test_kernel_refuses_a_reference_outside_the_alphabet():
    symbols = np.zeros((2, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="bad arguments"):
        entropy.encode_values(np.zeros((2, 8, 8), np.float32), np.array([0.5], np.float32), np.array([0, 1]), 2,
                              reference=symbols + 3)


def test_a_wrong_reference_is_a_corrupt_stream(small):
    table = Lightweight(levels=4).calibrate(small[:4]).table
    blob = featcodec.encode(small[:2], Lightweight(table=table, gop=2))
    stream = Bitstream.parse(blob)
    header = dict(stream.header, groups=[0, 1])  # sample 1 claims to start a group: no reference
    crafted = featcodec.container.pack(header, [stream.payload(0), stream.payload(1)])
    with pytest.raises(CorruptStreamError):
        featcodec.decode(crafted)


@pytest.mark.parametrize("groups", [[1], [0, 0], [0, 3, 2], [0, 99], "0", [0, True]])
def test_crafted_group_index_is_refused(small, groups):
    stream = Bitstream.parse(featcodec.encode(small[:4], "lightweight", levels=4, gop=2))
    crafted = featcodec.container.pack(dict(stream.header, groups=groups), [stream.payload(i) for i in range(4)])
    with pytest.raises(CorruptStreamError, match="groups"):
        Bitstream.parse(crafted)


# --- streaming -----------------------------------------------------------------------------------

def _streamed(x, codec) -> bytes:
    out = io.BytesIO()
    api.encode_stream([x[:3], *x[3:]], codec, out.write)
    return out.getvalue()


@pytest.mark.parametrize("codec_id,params", GOP_CODECS[:2], ids=[c for c, _ in GOP_CODECS[:2]])
def test_stream_cut_at_any_byte_decodes_every_complete_sample(small, codec_id, params):
    codec = featcodec.get_codec(codec_id, gop=4, **params)
    data = _streamed(small[:10], codec)
    full = featcodec.decode(data)
    assert full.shape == (10, 32, 48, 48)
    assert np.array_equal(full, featcodec.decode(featcodec.encode(small[:10], codec)))
    stream = Bitstream.parse(data)
    ends = [offset + length for offset, length in zip(stream.offsets, stream.lengths)]
    rng = np.random.default_rng(0)
    cuts = sorted(set(rng.integers(1, len(data), 40).tolist()) | {e - 1 for e in ends} | set(ends) | {len(data) - 1})
    for cut in cuts:
        complete = sum(end <= cut for end in ends)
        got = []
        with pytest.raises(FeatcodecError) as caught:
            _, samples = api.decode_stream(io.BytesIO(data[:cut]).read)
            got.extend(samples)
        assert len(got) == complete, (cut, len(got), complete)
        assert all(np.array_equal(a, b) for a, b in zip(got, full))
        if cut >= ends[0] - stream.lengths[0]:  # past the header: the cut is named with its sample count
            assert isinstance(caught.value, StreamCut) and caught.value.complete == complete


def test_streamed_file_mutations_end_in_featcodec_errors(small):
    data = _streamed(small[:6], featcodec.get_codec("lightweight", levels=4, gop=3))
    rng = np.random.default_rng(7)
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.integers(1, 4)):
            mutated[rng.integers(len(mutated))] ^= 1 << rng.integers(8)
        try:
            featcodec.decode(bytes(mutated))
            outcomes["decoded"] += 1
        except FeatcodecError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 250, outcomes


def test_stream_with_valid_crcs_but_bad_lengths_is_refused(small):
    data = bytearray(_streamed(small[:2], featcodec.get_codec("raw")))
    stream = Bitstream.parse(bytes(data))
    record = stream.offsets[0] - 20 - len(b'{}')  # the first record's header (raw codes no side information)
    info_len, info_crc, payload_len, payload_crc = struct.unpack_from("<IIQI", data, record)
    struct.pack_into("<IIQI", data, record, info_len, info_crc, payload_len + (1 << 40), payload_crc)
    with pytest.raises(CorruptStreamError):
        Bitstream.parse(bytes(data))


def test_cli_pipes_samples_through_encode_and_decode(small, tmp_path):
    source = b"".join(featcodec.io.npy_bytes(s) for s in small[:5])
    encoded = run_cli("encode", "-", "-m", "lightweight", "--levels", "4", "--gop", "4", input=source, check=True)
    decoded = run_cli("decode", "-", input=encoded.stdout, check=True)
    arrays = list(featcodec.io.iter_npy(io.BytesIO(decoded.stdout)))
    assert len(arrays) == 5 and np.array_equal(np.stack(arrays), featcodec.decode(encoded.stdout))
    cut = run_cli("decode", "-", "-o", tmp_path / "cut.npy", input=encoded.stdout[: len(encoded.stdout) * 3 // 4])
    assert cut.returncode == 1 and "Error: stream cut after" in cut.stderr.decode()
    kept = np.load(tmp_path / "cut.npy")
    assert 1 <= len(kept) < 5 and np.array_equal(kept, np.stack(arrays)[: len(kept)])


def test_cli_samples_range_says_what_it_decoded(small, tmp_path):
    path = tmp_path / "seq.fcb"
    featcodec.io.write_bytes(str(path), featcodec.encode(small, "lightweight", levels=4, gop=8))
    result = run_cli("decode", path, "--samples", "10:12", "-o", tmp_path / "part.npy", check=True)
    assert "samples 10:12: decoded 4 (from sample 8" in result.stderr.decode()
    assert np.load(tmp_path / "part.npy").shape == (2, 32, 48, 48)
    assert "groups: 2 (of 8 samples; a sample decodes from its group's first: 0, 8)" in \
        run_cli("info", path, check=True).stdout.decode()
    bad = run_cli("decode", path, "--samples", "ten", "-o", tmp_path / "x.npy")
    assert bad.returncode == 1 and bad.stderr.decode().startswith("Error: --samples must be A:B")


def test_pipes_pass_each_sample_on_before_the_stream_ends(small):
    """encode - writes sample 0's record while the producer still holds the pipe open, and decode -
    writes sample 0 while later bytes have not arrived: nothing waits for the end of the stream."""
    import subprocess
    import sys
    import threading

    from featcodec.container import _RECORD

    def first_bytes(stream, count: int, out: list) -> None:
        out.append(featcodec.container._read_exact(stream.read, count))

    encoder = subprocess.Popen([sys.executable, "-m", "featcodec", "encode", "-", "-m", "lightweight", "--levels",
                                "4", "--gop", "4"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    try:
        encoder.stdin.write(featcodec.io.npy_bytes(small[0]))
        encoder.stdin.flush()
        got: list = []
        reader = threading.Thread(target=first_bytes, args=(encoder.stdout, 20, got), daemon=True)
        reader.start()
        reader.join(120)
        assert got and got[0][:8] == featcodec.container.MAGIC  # the header came with sample 0 alone
        header_len = struct.unpack_from("<I", got[0], 12)[0]
        rest: list = []
        first_bytes(encoder.stdout, header_len + 4 + _RECORD.size, rest)
        assert len(rest[0]) == header_len + 4 + _RECORD.size  # and sample 0's record began, pipe still open
    finally:
        encoder.kill()
        encoder.wait(60)

    data = _streamed(small[:6], featcodec.get_codec("lightweight", levels=4, gop=3))
    stream = Bitstream.parse(data)
    decoder = subprocess.Popen([sys.executable, "-m", "featcodec", "decode", "-"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        decoder.stdin.write(data[: stream.offsets[1] + stream.lengths[1]])  # samples 0 and 1 only
        decoder.stdin.flush()
        arrays: list = []
        reader = threading.Thread(target=lambda: arrays.append(next(featcodec.io.iter_npy(decoder.stdout))),
                                  daemon=True)
        reader.start()
        reader.join(120)
        assert arrays and np.array_equal(arrays[0], featcodec.decode(data, sample=0))
    finally:
        decoder.kill()  # it has sample 1 to write, which nobody reads
        decoder.wait(60)


def test_cli_streams_an_hdf5_dataset_sample_by_sample(small, tmp_path):
    with h5py.File(tmp_path / "seq.h5", "w") as f:
        f.create_dataset("S4", data=small[:6]).attrs["layer"] = "tower_0/CenternetHead/mul:0"
    out = tmp_path / "seq.fcb"
    run_cli("encode", f"{tmp_path / 'seq.h5'}:/S4", "--stream", "-m", "lightweight", "--levels", "4", "--gop", "4",
            "-o", out, check=True)
    stream = Bitstream.parse(out.read_bytes())
    assert stream.header["layer"] == "tower_0/CenternetHead/mul:0" and stream.header["groups"] == [0, 4]
    codec = featcodec.get_codec("lightweight", levels=4, gop=4)
    assert np.array_equal(featcodec.decode(stream), featcodec.decode(featcodec.encode(small[:6], codec)))
    run_cli("decode", out, "-o", tmp_path / "all.npy", check=True)  # a streamed file on disk, read as it comes
    assert np.array_equal(np.load(tmp_path / "all.npy"), featcodec.decode(stream))
    missing = run_cli("encode", f"{tmp_path / 'seq.h5'}:/nope", "--stream", "-m", "raw", "-o", tmp_path / "x.fcb")
    assert missing.returncode == 1 and missing.stderr.decode().startswith("Error: ")


def test_a_piped_stream_declaring_a_huge_payload_fails_cleanly(small):
    """A record that declares 2^60 payload bytes over a pipe: the reader asks for the bytes in bounded
    pieces, so it ends in StreamCut, not MemoryError."""
    data = bytearray(_streamed(small[:2], featcodec.get_codec("raw")))
    stream = Bitstream.parse(bytes(data))
    record = stream.offsets[0] - 20 - 2
    info_len, info_crc, _, payload_crc = struct.unpack_from("<IIQI", data, record)
    struct.pack_into("<IIQI", data, record, info_len, info_crc, 1 << 60, payload_crc)
    with pytest.raises(StreamCut):
        _, samples = api.decode_stream(io.BufferedReader(io.BytesIO(bytes(data))).read)
        list(samples)


def test_dump_keeps_long_name_lists_out_of_attributes(tmp_path, monkeypatch):
    import json

    import featcodec.dump

    monkeypatch.setattr(featcodec.dump, "MAX_LISTING", 40)  # as if the clip had thousands of frames
    out = tmp_path / "long.h5"
    featcodec.dump.dump(str(MODEL), ["S1"], [str(CLIP)], str(out), max_frames=3, compression="lzf")
    with h5py.File(out) as f:
        assert json.loads(f.attrs["images"]) == {"see": "/images", "count": 3}
        assert [n.decode() for n in f["images"][:]] == [f"opencv_tree_20s.mp4#frame={i}" for i in range(3)]


def test_a_streamed_file_of_no_sample_decodes_to_an_empty_batch(tmp_path):
    from featcodec.container import stream_end, stream_head

    header = {"featcodec": featcodec.__version__, "codec": featcodec.get_codec("raw").get_config(), "layer": None,
              "dataset": None, "shape": [0, 2, 4, 4], "batched": True, "dtype": "float32", "layout": "nchw",
              "models": []}
    path = tmp_path / "empty.fcb"
    path.write_bytes(stream_head(header) + stream_end(0))
    assert featcodec.decode(path.read_bytes()).shape == (0, 2, 4, 4)
    run_cli("decode", path, "-o", tmp_path / "empty.npy", check=True)  # was an internal error (nothing to stack)
    assert np.load(tmp_path / "empty.npy").shape == (0, 2, 4, 4)
