"""The ``featcodec`` command line. It only parses options and prints; `featcodec.api` does the work."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from . import __version__, api
from .codecs.base import Codec, Param
from .container import FLAG_STREAMED, MAGIC, Bitstream, StreamCut
from .dump import MAX_RANDOM_CROPS, TRAINING_DUMP_BYTES
from .errors import FeatcodecError, InvalidInputError
from .io import (
    atomic_write,
    from_nchw,
    is_hdf5_path,
    iter_hdf5_samples,
    iter_npy,
    npy_bytes,
    open_bitstream,
    read_bitstream,
    read_tensor,
    split_hdf5_spec,
    to_nchw,
    write_array,
    write_bytes,
)
from .registry import codec_class, codec_from_config, codec_ids, get_codec, loaded_codecs


class _ChoiceOf(click.Choice):
    """A choice among values of another type (bit depth 8 or 10), converted to that type."""

    def __init__(self, kind: type, choices: tuple):
        super().__init__([str(c) for c in choices])
        self.kind = kind

    def convert(self, value, param, ctx):
        return self.kind(super().convert(value, param, ctx))


def _option_from(declarations: list[tuple[str, Param]]) -> click.Option:
    """One flag for a parameter name, from every codec that declares it (their types must agree)."""
    first = declarations[0][1]
    kinds = {p.kind for _, p in declarations}
    if len(kinds) > 1:
        raise TypeError(f"codecs declare parameter {first.name!r} with different types: {kinds}")
    helps: dict[str, list[str]] = {}
    for codec_id, declared in declarations:
        helps.setdefault(declared.help, []).append(codec_id)
    text = " ".join(f"[{', '.join(ids)}] {h}" for h, ids in helps.items())
    if first.kind is bool:
        return click.Option([f"{first.flag}/--no-{first.flag[2:]}", first.name], default=None, help=text)
    kind = _ChoiceOf(first.kind, first.choices) if first.choices else {int: click.INT, float: click.FLOAT}.get(
        first.kind, click.STRING)
    return click.Option([first.flag, first.name], type=kind, help=text)


def codec_options() -> list[click.Option]:
    """The codec flags shared by `encode`, `calibrate` and `convert`, built from the codecs at hand:
    one per declared parameter name, whichever codecs take it."""
    by_name: dict[str, list[tuple[str, Param]]] = {}
    for codec_id, cls in loaded_codecs().items():
        for declared in cls.param_declarations():
            if declared.cli:
                by_name.setdefault(declared.name, []).append((codec_id, declared))
    extra = click.Option(["-p", "--param", "extra_params"], multiple=True, metavar="KEY=VALUE",
                         help="Any codec parameter by name (VALUE parsed as JSON when it can be).")
    return [_option_from(declarations) for declarations in by_name.values()] + [extra]


class CodecCommand(click.Command):
    """A command that takes codec options: they come from the registry when the command runs, so a
    codec registered later (or a plugin named by ``-m``) brings its own flags."""

    def parse_args(self, ctx, args):
        for i, arg in enumerate(args):  # import the plugin -m names, so that its flags exist
            value = args[i + 1] if arg in ("-m", "--method") and i + 1 < len(args) else (
                arg.split("=", 1)[1] if arg.startswith("--method=") else None)
            if value and value in codec_ids():
                codec_class(value)
        return super().parse_args(ctx, args)

    def get_params(self, ctx):
        params = super().get_params(ctx)
        taken = {opt for param in params for opt in param.opts}
        return params + [o for o in codec_options() if not taken & set(o.opts)]


def build_codec(method: str, options: dict[str, Any], extra_params: tuple[str, ...]) -> Codec:
    """The codec named `method` with the options the user set (None means: not given)."""
    params = {k: v for k, v in options.items() if v is not None}
    declared = codec_class(method).param_declarations()
    for name in params:
        if name not in {p.name for p in declared}:
            flags = ", ".join(p.flag if p.cli else f"-p {p.name}=…" for p in declared) or "none"
            raise InvalidInputError(f"codec {method!r} takes no --{name.replace('_', '-')} option (its options: "
                                    f"{flags})")
    for item in extra_params:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"-p expects KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return get_codec(method, **params)


def _codec_from_cli(method, config_path, options, extra_params) -> Codec:
    if config_path:
        if method or any(v is not None for v in options.values()) or extra_params:
            raise InvalidInputError("--config already fixes the codec: drop -m and the codec options")
        try:
            with open(config_path) as f:
                return codec_from_config(json.load(f))
        except OSError as err:
            raise InvalidInputError(f"cannot read codec config {config_path}: {err.strerror}") from err
        except json.JSONDecodeError as err:
            raise InvalidInputError(f"{config_path} is not valid JSON: {err}") from err
    if not method:
        raise InvalidInputError("missing -m METHOD (or --config FILE); see `featcodec codecs`")
    return build_codec(method, options, extra_params)


def _calibrated(codec: Codec, array) -> Codec:
    return codec.calibrate(array if array.ndim == 4 else array[None])


def _stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        click.echo(message, err=True)


def _default_output(input_spec: str, suffix: str) -> str:
    if input_spec == "-":
        return "-"
    path, dataset = split_hdf5_spec(input_spec)
    stem = Path(path).with_suffix("")
    if dataset:
        stem = stem.with_name(stem.name + "." + re.sub(r"[^A-Za-z0-9._-]+", "_", dataset.strip("/")))
    return str(stem) + suffix


def _print_pairs(title: str, rows: list[tuple[str, str]]) -> None:
    """Key / value lines: a rich table on a terminal, plain 'key: value' lines otherwise."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_header=False)
        for key, value in rows:
            table.add_row(key, value)
        Console().print(table)
    else:
        for key, value in rows:
            click.echo(f"{key}: {value}")


def _refuse_binary_to_terminal(output: str) -> None:
    if output == "-" and sys.stdout.isatty():
        raise InvalidInputError("refusing to write binary data to a terminal; pass -o FILE or redirect stdout")


def _human_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.2f} {unit}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="featcodec")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def cli(debug: bool) -> None:
    """Compress the intermediate activations of split neural networks.

    \b
    featcodec encode acts.npy -m uniform --levels 8      # -> acts.fcb
    featcodec decode acts.fcb -o restored.npy
    featcodec info acts.fcb
    cat a.npy | featcodec encode - -m raw --zstd 3 | featcodec decode - > b.npy
    """


@cli.command(cls=CodecCommand)
@click.argument("input_spec", metavar="INPUT")
@click.option("-o", "--output", help="Output .fcb file, or - for stdout (default: INPUT with .fcb).")
@click.option("-m", "--method", help="Codec id (see `featcodec codecs`).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Codec configuration JSON (from `featcodec calibrate`), instead of -m and options.")
@click.option("--calibrate", is_flag=True, help="Design the quantizer once from the whole input, then code every "
              "sample with it (codecs that calibrate: see `featcodec codecs`).")
@click.option("--layer", help="Layer name to record (default: the HDF5 dataset's 'layer' attribute).")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default="nchw", show_default=True,
              help="Axis order of the input; nhwc for channel-last dumps.")
