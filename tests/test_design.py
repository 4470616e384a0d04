"""Codecs own their knowledge: a new codec needs no CLI or bench edits, plugins load lazily and fail
alone, defaults are printed true, and only malformed streams are reported as corrupt."""

import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import featcodec
from featcodec import registry
from featcodec.bench import run_bench
from featcodec.cli import cli, main
from featcodec.codecs.base import Codec, Param, side_numbers
from featcodec.container import Bitstream, pack
from featcodec.errors import CorruptStreamError, FeatcodecError, PluginError
from tests.common import check_config, check_encode_decode, relu_activations


class Scaled(Codec):
    """Test codec: float16 of the sample times a scale; the sample's peak is side information."""

    codec_id = "scaled_test"
    params = (Param("scale", float, "Multiply by this before storing."),
              Param("flip", bool, "Store the negated values."))
    rate_points = {"quick": [("default", {}), ("scale=4", {"scale": 4.0})]}

    def __init__(self, scale: float = 2.0, *, flip: bool = False, note: str = "kw-only"):
        self.scale, self.flip, self.note = float(scale), flip, note

    def encode(self, sample):
        sign = -1 if self.flip else 1
        return (sign * self.scale * sample).astype("<f2").tobytes(), {"peak": float(np.abs(sample).max())}

    def validate(self, shape, info):
        side_numbers(info, "peak")

    def decode(self, payload, shape, info):
        sign = -1 if self.flip else 1
        return np.frombuffer(payload, "<f2").reshape(shape).astype(np.float32) / (sign * self.scale)


class BuggyDecode(Scaled):
    """Test codec whose decode has a bug: it raises on a perfectly valid stream."""

    codec_id = "buggy_test"

    def decode(self, payload, shape, info):
        return {}["an index bug"]


@pytest.fixture
def test_codecs():
    registry.register_codec(Scaled)
    registry.register_codec(BuggyDecode)
    yield
    for codec_id in ("scaled_test", "buggy_test"):
        registry._CODECS.pop(codec_id, None)


def test_declarations_match_every_codec_signature():
    for codec_id in codec_ids_builtin():
        cls = registry.codec_class(codec_id)
        names = cls.param_names()
        assert [p.name for p in cls.params] == names, f"{codec_id}: declare every __init__ parameter, in order"
        for declared in cls.params:
            assert declared.kind in (int, float, str, bool, dict), (codec_id, declared)
            assert declared.help, (codec_id, declared.name)


def codec_ids_builtin():
    return sorted(registry.BUILTIN_CODECS)


