"""Build the HEVC rate model's table (featcodec/rate_curves.json): stream size over a CRF grid.

    python bench/rate_curves.py data/rate_curves.jsonl data/autotiler_train.h5 data/video_*.h5 data/pans.h5 \
        > featcodec/rate_curves.json

(data/rate_curves.jsonl keeps the curves measured so far: a second run resumes.)

Intra curves (`photo_curves`): tiling frames of 64 photos of a dump (the auto-tiler's training
photos: the training split and examples/images_more, never the held-out photos) and FPC and
auto-tiler (CR4, CR16) frames of every 4th, on the reference detector's S1, S2 and S4. Inter
curves (`group_curves`, a group: an intra frame, then P frames) per clip and layer (S2, S4): the
bundled 64-frame clips in tiling groups of 32 and 8, FPC groups of 8 (S2) and auto-tiler CR16
groups of 16; the 16-frame clips of bench/pan_clips.py in tiling groups of 16 and 8 and
auto-tiler groups of 16. x265 preset medium (the codecs' default), 8-bit frames. About 50 min on
2 cores (`make rate-model`).
"""

import json
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np

import featcodec
from featcodec import video

GRID = list(range(0, 52, 3))


def curve(make_stacks, inter: bool, source: str, frames: str) -> dict:
    """log2 bits per pixel of the frame stacks `make_stacks()` gives (each its own stream) at each
    CRF of the grid."""
    stacks = [video.pad_frames(s) for s in make_stacks()]
    pixels = sum(s.size for s in stacks)
    sizes = [sum(len(video.encode_frames_qp(s, 8, None, "medium", inter=inter, crf=crf)) for s in stacks)
             for crf in GRID]
    return {"source": source, "frames": frames, "inter": inter, "activity": round(video.activity(stacks, inter), 4),
            "geometry": list(stacks[0].shape),  # frames per stream, height, width
            "log2_bpp": [round(float(np.log2(8 * size / pixels)), 3) for size in sizes]}


def frames_of(method: str, sample: np.ndarray, cr: int | None = None) -> np.ndarray:
    codec = featcodec.get_codec(method, qp=22, **({"cr": cr} if cr else {}))
    return codec.to_frames(sample)[0]


def photo_curves(path: Path, photos: int = 64):
    """Intra curves of about `photos` photos of a dump (its un-augmented entries, evenly spaced)."""
    with h5py.File(path, "r") as dump:
        names = [n.decode() for n in dump["images"][:]]
        plain = [i for i, n in enumerate(names) if "#" not in n]
        for k, i in enumerate(plain[:: max(1, len(plain) // photos)]):
            for layer in ("S1", "S2", "S4"):
                sample = dump[layer][i]
                kinds = [("tiling", None)]
                if k % 4 == 0:
                    kinds += [("fpc", None), ("autotiler", 4), ("autotiler", 16)]
                for method, cr in kinds:
                    yield (names[i], f"{layer} {method}{cr or ''}", False,
                           lambda sample=sample, method=method, cr=cr: [frames_of(method, sample, cr)])


def group_stacks(samples: np.ndarray, method: str, cr: int | None) -> list[np.ndarray]:
    """A group's frames as x265 codes them: one stack, or for FPC one per channel."""
    per_sample = [frames_of(method, sample, cr) for sample in samples]
    if method == "fpc":
        return [np.stack([frames[c] for frames in per_sample]) for c in range(len(per_sample[0]))]
    return [np.concatenate(per_sample)]


def clip_rows(dump: h5py.File) -> dict[str, list[int]]:
    """The rows of each video clip in a dump, in frame order (``images`` names a clip's frames
    ``clip#frame=K``); empty for a dump of photos."""
    if "frames" not in dump:
        return {}
    clips: dict[str, list[int]] = {}
    for i, (name, frame) in enumerate(zip(dump["images"][:], dump["frames"][:])):
        if frame >= 0:
            clips.setdefault(name.decode().split("#")[0], []).append(i)
    return clips


def group_curves(path: Path):
    """Inter curves of each clip in a dump."""
    with h5py.File(path, "r") as dump:
        for clip, rows in clip_rows(dump).items():
            # long clips (the bundled 64-frame dumps): groups of 32 and 8, FPC on S2; short ones: 16 and 8
            groups = [("tiling", None, 32, 0), ("tiling", None, 8, 0), ("fpc", None, 8, 16), ("autotiler", 16, 16, 0)] \
                if len(rows) >= 32 else [("tiling", None, 16, 0), ("tiling", None, 8, 8), ("autotiler", 16, 16, 0)]
            for layer in ("S2", "S4"):
                for method, cr, gop, start in groups:
                    if method == "fpc" and layer == "S4":  # 128 streams per CRF: S2's 72 take long enough
                        continue
                    samples = dump[layer][rows[start] : rows[start] + gop]
                    yield clip, f"{layer} {method}{cr or ''} gop{gop}@{start}", True, \
                        lambda samples=samples, method=method, cr=cr: group_stacks(samples, method, cr)


def main(paths: list[str], done: Path) -> None:
    """Measure every curve the dumps at `paths` call for; `done` keeps each as it is measured (a
    line of JSON), so a second run resumes where the first stopped."""
    start, rows = time.perf_counter(), {}
    if done.exists():
        for line in done.read_text().splitlines():
            row = json.loads(line)
            rows[row["source"], row["frames"]] = row
    with done.open("a") as log:
        for path in map(Path, paths):
            with h5py.File(path, "r") as dump:
                clips = bool(clip_rows(dump))
            for source, frames, inter, stacks in (group_curves if clips else photo_curves)(path):
                if (source, frames) not in rows:
                    rows[source, frames] = row = curve(stacks, inter, source, frames)
                    log.write(json.dumps(row, separators=(",", ":")) + "\n")
                    log.flush()
                print(f"{len(rows):4d} {source} {frames}", file=sys.stderr, flush=True)
    about = ("x265 (preset medium, 8-bit) stream size over CRF; built by bench/rate_curves.py from "
             + ", ".join(Path(p).name for p in paths) + f", {time.perf_counter() - start:.0f} s in the last run")
    lines = ",\n".join(json.dumps(row, separators=(",", ":")) for row in rows.values())  # a curve per line
    print(f'{{"about": {json.dumps(about)},\n"grid": {json.dumps(GRID)},\n"curves": [\n{lines}\n]}}')


if __name__ == "__main__":
    # One x265 process per encode: PyAV's in-process libx265 segfaulted once in some 200,000 encodes
    # of a build (not reproduced in 3,000 repeats of that stream); a process dies alone.
    os.environ.setdefault("FEATCODEC_VIDEO_BACKEND", "ffmpeg")
    main(sys.argv[2:], Path(sys.argv[1]))