@click.option("--stream", is_flag=True, help="Read samples as they come (concatenated .npy, e.g. from a pipe) and "
              "write each as soon as it is coded (streamed layout); the default for - with --gop above 1.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def encode(input_spec, output, method, config_path, calibrate, layer, layout, stream, force, quiet, extra_params,
           **options):
    """Compress INPUT (.npy, FILE.h5[:/DATASET], or - for stdin) into a .fcb bitstream.

    \b
    Feature sequences (video frames, in order), coded in groups of 32 and streamed:
    featcodec dump model.onnx clip.mp4 --layer S4 -o clip.h5
    featcodec encode clip.h5:/S4 -m lightweight --gop 32
    producer | featcodec encode - -m lightweight --gop 32 | featcodec decode - | consumer
    """
    codec = _codec_from_cli(method, config_path, options, extra_params)
    output = output or _default_output(input_spec, ".fcb")
    _refuse_binary_to_terminal(output)
    if output != "-" and os.path.exists(output) and not force:
        raise InvalidInputError(f"{output} exists; pass --force to overwrite it")
    if stream or (input_spec == "-" and codec.gop > 1):
        if calibrate:
            raise InvalidInputError("--calibrate needs the whole input; calibrate first (featcodec calibrate), "
                                    "then stream with --config")
        _encode_stream(input_spec, output, codec, layer, layout, force, quiet)
        return
    tensor = read_tensor(input_spec)
    layer = layer or tensor.attrs.get("layer")
    if calibrate:
        codec = _calibrated(codec, to_nchw(tensor.array, layout))
    progress = _progress_callback(f"encoding {tensor.name}")
    try:
        blob = api.encode(tensor.array, codec, layer=layer, layout=layout, dataset=tensor.name,
                          progress=None if quiet else progress)
    finally:
        progress.stop()
    write_bytes(output, blob, force)
    summary = api.info(blob)
    _say(
        f"{output if output != '-' else '<stdout>'}: {summary['n_samples']} sample(s) {summary['shape']}, "
        f"{_human_bytes(tensor.array.nbytes)} -> {_human_bytes(len(blob))}, "
        f"{summary['file_bits_per_element']:.4g} bits/element, {codec.describe()}",
        quiet or output == "-",
    )


def _encode_stream(input_spec, output, codec, layer, layout, force, quiet) -> None:
    """`encode --stream`: concatenated .npy in, streamed .fcb out, sample by sample."""
    if input_spec == "-":
        arrays = iter_npy(sys.stdin.buffer)
    else:
        path, dataset = split_hdf5_spec(input_spec)
        if is_hdf5_path(path) or dataset:
            attrs, arrays = iter_hdf5_samples(input_spec)  # read sample by sample
            layer = layer or attrs.get("layer")
        else:
            if not os.path.exists(path):
                raise InvalidInputError(f"no such file: {path}")
            arrays = iter_npy(open(path, "rb"), path)  # noqa: SIM115 (closed when the process ends)

    def run(out) -> dict:
        return api.encode_stream(arrays, codec, out.write, layer=layer, layout=layout,
                                 dataset=None if input_spec == "-" else split_hdf5_spec(input_spec)[1],
                                 flush=out.flush)

    if output == "-":
        summary = run(sys.stdout.buffer)
    else:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as out:
                nonlocal summary
                summary = run(out)

        summary = {}
        atomic_write(output, write, force)
    _say(f"{output if output != '-' else '<stdout>'}: {summary['n_samples']} sample(s) of "
         f"{summary['sample_shape']} streamed, {_human_bytes(summary['bytes'])}, {codec.describe()}",
         quiet or output == "-")