def test_a_new_codec_needs_no_cli_or_bench_edits(test_codecs, tmp_path):
    x = relu_activations((2, 3, 8, 8))
    np.save(tmp_path / "x.npy", x)
    runner = CliRunner()
    result = runner.invoke(cli, ["encode", str(tmp_path / "x.npy"), "-m", "scaled_test", "--scale", "8",
                                 "--flip", "-o", str(tmp_path / "x.fcb")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    header = featcodec.info((tmp_path / "x.fcb").read_bytes())
    assert header["codec"] == {"id": "scaled_test", "scale": 8.0, "flip": True, "note": "kw-only"}
    np.testing.assert_allclose(featcodec.decode((tmp_path / "x.fcb").read_bytes()), x, atol=2e-3)
    # Its flags are in the help, its parameters and defaults in the listing.
    assert "--scale" in runner.invoke(cli, ["encode", "--help"]).output
    listing = runner.invoke(cli, ["codecs"]).output
    assert "scaled_test: Test codec" in listing
    assert "scale=2.0  (--scale)" in listing and "flip=False  (--flip)" in listing
    assert "note='kw-only'  (--note)" in listing
    # Another codec's flag is refused, naming this codec's own.
    result = runner.invoke(cli, ["encode", str(tmp_path / "x.npy"), "-m", "scaled_test", "--levels", "3",
                                 "-o", str(tmp_path / "y.fcb")])
    assert "takes no --levels option" in str(result.exception) and "--scale" in str(result.exception)
    # The bench asks the codec for its rate points.
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"] = x
    report = run_bench([str(tmp_path / "d.h5")], ["scaled_test"], rates="quick")
    assert [r["point"] for r in report["results"]] == ["default", "scale=4"]
    check_encode_decode(Scaled(scale=3.0, flip=True), x)
    check_config(Scaled(scale=3.0, flip=True))


def test_codecs_prints_true_defaults_of_keyword_only_parameters():
    class KeywordOnly(Codec):
        """Test codec with keyword-only parameters."""

        codec_id = "kwonly_test"

        def __init__(self, a: int = 1, *, b: int = 2, c: str = "three"):
            self.a, self.b, self.c = a, b, c

        encode = decode = None

    registry.register_codec(KeywordOnly)
    try:
        listing = CliRunner().invoke(cli, ["codecs"]).output
    finally:
        registry._CODECS.pop("kwonly_test")
    block = listing.split("kwonly_test:")[1].split("\n")[1:4]
    assert [line.split()[0] for line in block] == ["a=1", "b=2", "c='three'"]


def test_a_bug_in_decode_is_not_a_corrupt_file(test_codecs, tmp_path, capsys):
    x = relu_activations((1, 2, 4, 4))
    blob = featcodec.encode(x, "buggy_test")
    with pytest.raises(KeyError):
        featcodec.decode(blob)
    (tmp_path / "b.fcb").write_bytes(blob)
    with pytest.raises(SystemExit) as exit_info:
        main(["decode", str(tmp_path / "b.fcb"), "-o", str(tmp_path / "b.npy")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: internal error (KeyError") and "--debug" in err and "corrupt" not in err
    with pytest.raises(KeyError):
        main(["--debug", "decode", str(tmp_path / "b.fcb"), "-o", str(tmp_path / "c.npy")])


def test_malformed_side_information_is_corrupt(test_codecs):
    x = relu_activations((1, 2, 4, 4))
    stream = Bitstream.parse(featcodec.encode(x, "buggy_test"))
    header = dict(stream.header, samples=[{"peak": "high"}])
    with pytest.raises(CorruptStreamError, match="sample 0: side information 'peak'"):
        featcodec.decode(pack(header, [stream.payload(0)]))


# Every built-in codec whose samples carry side information, on data it serves.
SIDE_INFO_CASES = {
    "uniform": ({}, (1, 3, 8, 8)),
    "lightweight": ({"levels": 4}, (1, 3, 8, 8)),
    "tiling": ({"preset": "ultrafast"}, (1, 3, 8, 8)),
    "fpc": ({"preset": "ultrafast", "norm": "channel"}, (1, 3, 8, 8)),
    "autotiler": ({"preset": "ultrafast"}, (1, 24, 16, 16)),
    "learned": ({}, (1, 72, 16, 16)),
}
HOSTILE_VALUES = [None, "x", [], [1, 2], [1, 2, 3], {"a": 1}, -1, 0, 1e308, 2**70, True]


@pytest.mark.parametrize("codec_id", sorted(SIDE_INFO_CASES))
def test_crafted_side_information_never_escapes_as_another_error(codec_id):
    """Each key of a sample's side information, removed or replaced by a hostile value in a file
    whose CRCs are valid, decodes to a result or a featcodec error, never another exception."""
    params, shape = SIDE_INFO_CASES[codec_id]
    x = relu_activations(shape) if codec_id not in ("autotiler", "learned") else _demo_crop(shape)
    stream = Bitstream.parse(featcodec.encode(x, codec_id, **params))
    info = stream.header["samples"][0]
    assert info, codec_id
    variants = [{k: v for k, v in info.items() if k != key} for key in info]
    variants += [{**info, key: value} for key in info for value in HOSTILE_VALUES]
    outcomes = {"refused": 0, "decoded": 0}
    for variant in variants:
        blob = pack(dict(stream.header, samples=[variant]), [stream.payload(0)])
        try:
            featcodec.decode(blob)
            outcomes["decoded"] += 1
        except FeatcodecError:
            outcomes["refused"] += 1
    assert outcomes["refused"] >= len(info), outcomes  # at least every removal


def _demo_crop(shape):
    """A crop of the demo dump's layer with `shape[1]` channels (S1 24, S2 72, S4 128)."""
    from tests.test_codecs import DEMO

    layer = {24: "S1", 72: "S2", 128: "S4"}[shape[1]]
    with h5py.File(DEMO) as f:
        return np.ascontiguousarray(f[layer][: shape[0], :, 40:40 + shape[2], 50:50 + shape[3]], np.float32)


# --- plugins ---------------------------------------------------------------------------------

PLUGIN_MODULE = '''
import numpy as np
from featcodec.codecs.base import Codec, Param

class Good(Codec):
    """A plugin codec that works."""
    codec_id = "good"
    params = (Param("gain", float, "Gain."),)

    def __init__(self, gain: float = 1.0):
        self.gain = float(gain)

    def encode(self, sample):
        return (sample * self.gain).astype("<f4").tobytes(), {}

    def decode(self, payload, shape, info):
        return np.frombuffer(payload, "<f4").reshape(shape) / self.gain
'''


@pytest.fixture
def plugin_path(tmp_path):
    """A folder holding two installed (dist-info) plugins: one fine, one whose module is missing."""
    (tmp_path / "goodplug.py").write_text(PLUGIN_MODULE)
    for dist, entry in (("goodplug", "good = goodplug:Good"), ("brokenplug", "broken = brokenplug_gone:Codec")):
        info = tmp_path / f"{dist}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[featcodec.codecs]\n{entry}\n")
    return tmp_path


def _run(plugin_path, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "featcodec", *map(str, args)], capture_output=True, env=env,
                          cwd=plugin_path, timeout=120)


def test_a_broken_plugin_fails_alone(plugin_path):
    np.save(plugin_path / "x.npy", relu_activations((1, 2, 4, 4)))
    broken = _run(plugin_path, "encode", "x.npy", "-m", "broken", "-o", "b.fcb")
    assert broken.returncode == 1
    assert broken.stderr.decode().strip().startswith(
        "Error: codec plugin 'broken' from distribution 'brokenplug' failed to load: ModuleNotFoundError")
    assert _run(plugin_path, "encode", "x.npy", "-m", "raw", "-o", "r.fcb").returncode == 0
    # The working plugin's flag exists once -m names it.
    good = _run(plugin_path, "encode", "x.npy", "-m", "good", "--gain", "2", "-o", "g.fcb")
    assert good.returncode == 0, good.stderr.decode()
    assert _run(plugin_path, "info", "g.fcb", "--json").stdout.decode().count('"gain": 2.0') == 1
    listing = _run(plugin_path, "codecs")
    assert listing.returncode == 0
    text = listing.stdout.decode()
    assert "broken: unavailable (codec plugin 'broken'" in text and "good: A plugin codec that works." in text


def test_plugins_are_imported_only_when_asked_for(plugin_path):
    code = textwrap.dedent("""
        import sys, featcodec, json
        from featcodec import registry
        ids = registry.codec_ids()
        before = "goodplug" in sys.modules
        featcodec.get_codec("raw")
        still = "goodplug" in sys.modules
        registry.codec_class("good")
        errors = []
        for _ in range(2):
            try:
                registry.codec_class("broken")
            except featcodec.PluginError as err:
                errors.append(str(err))
        print(json.dumps([ids, before, still, "goodplug" in sys.modules, errors]))
    """)
    env = {**os.environ, "PYTHONPATH": str(plugin_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=120, check=True)
    ids, before, still, after, errors = json.loads(out.stdout)
    assert {"good", "broken", "raw"} <= set(ids)
    assert (before, still, after) == (False, False, True)
    assert len(errors) == 2 and all("brokenplug" in e for e in errors)  # fails every time, never vanishes


def test_plugin_error_is_a_featcodec_error():
    assert issubclass(PluginError, FeatcodecError)


def test_docs_codec_example_runs():
    """docs/api.md's "Writing a codec" example is real code: it registers, codes and lists."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    section = readme.split("## Writing a codec", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)
    registry.register_codec(namespace["Scaled"])
    try:
        x = relu_activations((2, 3, 8, 8))
        check_encode_decode(featcodec.get_codec("scaled", scale=4.0), x)
        assert "--scale" in CliRunner().invoke(cli, ["encode", "--help"]).output
        assert registry.codec_class("scaled").points("paper")[1] == ("scale=4", {"scale": 4.0})
    finally:
        registry._CODECS.pop("scaled")


def test_crafted_model_records_are_corrupt():
    x = _demo_crop((1, 24, 16, 16))
    stream = Bitstream.parse(featcodec.encode(x, "autotiler", preset="ultrafast"))
    for models in (["x"], "x", [1, 2]):
        blob = pack(dict(stream.header, models=models), [stream.payload(0)])
        with pytest.raises(CorruptStreamError, match="header models"):
            featcodec.decode(blob)