def _parse_samples(text: str | None) -> slice | None:
    """``A:B`` (either end may be left out) → slice."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*", text)
    if not match:
        raise InvalidInputError(f"--samples must be A:B (e.g. 40:48), got {text!r}")
    start, stop = (int(v) if v else None for v in match.groups())
    return slice(start, stop)


@cli.command()
@click.argument("input_spec", metavar="INPUT")
@click.option("-o", "--output", help="Output .npy or .h5 (by suffix), or - for stdout (default: INPUT with .npy).")
@click.option("--sample", type=int, help="Decode only this sample of a batch.")
@click.option("--samples", metavar="A:B", help="Decode samples A to B-1 (from the start of A's group).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def decode(input_spec, output, sample, samples, force, quiet):
    """Decompress a .fcb bitstream (or - for stdin) to .npy or HDF5.

    A streamed file (`encode --stream`) is decoded as it arrives: to - each sample is written as its
    own .npy as soon as it is decoded; a stream cut short still gives every complete sample before
    the cut, then an error. --samples A:B decodes a range, starting from the group that holds A.
    """
    output = output or _default_output(input_spec, ".npy")
    _refuse_binary_to_terminal(output)
    if output != "-" and os.path.exists(split_hdf5_spec(output)[0]) and not force:
        raise InvalidInputError(f"{output} exists; pass --force to overwrite it")
    wanted = _parse_samples(samples)
    if sample is not None and wanted is not None:
        raise InvalidInputError("give --sample or --samples, not both")
    source = open_bitstream(input_spec)
    preamble = source.read(20)
    if len(preamble) == 20 and preamble[:8] == MAGIC and preamble[10] & FLAG_STREAMED and sample is None \
            and wanted is None:
        _decode_stream(preamble, source, output, force, quiet)
        return
    stream = Bitstream.parse(preamble + source.read())
    if sample is not None and not -stream.n_samples <= sample < stream.n_samples:
        raise InvalidInputError(f"--sample {sample} is out of range: the file holds {stream.n_samples} sample(s)")
    decoded: list[int] = []
    if wanted is not None:
        indices = range(stream.n_samples)[wanted]
        if not indices:
            raise InvalidInputError(f"--samples {samples} selects nothing: the file holds {stream.n_samples}")
        array = api.decode(stream, samples=wanted, decoded=decoded)
        _say(f"samples {indices.start}:{indices.stop}: decoded {len(decoded)} (from sample {decoded[0]}, "
             f"the start of its group)", quiet)
    else:
        array = api.decode(stream, sample=sample)
    _write_decoded(output, array, stream.header, force)
    _say(f"{output}: {array.dtype} {tuple(array.shape)}", quiet or output == "-")


def _decode_stream(preamble: bytes, source, output, force, quiet) -> None:
    """Decode a streamed file as it arrives: to stdout one .npy per sample, flushed; to a file all
    samples at the end (on a cut: the complete ones, then the error)."""
    header, samples = api.decode_stream(io.BufferedReader(_Prefixed(preamble, source)).read)
    arrays: list[np.ndarray] = []
    try:
        for array in samples:
            if output == "-":
                sys.stdout.buffer.write(npy_bytes(array))
                sys.stdout.buffer.flush()
            else:
                arrays.append(array)
    except StreamCut:
        if output != "-" and arrays:
            _write_decoded(output, np.stack(arrays), header, force)
            _say(f"{output}: the {len(arrays)} complete sample(s) before the cut", False)
        raise
    if output != "-":
        # a stream may hold no sample: an empty batch of the recorded sample shape
        array = np.stack(arrays) if arrays else from_nchw(np.empty(header["shape"], header["dtype"]),
                                                         header["layout"])
        _write_decoded(output, array, header, force)
        _say(f"{output}: {array.dtype} {tuple(array.shape)}", quiet)


class _Prefixed(io.RawIOBase):
    """A binary source with bytes already read from it put back in front."""

    def __init__(self, prefix: bytes, source):
        self.prefix, self.source = prefix, source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.prefix:
            n = min(len(buffer), len(self.prefix))
            buffer[:n], self.prefix = self.prefix[:n], self.prefix[n:]
            return n
        data = self.source.read1(len(buffer)) if hasattr(self.source, "read1") else self.source.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _write_decoded(output: str, array: np.ndarray, header: dict, force: bool) -> None:
    """Write a decoded array (.npy, HDF5 or stdout), recording the layer and codec the file named."""
    attrs = {k: header[k] for k in ("layer",) if header.get(k)}
    attrs["codec"] = json.dumps(header["codec"], sort_keys=True)
    dataset = header.get("dataset") or "features"
    write_array(output, array, force, dataset="features" if dataset == "stdin" else dataset, attrs=attrs)


@cli.command()
@click.argument("input_spec", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="Print the header as JSON.")
def info(input_spec, as_json):
    """Show the header of a .fcb file: codec, layer, shape, sizes, rate."""
    summary = api.info(read_bitstream(input_spec))
    if as_json:
        click.echo(json.dumps(_strict_json(summary), indent=2, sort_keys=True, allow_nan=False))
        return
    rows = [
        ("codec", json.dumps(summary["codec"], sort_keys=True)),
        ("layer", summary.get("layer") or "-"),
        ("dataset", summary.get("dataset") or "-"),
        ("shape", f"{tuple(summary['shape'])} ({summary['layout']}, stored as NCHW)"),
        ("dtype", summary["dtype"]),
        ("samples", str(summary["n_samples"])),
        *([("groups", _groups_text(summary["groups"], summary["n_samples"]))] if summary.get("groups") else []),
        ("file size", f"{summary['file_bytes']} bytes"),
        ("payload", f"{summary['payload_bytes']} bytes"),
        ("bits/element", f"{summary['bits_per_element']:.4f} (file: {summary['file_bits_per_element']:.4f})"),
        ("compression ratio", f"{summary['compression_ratio']:.2f} vs float32" if summary["compression_ratio"]
         else "-"),
        ("models", ", ".join(f"{m['name']} ({m['sha256'][:12]}…)" for m in summary["models"]) or "-"),
        *_side_info_rows(summary),
        ("written by", f"featcodec {summary.get('featcodec')}"),
    ]
    _print_pairs(input_spec, rows)


def _groups_text(starts: list[int], count: int) -> str:
    """'3 (of 32 samples; each decodes from its first: 0, 32, 64)'."""
    shown = ", ".join(map(str, starts[:6])) + (", …" if len(starts) > 6 else "")
    size = starts[1] - starts[0] if len(starts) > 1 else count
    return f"{len(starts)} (of {size} samples; a sample decodes from its group's first: {shown})"


def _side_info_rows(summary: dict) -> list[tuple[str, str]]:
    """What the file's codec says about its samples' side information (an unknown codec: nothing)."""
    try:
        cls = codec_class(summary["codec"].get("id"))
    except FeatcodecError:
        return []
    return cls.side_info_rows(summary["samples"])


@cli.command(cls=CodecCommand)
@click.argument("input_spec", metavar="INPUT")
@click.option("-m", "--method", required=True, help="Codec id.")
@click.option("-o", "--output", required=True, help="Where to write the codec configuration (JSON).")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default="nchw", show_default=True)
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output.")
def calibrate(input_spec, method, output, layout, force, extra_params, **options):
    """Design a codec's quantizer once from the samples of INPUT; write its configuration.

    \b
    featcodec calibrate train.h5:/S4 -m lightweight --levels 16 -o s4.json
    featcodec encode new.h5:/S4 --config s4.json      # one fast pass per sample
    """
    codec = _calibrated(build_codec(method, options, extra_params), to_nchw(read_tensor(input_spec).array, layout))
    text = json.dumps(codec.get_config(), indent=1, sort_keys=True) + "\n"
    write_bytes(output, text.encode(), force)
    click.echo(f"{output}: {codec.describe()}", err=True)


@cli.command()
@click.argument("inputs", nargs=-1, metavar="INPUT...")
@click.option("-m", "--methods", default="all", show_default=True,
              help="Comma-separated codec ids, or all (see `featcodec codecs`).")
@click.option("--rates", default="paper", show_default=True,
              help="Rate points: paper (Kbpi bases 15-240 + lossless, levels 2-16, bpe 0.6/0.8) or quick.")
@click.option("--task", "task_model", help="ONNX model whose tail measures task agreement (default: the model "
              "a featcodec dump recorded, when it can be found).")
@click.option("--calibrate-on", help="HDF5 dump to calibrate quantizers on (same dataset names), e.g. the "
              "training split; default: the input itself.")
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(1, 100),
              help="Timed runs per point (median), after one warm-up.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(0, 256),
              help="Threads for x265 and onnxruntime (0: their defaults).")
@click.option("--json", "json_path", help="Write the full report as JSON.")
@click.option("--csv", "csv_path", help="Write one row per point as CSV.")
@click.option("--plot", "plot_path", help="Write rate-PSNR / rate-accuracy curves (PNG, needs matplotlib).")
@click.option("--from-json", "from_json", type=click.Path(dir_okay=False, exists=True),
              help="Do not run: re-summarise, print and check a report saved with --json (INPUT is then ignored).")
@click.option("--check", "checks", multiple=True, metavar="EXPR",
              help="Gate, e.g. 'lightweight.bpe<=0.8' or 'tiling@kbpi=60.agreement>=0.5'; exit 1 if one fails.")
@click.option("--images", "image_dirs", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="Folder of the dump's images (repeatable), where the paths the dump recorded are gone: remote "
                   "inference codes them.")
@click.option("--remote/--no-remote", default=True, show_default=True,
              help="Code the dump's images with x265 and JPEG and run the whole network: the anchor every codec's "
                   "BD-rate is taken against.")
@click.option("--model", "codec_model", help="The trained model the auto-tiler and learned codecs use (default: "
              "theirs for the reference detector): a model you trained for your own network's layer.")
@click.option("--metric", metavar="FILE.py:FUNCTION",
              help="The network's own task metric instead of the task's: FUNCTION(reference, result) over the "
                   "task outputs on original and on decoded activations (lists of (N, …) arrays), a score that "
                   "rises with quality (docs/networks.md).")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
def bench(inputs, methods, rates, task_model, calibrate_on, repeat, threads, json_path, csv_path, plot_path, from_json,
          checks, image_dirs, remote, codec_model, metric, force):
    """Sweep codecs over rate points on INPUT tensors; report rate, distortion, accuracy and latency, beside
    remote inference (the dump's images coded with x265 / JPEG, the whole network run on them).

    \b
    featcodec bench dump.h5:/S2 -m tiling,learned --check 'learned.bd_rate_vs_remote<=0'
    """
    from .bench import evaluate_checks, plot, run_bench, summarise, write_csv

    for path in (json_path, csv_path, plot_path):
        if path and os.path.exists(path) and not force:
            raise InvalidInputError(f"{path} exists; pass --force to overwrite it")
    if not inputs and not from_json:
        raise InvalidInputError("give INPUT tensors to benchmark (or --from-json REPORT)")
    if from_json:
        with open(from_json) as f:
            report = json.load(f)
        report["summary"] = summarise([_point(r) for r in report["results"]], remote=report.get("remote"),
                                      heads=report.get("heads_ms"))
    else:
        progress = _progress_callback("benchmarking")
        try:
            report = run_bench(list(inputs), [m.strip() for m in methods.split(",") if m.strip()], rates=rates,
                               task_model=task_model, calibrate_on=calibrate_on, repeat=repeat, threads=threads,
                               remote=remote, image_dirs=list(image_dirs), codec_model=codec_model,
                               metric=metric, progress=progress)
        finally:
            progress.stop()
    report["checks"] = evaluate_checks(list(checks), [_point(r) for r in report["results"]], report["summary"])
    _print_bench(report)
    if json_path:
        text = json.dumps(_strict_json(report), indent=1, default=_json_default, allow_nan=False)
        write_bytes(json_path, (text + "\n").encode(), force)
    if csv_path:
        write_bytes(csv_path, write_csv(report).encode(), force)
    if plot_path:
        plot(plot_path, report)
    failed = [c for c in report["checks"] if not c["passed"]]
    if failed:
        raise click.ClickException("check failed: " + "; ".join(f"{c['check']} (got {c['values']})" for c in failed))


def _point(row):
    from .bench import PointResult

    # strict JSON has no infinity: a lossless point's PSNR and SNR were written as null
    return PointResult(**{**row, **{k: float("inf") for k in ("psnr", "snr") if row.get(k) is None}})


def _strict_json(value):
    """`value` with every non-finite float replaced by None (null), so that every JSON parser reads it
    (Python's json writes Infinity and NaN, which JavaScript's and Go's parsers reject)."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_bench(report) -> None:
    from .bench import beats_image

    columns = ["tensor", "method", "point", "bits/elt", "Kbpi", "CR", "PSNR", "SSIM", "agreement", "enc ms", "dec ms",
               "passes"]
    rows = [[r["tensor"], r["method"], r["point"], _fmt(r["bits_per_element"], ".4f"), _fmt(r["kbpi"], ".1f"),
             _fmt(r["compression_ratio"], ".1f"), _fmt(r["psnr"], ".2f"), _fmt(r["ssim"], ".4f"),
             _fmt(r["agreement"], ".3f"), _fmt(r["encode_ms"], ".1f"), _fmt(r["decode_ms"], ".1f"),
             _fmt(r.get("encode_passes"), ".1f")] for r in report["results"]]
    rows += [[", ".join(r["tensors"]), f"remote {r['codec']}", r["point"], "-", _fmt(r["kbpi"], ".1f"), "-",
              _fmt(r["psnr"], ".2f"), "-", _fmt(r["agreement"], ".3f"), _fmt(r["encode_ms"], ".1f"),
              _fmt(r["decode_ms"], ".1f"), "-"] for r in report.get("remote", [])]
    def over(row):  # the agreement range a BD-rate against the image averages over
        span = row.get("bd_range_vs_remote")
        return f" ({span[0]:.2f}-{span[1]:.2f})" if span else ""

    summary = [[s["tensor"], s["method"], _fmt(s.get("bd_rate_vs_remote"), "+.1f") + over(s),
                *(f"{_fmt(s.get(f'kbpi_at_{v}'), '.0f')} / {_fmt(s.get(f'image_kbpi_at_{v}'), '.0f')}"
                  for v in (0.8, 0.9, 0.95)),
                str(s.get("effective_cr") and tuple(round(v, 1) for v in s["effective_cr"])),
                _fmt(s.get("bd_rate_vs_tiling_agreement"), ".1f"), _fmt(s.get("bd_rate_vs_tiling_psnr"), ".1f"),
                _fmt(s.get("encode_over_head"), ".2f")]
               for s in report["summary"]]
    summary_columns = ["tensor", "method", "BD-rate vs image (x265) % (over agreement)", "Kbpi @ 0.80 (image)",
                       "Kbpi @ 0.90 (image)", "Kbpi @ 0.95 (image)", "effective CR", "BD-rate vs tiling (agreement) %",
                       "BD-rate vs tiling (PSNR) %", "encode / head"]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        console = Console()
        for title, cols, body in (("featcodec bench", columns, rows), ("summary", summary_columns, summary)):
            table = Table(title=title)
            for c in cols:
                table.add_column(c, justify="left" if c in ("tensor", "method", "point") else "right")
            for row in body:
                table.add_row(*row)
            console.print(table)
    else:
        for cols, body in ((columns, rows), (summary_columns, summary)):
            click.echo("\t".join(cols))
            for row in body:
                click.echo("\t".join(row))
    if report.get("settings", {}).get("metric"):
        click.echo(f"agreement: {report['settings']['metric']}")
    for line in beats_image(report["summary"]):
        click.echo(line)
    for item in report["skipped"]:
        click.echo(f"skipped {item['tensor']} {item['method']}@{item['point']}: {item['reason']}", err=True)
    for check in report["checks"]:
        click.echo(f"check {'passed' if check['passed'] else 'FAILED'}: {check['check']} {check['values']}", err=True)


@cli.command()
@click.argument("sources", nargs=-1, required=True, metavar="DUMP.h5 | MODEL.onnx IMAGES…")
@click.option("--layer", "layers", multiple=True, required=True,
              help="Dataset of the dump to train on (repeatable): one auto-tiler per layer. From MODEL.onnx: a "
              "tensor name or a split point of its manifest.")
@click.option("-o", "--output", required=True, help="Folder for the ONNX files and manifest.json.")
@click.option("--name", help="Model name (default: the output folder's name).")
@click.option("--cr", "ratios", multiple=True, type=int, default=(4, 16), show_default=True,
              help="Compression ratios (exits) to train (repeatable); higher ones cascade on the lowest.")
@click.option("--steps", default=4000, show_default=True, help="Maximum MSE training steps per exit.")
@click.option("--task-steps", default=2000, show_default=True,
              help="Maximum steps per exit of the stage with the task loss, after MSE.")
@click.option("--minutes-per-phase", type=float,
              help="Stop each training stage of an exit after this long, keeping its best state; the learning "
                   "rate anneals over this time (or the steps, if they end first).")
@click.option("--layer-minutes", "layer_minutes", multiple=True, metavar="LAYER=MINUTES",
              help="This layer's phases run this long instead of --minutes-per-phase (repeatable), e.g. S1=5.")
@click.option("--batch", default=8, show_default=True, help="Crops per step.")
@click.option("--crop", default=64, show_default=True, help="Crop size without the task loss (fully convolutional).")
@click.option("--task-crop", default=96, show_default=True, help="Crop size with the task loss.")
@click.option("--task-weight", default=1.0, show_default=True,
              help="Weight of the loss through the network's tail (0: MSE only).")
@click.option("--network", type=click.Path(dir_okay=False, exists=True),
              help="ONNX network for the task loss (default: the model the dump names, if bundled).")
@click.option("--width", default=64, show_default=True, help="Channels of the hidden layers.")
@click.option("--lr", default=2e-3, show_default=True, help="Adam peak learning rate (cosine-decayed to 1/20 of it).")
@click.option("--random-crops", type=click.IntRange(0), metavar="N",
              help="From MODEL.onnx: random crops dumped per photo besides its flip, zoom and shrink (default: "
                   f"as many as keep the dump under {TRAINING_DUMP_BYTES / 1e9:.0f} GB of maps, at most "
                   f"{MAX_RANDOM_CROPS}; videos give every frame, or every K-th where they would take more than "
                   "half of that).")
@click.option("--max-samples", type=int, help="Use only the first N samples of the dump.")
@click.option("--seed", default=0, show_default=True)
@click.option("--extend", is_flag=True, help="OUTPUT holds a model: keep its exits (loaded from its ONNX files), "
              "train only the ratios it lacks, cascaded on its lowest-ratio encoder.")
@click.option("--core", help="Train compatibility autoencoders instead: map each --layer onto this layer's "
              "auto-tiler in OUTPUT (shared, frozen), one exit per core ratio given with --cr.")
@click.option("--finetune-decoders", is_flag=True, help="Train the decoders of OUTPUT's --layer/--cr exits further "
              "with the task loss, encoders frozen; a decoder is replaced only if validation improves.")
@click.option("--hevc-rates", help="With --finetune-decoders: train on latents really coded with x265 at these Kbpi "
              "targets (comma-separated; 'lossless' for the uncoded 8-bit latent), each training map twice at the "
              "next rates in turn, instead of the noise proxy. E.g. 15,30,60,120,240,lossless")
@click.option("--rate-lambda", type=click.FloatRange(min=0, min_open=True),
              help="Train the learned codec instead: the auto-tiler --base's exit at the one --cr given, trained "
                   "further on MSE + task loss + this λ per Kbit per sample (the latent entropy-coded; "
                   "--minutes-per-phase bounds the run, --crop its crops; learning rate --lr / 4, as the "
                   "auto-tiler's task stage).")
@click.option("--base", default="centernet_mbv3", show_default=True,
              help="With --rate-lambda: the auto-tiler model whose exit the learned codec starts from.")
@click.option("--from-learned", "start", metavar="NAME",
              help="With --rate-lambda: start from this learned model's encoder and decoder (trained from the same "
                   "--base exit) instead of the exit's.")
@click.option("--encoder", "encoder_kind", type=click.Choice(["exit", "light"]), default="exit", show_default=True,
              help="With --rate-lambda: the exit's encoders, or a light one for the device (depthwise-separable "
                   "convolutions), distilled from them for 10 min first.")
def train(sources, layers, output, name, ratios, steps, task_steps, minutes_per_phase, layer_minutes, batch, crop,
          task_crop, task_weight, network, width, lr, random_crops, max_samples, seed, extend, core, finetune_decoders,
          hevc_rates, rate_lambda, base, start, encoder_kind):
    """Train auto-tilers (or, with --rate-lambda, the learned codec) on activation dumps and export them to
    ONNX (needs featcodec[train]).

    From a network and photos (or videos) in one step: `train MODEL.onnx IMAGES… --layer TENSOR -o DIR`
    dumps the layers of the images, of their flipped, zoomed and shrunk copies and of random crops into
    DIR/.data (kept, so a rerun resumes), then trains with the loss through MODEL's own tail (its manifest
    says which); each phase then runs 7 minutes unless --minutes-per-phase says otherwise (2 exits: under
    30 min).

    Resumable: each finished exit is checkpointed in OUTPUT/.checkpoints.

    \b
    featcodec train data/autotiler_train.h5 --layer S2 --cr 16 --rate-lambda 0.005 \\
        --minutes-per-phase 45 --steps 100000 -o models/learned/centernet_mbv3
    featcodec train models/networks/mtcnn_pnet/mtcnn_pnet.onnx photos/ --layer P2 -o models/autotiler/pnet
    """
    from .train import require_torch

    require_torch()
    dump_path = sources[0]
    if dump_path.lower().endswith(".onnx"):
        if not sources[1:]:
            raise click.UsageError("training from a network needs photos or videos after MODEL.onnx")
        network = network or dump_path
        dump_path, layers = _training_dump(dump_path, list(sources[1:]), list(layers), output, random_crops)
        minutes_per_phase = minutes_per_phase or 7.0
    elif len(sources) > 1:
        raise click.UsageError("images go with MODEL.onnx; a dump is trained on alone")
    elif random_crops is not None:
        raise click.UsageError("--random-crops goes with MODEL.onnx and photos")
    if rate_lambda is not None:
        _train_learned(dump_path, layers, output, name, ratios, steps, minutes_per_phase, batch, crop,
                       task_weight, network, width, lr, max_samples, seed, rate_lambda, base, start, encoder_kind,
                       conflicting=extend or core or finetune_decoders or hevc_rates or layer_minutes)
        return
    if start or encoder_kind != "exit":
        raise click.UsageError("--from-learned and --encoder go with --rate-lambda")
    from .train.autotiler import TrainingConfig, train_autotiler, train_compatibility
    from .train.autotiler import finetune_decoders as finetune

    if sum(map(bool, (extend, core, finetune_decoders))) > 1:
        raise click.UsageError("give one of --extend, --core and --finetune-decoders")
    if hevc_rates and not finetune_decoders:
        raise click.UsageError("--hevc-rates goes with --finetune-decoders")
    rates = _hevc_rates(hevc_rates) if hevc_rates else ()
    config = TrainingConfig(ratios=tuple(sorted(set(ratios))), steps=steps, task_steps=task_steps,
                            minutes_per_phase=minutes_per_phase, layer_minutes=_layer_minutes(layer_minutes, layers),
                            batch=batch, crop=crop, task_crop=task_crop,
                            task_weight=task_weight, width=width, lr=lr, seed=seed, max_samples=max_samples,
                            hevc_rates=rates)
    bar = _TrainingProgress()
    try:
        if finetune_decoders:
            manifest = finetune(dump_path, list(layers), output, name=name or Path(output).name, config=config,
                                network=network, log=bar.log, progress=bar)
        elif core:
            manifest = train_compatibility(dump_path, list(layers), output, core=core, name=name or Path(output).name,
                                           config=config, network=network, log=bar.log, progress=bar)
        else:
            manifest = train_autotiler(dump_path, list(layers), output, name=name or Path(output).name,
                                       config=config, network=network, log=bar.log, progress=bar, extend=extend)
    finally:
        bar.stop()
    sizes = sum(f["bytes"] for f in manifest["files"].values())
    from .codecs.autotiler import training_seconds

    click.echo(f"{output}: {len(manifest['files'])} ONNX files, {sizes / 1e6:.2f} MB, "
               f"{training_seconds(manifest) / 60:.1f} min of training in all", err=True)


def _training_dump(model_path: str, images: list[str], layers: list[str], output: str,
                   random_crops: int | None) -> tuple[str, list[str]]:
    """OUTPUT/.data/train.h5: `layers` of `images`, of their flips, zooms and shrinks and of random crops
    (reused when there), and the datasets to train on: a multi-tensor split point's tensors each get an
    auto-tiler."""
    from .dump import AUGMENTATIONS, layer_datasets, training_sampling
    from .dump import dump as run_dump
    from .onnxmodel import Manifest

    datasets = list(layer_datasets(Manifest.for_model(model_path), layers))
    path = os.path.join(output, ".data", "train.h5")
    if os.path.exists(path):
        import h5py

        with h5py.File(path, "r") as f:
            if all(name in f for name in datasets):
                click.echo(f"{path}: reused", err=True)
                return path, datasets
    fitting_crops, every = training_sampling(model_path, layers, images, TRAINING_DUMP_BYTES, len(AUGMENTATIONS),
                                             MAX_RANDOM_CROPS)
    random_crops = fitting_crops if random_crops is None else random_crops
    os.makedirs(os.path.dirname(path), exist_ok=True)
    progress = _progress_callback("dumping")
    try:
        summary = run_dump(model_path, layers, images, path, force=True, compression="lzf",
                           augmentations=AUGMENTATIONS, random_crops=random_crops, every=every, progress=progress)
    finally:
        progress.stop()
    sampling = f"{random_crops} random crop{'s' * (random_crops != 1)} per photo" + (
        f", one video frame in {every}" if every > 1 else "")
    click.echo(f"{path}: {summary.images} maps ({sampling}) of "
               f"{', '.join(f'{k} {tuple(v)}' for k, v in summary.layers.items())}", err=True)
    return path, datasets


def _train_learned(dump_path, layers, output, name, ratios, steps, minutes, batch, crop, task_weight, network, width,
                   lr, max_samples, seed, lam, base, start, encoder_kind, conflicting) -> None:
    from .train.learned import RateConfig, train_learned

    if conflicting:
        raise click.UsageError("--rate-lambda trains the learned codec: leave out --extend, --core, "
                               "--finetune-decoders, --hevc-rates and --layer-minutes")
    if len(set(ratios)) != 1:
        raise click.UsageError("--rate-lambda starts from one auto-tiler exit: give one --cr")
    bar = _TrainingProgress()
    try:
        for layer in layers:
            config = RateConfig(base=base, ratio=ratios[0], lam=lam, minutes=minutes or 45.0, steps=steps,
                                batch=batch, crop=crop, lr=lr / 4, task_weight=task_weight, width=width,
                                seed=seed, max_samples=max_samples, start=start, encoder=encoder_kind)
            manifest = train_learned(dump_path, layer, output, name=name or Path(output).name, config=config,
                                     network=network, log=bar.log, progress=bar)
    finally:
        bar.stop()
    seconds = sum(t.get("seconds", 0) for t in manifest["training"].values())
    click.echo(f"{output}: {', '.join(manifest['layers'])}, {len(manifest['files'])} ONNX files, "
               f"{seconds / 60:.1f} min of training in all", err=True)


def _hevc_rates(text: str) -> tuple:
    """'15,30,lossless' → (15.0, 30.0, None)."""
    rates = []
    for part in text.split(","):
        part = part.strip().lower()
        try:
            rate = None if part == "lossless" else float(part)
        except ValueError:
            raise click.BadParameter(f"{part!r} is neither a Kbpi target nor 'lossless'",
                                     param_hint="--hevc-rates") from None
        if rate is not None and not 0 < rate < math.inf:
            raise click.BadParameter(f"Kbpi targets must be positive, got {part}", param_hint="--hevc-rates")
        rates.append(rate)
    return tuple(rates)


def _layer_minutes(pairs: tuple[str, ...], layers: tuple[str, ...]) -> dict[str, float]:
    """('S1=5',) → {'S1': 5.0}, each layer one of `layers`."""
    minutes = {}
    for pair in pairs:
        layer, _, value = pair.partition("=")
        layer = layer.strip().strip("/")
        try:
            minutes[layer] = float(value)
        except ValueError:
            raise click.BadParameter(f"{pair!r} is not LAYER=MINUTES", param_hint="--layer-minutes") from None
        if not 0 < minutes[layer] < math.inf:
            raise click.BadParameter(f"minutes must be positive, got {value}", param_hint="--layer-minutes")
        if layer not in {name.strip("/") for name in layers}:
            raise click.BadParameter(f"{layer} is not one of the --layer given", param_hint="--layer-minutes")
    return minutes


class _TrainingProgress:
    """A rich progress bar per training phase on a terminal; log lines either way."""

    def __init__(self):
        self.bar, self.tasks = None, {}

    def log(self, line: str) -> None:
        (self.bar.console.print if self.bar else lambda s: click.echo(s, err=True))(line)

    def __call__(self, phase: str, step: int, steps: int, status: str) -> None:
        if not _stderr_is_tty():
            if "valid" in status:
                click.echo(f"  {phase}: step {step}/{steps} {status}", err=True)
            return
        if self.bar is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                TextColumn("{task.fields[status]}"), console=_console())
            self.bar.start()
        if phase not in self.tasks:
            self.tasks[phase] = self.bar.add_task(phase, total=steps, status="")
        self.bar.update(self.tasks[phase], completed=step, status=status)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@cli.command(cls=CodecCommand)
@click.argument("src")
@click.argument("dst")
@click.option("-m", "--method", help="Codec id: encode arrays / transcode .fcb. Without it: decode or repack.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Codec configuration JSON.")
@click.option("-j", "--jobs", "workers", type=click.IntRange(1, 1024), help="Worker processes (default: cores).")
@click.option("--verify", is_flag=True, help="Decode every output and check shape, dtype (and values if lossless).")
@click.option("--resume", is_flag=True, help="Skip outputs that exist and pass their CRC; finish the rest.")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default="nchw", show_default=True)
@click.option("--scheduler", help="Dask scheduler address (tcp://host:8786): run on a cluster (featcodec[dask]).")
@click.option("--json", "json_path", help="Write the summary as JSON.")
@click.option("-f", "--force", is_flag=True, help="Redo and overwrite existing outputs.")
def convert(src, dst, method, config_path, workers, verify, resume, layout, scheduler, json_path, force,
            extra_params, **options):
    """Convert a whole dumped feature set: a folder tree / glob of .npy or .fcb, an HDF5 file or a
    Zarr store (.zarr).

    \b
    featcodec convert dumps/ compressed/ -m lightweight --levels 8 -j 2   # .npy tree -> .fcb tree
    featcodec convert compressed/ restored.h5                            # .fcb tree -> one HDF5
    featcodec convert acts.h5 npys/                                      # repack HDF5 -> .npy tree
    featcodec convert acts.h5 acts.zarr -m lightweight                   # HDF5 -> Zarr, featcodec chunks
    """
    from .convert import convert as run_convert

    codec = None
    if method or config_path:
        codec = _codec_from_cli(method, config_path, options, extra_params).get_config()
    elif any(v is not None for v in options.values()) or extra_params:
        raise InvalidInputError("codec options need -m METHOD")
    progress = _progress_callback("converting")
    try:
        summary = run_convert(src, dst, codec, workers=workers, verify=verify, resume=resume, layout=layout,
                              scheduler=scheduler, force=force, progress=progress)
    finally:
        progress.stop()
    report = summary.to_json()
    totals = report["totals"]
    rows = [("action", summary.action), ("files", f"{totals['converted']} converted, {totals['skipped']} skipped, "
                                                   f"{totals['failed']} failed of {totals['files']}"),
            ("bytes in / out", f"{_human_bytes(totals['bytes_in'])} / {_human_bytes(totals['bytes_out'])}"),
            ("compression ratio", _fmt(totals["compression_ratio"], ".2f")),
            ("bits/element", _fmt(totals["bits_per_element"], ".4f")),
            ("time", f"{totals['seconds']:.2f} s, {_fmt(totals['mb_per_s'], '.1f')} MB/s, "
                     f"{_fmt(totals['files_per_s'], '.1f')} files/s with {totals['workers']} worker(s)")]
    rows += [(f"FAILED {item.relative}", item.error or "?") for item in summary.failed]
    _print_pairs(f"featcodec convert → {dst}", rows)
    if json_path:
        write_bytes(json_path, (json.dumps(report, indent=1) + "\n").encode(), force=True)
    if summary.failed:
        raise click.ClickException(f"{len(summary.failed)} of {len(summary.items)} input(s) failed (see above)")


@cli.command()
def models():
    """List the trained models of the codecs that use them, and the layers each serves."""
    for cls in loaded_codecs().values():
        for line in cls.describe_models():
            click.echo(line)


@cli.command()
def codecs():
    """List the codecs, their parameters with their defaults, and how to set them."""
    for codec_id in codec_ids():
        try:
            cls = codec_class(codec_id)
        except FeatcodecError as err:  # a broken plugin is listed, with why
            click.echo(f"{codec_id}: unavailable ({err})")
            continue
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        calibrates = " Calibrates (`featcodec calibrate`)." if cls.can_calibrate() else ""
        click.echo(f"{codec_id}: {summary}{calibrates}")
        defaults = cls.param_defaults()
        for declared in cls.param_declarations():
            default = defaults[declared.name]
            setting = declared.name if default is inspect.Parameter.empty else f"{declared.name}={default!r}"
            how = declared.flag if declared.cli else f"-p {declared.name}=…"
            choices = f" {' | '.join(str(c) for c in declared.choices)}" if declared.choices else ""
            click.echo(f"    {setting}  ({how}{choices}) {declared.help}".rstrip())


@cli.command()
@click.argument("model_path", metavar="MODEL.onnx")
@click.option("--at", "tensor", required=True, help="Tensor to cut at (or a split-point alias from the manifest).")
@click.option("-o", "--output", "outputs", nargs=2, required=True, metavar="HEAD.onnx TAIL.onnx",
              help="Where to write the head and the tail.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--tolerance", default=1e-4, show_default=True,
              help="Largest relative difference allowed between tail(head(x)) and the full model.")
def split(model_path, tensor, outputs, force, tolerance):
    """Cut an ONNX model at a tensor into a head (input → tensor) and a tail (tensor → outputs).

    `--at` may name several tensors, comma-separated (an FPN's levels): together they must cut the
    graph. The cut is verified: tail(head(x)) must match the full model on a random input.
    """
    from .onnxmodel import Manifest, load_model, split_model, verify_split

    manifest = Manifest.for_model(model_path)
    tensors = manifest.resolve_layers(tensor)
    model = load_model(model_path)
    head, tail = split_model(model, tensors)
    error = verify_split(model, head, tail, size=manifest.preprocessing.get("size"))
    if error > tolerance:
        raise InvalidInputError(f"tail(head(x)) differs from the model by {error:.3g} (relative) > {tolerance}")
    for proto, path in zip((head, tail), outputs):
        write_bytes(path, proto.SerializeToString(), force)
    click.echo(f"{outputs[0]} + {outputs[1]}: cut at {', '.join(tensors)}, verified (max relative difference "
               f"{error:.2g})", err=True)


def _floats(text: str | None):
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None


@cli.command()
@click.argument("model_path", metavar="MODEL.onnx")
@click.option("-o", "--output", help="Where to write it (default: MODEL.json beside the model, where featcodec "
              "looks for it).")
@click.option("--task", type=click.Choice(["detection", "classification", "dense"]),
              help="What the outputs are (default: guessed: (N, K, 6) boxes, (N, classes) logits, maps).")
@click.option("--size", help="Input height and width, 'H,W' or one number (needed when the graph's is dynamic).")
@click.option("--resize", type=click.Choice(["stretch", "letterbox", "shorter-then-center-crop"]),
              help="How a photo becomes the input (default: centre crop for classifiers, letterbox otherwise).")
@click.option("--resize-shorter", type=click.IntRange(1), help="Centre crop: the shorter side before cropping "
              "(default: size / 0.875, ImageNet's 256 for 224).")
@click.option("--scale", type=float, help="Pixel values are multiplied by this first.  [default: 1/255]")
@click.option("--mean", help="Then minus this, per channel (one number or R,G,B).  [default: 0]")
@click.option("--std", help="Then divided by this, per channel.  [default: 1]")
@click.option("--color", type=click.Choice(["rgb", "bgr"]), default="rgb", show_default=True)
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), help="Default: from the input's shape.")
@click.option("--pad-value", default=0, show_default=True, type=click.IntRange(0, 255), help="Letterbox fill.")
@click.option("--pad-position", type=click.Choice(["center", "top-left"]), default="center", show_default=True,
              help="Where a letterboxed image sits on its canvas.")
@click.option("--split", "splits", multiple=True, metavar="NAME=TENSOR[,TENSOR…]",
              help="A named split point (repeatable); several tensors make a multi-tensor split. Each is checked "
              "to cut the graph.")
@click.option("--detections-output", help="Detection: the output of (N, K, 6) boxes x1,y1,x2,y2,score,class.")
@click.option("--score-threshold", default=0.3, show_default=True, help="Detection: boxes kept as ground truth.")
@click.option("--loss", type=click.Choice(["centernet", "kl", "nmse", "threshold"]),
              help="Training loss through the tail (default: kl for classifiers, nmse otherwise; threshold with "
              "--loss-threshold).")
@click.option("--loss-output", "loss_outputs", multiple=True,
              help="Outputs (or inner tensors, such as a detector's raw heads) the training loss compares "
              "(repeatable; default: the model's outputs).")
@click.option("--loss-threshold", metavar="OUTPUT[:CHANNEL]=VALUE",
              help="Threshold loss: the score map the post-processing thresholds and its threshold, e.g. prob:1=0.6 "
              "(nmse plus the map's keep/drop decisions and the boxes where it keeps; docs/networks.md).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing manifest.")
def manifest(model_path, output, task, size, resize, resize_shorter, scale, mean, std, color, layout, pad_value,
             pad_position, splits, detections_output, score_threshold, loss, loss_outputs, loss_threshold, force):
    """Describe MODEL.onnx for featcodec: its task, input preprocessing, outputs and split points.

    `split`, `dump`, `bench` and `train` read it. What is not given is guessed from the graph;
    see docs/networks.md.
    """
    from .onnxmodel import describe

    sizes = _floats(size)
    if sizes is not None and len(sizes) not in (1, 2):
        raise click.BadParameter("give H,W or one number", param_hint="--size")
    points = {}
    for text in splits:
        name, _, tensors = text.partition("=")
        if not name or not tensors:
            raise click.BadParameter(f"{text!r} is not NAME=TENSOR[,TENSOR…]", param_hint="--split")
        points[name] = tensors.split(",")
    threshold = None
    if loss_threshold:
        score, _, value = loss_threshold.rpartition("=")
        score, _, channel = score.partition(":")
        try:
            threshold = {"score": score, "channel": int(channel or 0), "threshold": float(value)}
        except ValueError:
            raise click.BadParameter(f"{loss_threshold!r} is not OUTPUT[:CHANNEL]=VALUE",
                                     param_hint="--loss-threshold") from None
        if not score:
            raise click.BadParameter(f"{loss_threshold!r} names no output", param_hint="--loss-threshold")
    elif loss == "threshold":
        raise click.BadParameter("--loss threshold needs --loss-threshold OUTPUT[:CHANNEL]=VALUE", param_hint="--loss")
    described = describe(model_path, task=task, size=None if sizes is None else (int(sizes[0]), int(sizes[-1])),
                         resize=resize, mean=_floats(mean), std=_floats(std), scale=scale, color=color, layout=layout,
                         pad_value=pad_value, pad_position=pad_position, resize_shorter=resize_shorter,
                         split_points=points, detections_output=detections_output,
                         score_threshold=score_threshold, loss=loss, loss_outputs=list(loss_outputs) or None,
                         loss_threshold=threshold)
    output = output or os.path.splitext(model_path)[0] + ".json"
    write_bytes(output, (json.dumps(described, indent=1) + "\n").encode(), force)
    pre = described["preprocessing"]
    click.echo(f"{output}: {described['task']}, input {pre['input']} {pre['size'][0]}×{pre['size'][1]} "
               f"{pre['layout']} ({pre['resize']}), outputs {', '.join(described['outputs'])}, "
               f"{len(points)} split point{'s' * (len(points) != 1)}", err=True)


@cli.command()
@click.argument("model_path", metavar="MODEL.onnx")
@click.argument("images", nargs=-1, required=True)
@click.option("--layer", "layers", multiple=True, required=True,
              help="Tensor to store (repeatable); split-point aliases like S4 come from the model manifest.")
@click.option("-o", "--output", required=True, help="HDF5 file to write.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1, 256))
@click.option("--compression", type=click.Choice(["gzip", "lzf", "none"]), default="gzip", show_default=True,
              help="HDF5 compression of the stored activations (lzf and none are faster).")
@click.option("--augment", "augmentations", multiple=True, type=click.Choice(["flip", "zoom", "shrink"]),
              help="Also dump variants of every image (repeatable), for training data.")
@click.option("--random-crops", default=0, show_default=True, type=click.IntRange(0),
              help="Also dump N random crops of every photo (35-90 % of each side, half of them mirrored).")
@click.option("--every", default=1, show_default=True, type=click.IntRange(1),
              help="Videos: keep every K-th frame.")
@click.option("--max-frames", type=click.IntRange(1), help="Videos: at most N frames from each.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output.")
def dump(model_path, images, layers, output, batch_size, compression, augmentations, random_crops, every, max_frames,
         force):
    """Run MODEL.onnx on IMAGES (photos, videos, folders, globs) and store layer activations in HDF5.

    A video (.mp4, .avi, …) gives its frames in order (every K-th, at most N), each one sample,
    with its frame index and the video's fps recorded: a feature sequence for `encode --gop`.
    """
    from .dump import dump as run_dump

    if os.path.exists(output) and not force:
        raise InvalidInputError(f"{output} exists; pass --force to overwrite it")
    progress = _progress_callback("dumping")
    try:
        summary = run_dump(model_path, list(layers), list(images), output, batch_size=batch_size, force=force,
                           compression=compression, augmentations=tuple(augmentations),
                           random_crops=random_crops, every=every,
                           max_frames=max_frames, progress=progress)
    finally:
        progress.stop()
    shapes = ", ".join(f"{k} {tuple(v)}" for k, v in summary.layers.items())
    click.echo(f"{output}: {summary.images} images, {shapes}; {summary.images / summary.seconds:.1f} images/s",
               err=True)


class _progress_callback:
    """A rich progress bar on a terminal, nothing otherwise; call it with (done, total)."""

    def __init__(self, label: str):
        self.label, self.bar, self.task = label, None, None

    def __call__(self, done: int, total: int) -> None:
        if not _stderr_is_tty():
            return
        if self.bar is None:
            from rich.progress import Progress

            self.bar = Progress(console=_console(), transient=True)
            self.task = self.bar.add_task(self.label, total=total)
            self.bar.start()
        self.bar.update(self.task, completed=done)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@contextlib.contextmanager
def _warnings_to_stderr(limit: int = 3):
    """Show featcodec's warnings (an unreachable rate target…) as ``Warning: …`` lines on stderr,
    at most `limit` per kind, then how many more there were."""
    import warnings

    from .errors import FeatcodecWarning

    counts: dict[type, int] = {}
    previous = warnings.showwarning

    def show(message, category, *args, **kwargs):
        if not issubclass(category, FeatcodecWarning):
            return previous(message, category, *args, **kwargs)
        counts[category] = counts.get(category, 0) + 1
        if counts[category] <= limit:
            click.echo(f"Warning: {message}", err=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", FeatcodecWarning)
        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = previous
            for count in counts.values():
                if count > limit:
                    click.echo(f"Warning: … and {count - limit} more like it", err=True)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure becomes one ``Error: …`` line and a non-zero exit."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        with _warnings_to_stderr():
            code = cli.main(args=args, prog_name="featcodec", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Error: aborted", err=True)
        code = 130
    except click.ClickException as err:
        click.echo(f"Error: {err.format_message()}", err=True)
        code = err.exit_code
    except BrokenPipeError:
        code = 1
    except (FeatcodecError, OSError) as err:
        if debug:
            raise
        message = str(err).replace("\n", " ").strip() or type(err).__name__
        click.echo(f"Error: {message}", err=True)
        code = 1
    except Exception as err:  # a bug: still one line, the traceback behind --debug
        if debug:
            raise
        click.echo(f"Error: internal error ({type(err).__name__}: {err}); rerun with --debug for details", err=True)
        code = 1
    sys.exit(code or 0)
