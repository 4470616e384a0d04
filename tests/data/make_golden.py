"""Write the golden .fcb files ONCE per format version; tests decode them forever.

    python tests/data/make_golden.py NAME   # writes NAME.fcb and NAME.expected.npy if absent
"""

import sys
from pathlib import Path

import numpy as np

import featcodec

GOLDEN = Path(__file__).parent / "golden"
CASES = {
    "raw_v1": dict(method="raw"),
    "raw_float16_zstd_v1": dict(method="raw", dtype="float16", zstd=9),
    "uniform_v1": dict(method="uniform", levels=5),
    # Lightweight, entropy coder version 4 (the compiled kernel; versions 1-3 no longer decode).
    # Real ReLU activations (a crop of S2 from the bundled demo dump), so that the contexts and
    # the later binary decisions (symbols >= 2) are all in the bytes.
    "lightweight_v4": dict(method="lightweight", levels=6, source="S2"),
    # Signed activations (S1): the quantizer table carries "order": "zigzag".
    "lightweight_signed_v4": dict(method="lightweight", levels=7, source="S1"),
    # A sparse S4 crop whose empty 8 x 8 blocks are skipped, 21 x 29 so the last blocks are partial.
    "lightweight_blocks_v4": dict(method="lightweight", levels=6, source="S4", crop=(12, 40, 21, 29)),
    # Partner chains up to three deep ("parents" in a calibrated table): coding order and the
    # partner context are in the bytes.
    "lightweight_partners_v4": dict(method="lightweight", levels=6, source="S2", parents=[-1, 0, 1, 1, 3, 0]),
    # Entropy coder version 5 (decisions "s > k" in contexts relative to k): 12-16 levels, so that
    # decisions past the seventh, where versions 4 and 5 differ most, are in the bytes.
    "lightweight_v5": dict(method="lightweight", levels=12, source="S2"),
    "lightweight_signed_v5": dict(method="lightweight", levels=14, source="S1"),
    "lightweight_blocks_v5": dict(method="lightweight", levels=16, source="S4", crop=(12, 40, 21, 29)),
    "lightweight_partners_v5": dict(method="lightweight", levels=9, source="S2", parents=[-1, 0, 1, 1, 3, 0]),
    # Entropy coder version 6 (one context model per decision, no mixing), the same four kinds; written
    # when `fast` meant version 6 (it means version 7 since), so rerunning these cases writes version 7.
    "lightweight_v6": dict(method="lightweight", levels=12, source="S2", fast=True),
    "lightweight_signed_v6": dict(method="lightweight", levels=14, source="S1", fast=True),
    "lightweight_blocks_v6": dict(method="lightweight", levels=16, source="S4", crop=(12, 40, 21, 29), fast=True),
    "lightweight_partners_v6": dict(method="lightweight", levels=9, source="S2", parents=[-1, 0, 1, 1, 3, 0],
                                    fast=True),
    # Entropy coder version 7 (`fast`: one multi-symbol step per symbol), the same four kinds, and two
    # levels (a binary alphabet, which version 7 codes as version 6 does).
    "lightweight_v7": dict(method="lightweight", levels=12, source="S2", fast=True),
    "lightweight_signed_v7": dict(method="lightweight", levels=14, source="S1", fast=True),
    "lightweight_blocks_v7": dict(method="lightweight", levels=16, source="S4", crop=(12, 40, 21, 29), fast=True),
    "lightweight_partners_v7": dict(method="lightweight", levels=9, source="S2", parents=[-1, 0, 1, 1, 3, 0],
                                    fast=True),
    "lightweight_binary_v7": dict(method="lightweight", levels=2, source="S2", fast=True),
    # HEVC codecs through the bundled ffmpeg / x265, one worker thread (x265's output depends on its
    # frame-thread count). A (C, H, W) crop of real S2 activations.
    "tiling_v1": dict(method="tiling", qp=30, preset="fast", source="S2"),
    "fpc_v1": dict(method="fpc", qp=30, norm="channel", preset="fast", source="S2"),
    # Lossless HEVC, so that the latent frame can be read back from the file (tests/test_golden.py).
    "autotiler_v1": dict(method="autotiler", cr=4, lossless=True, preset="fast", source="S2", crop=(0, 40, 32, 32),
                         channels=72),
    # The learned codec: its latent symbols, coded by the compiled kernel (version 7), are in the bytes.
    "learned_v1": dict(method="learned", step=1 / 7, model="centernet_mbv3", source="S2", crop=(0, 40, 32, 32),
                       channels=72),
    # The light encoder's model (the default since), the same crop.
    "learned_light_v1": dict(method="learned", step=1 / 7, model="centernet_mbv3_light", source="S2",
                             crop=(0, 40, 32, 32), channels=72),
}
DEMO_DUMP = Path(__file__).parents[2] / "examples" / "reference_demo.h5"


def real_crop(layer: str, crop=(0, 40, 24, 32), channels: int = 6) -> np.ndarray:
    """`channels` channels from `channel`, `height` x `width` from (`top`, `top`) of the first sample."""
    import h5py

    channel, top, height, width = crop
    with h5py.File(DEMO_DUMP) as f:
        return f[layer][0:1, channel:channel + channels, top:top + height, top:top + width].astype(np.float32)


def golden_input(name: str):
    """The input and the codec of golden case `name`, rebuilt exactly (tests re-encode them)."""
    params = dict(CASES[name])
    if "source" in params:
        data = real_crop(params.pop("source"), params.pop("crop", (0, 40, 24, 32)), params.pop("channels", 6))
    else:
        rng = np.random.default_rng(2026)
        data = np.maximum(rng.normal(0, 1, (2, 3, 5, 7)), 0).astype(np.float32)
    method = params.pop("method")
    if "parents" in params:  # a calibrated table, as `Lightweight.calibrate` would write it
        from featcodec.codecs import Lightweight

        fast = params.pop("fast", None)
        table = Lightweight(levels=params.pop("levels"), fast=fast).design(data)
        codec = Lightweight(table={**table, "parents": params.pop("parents")}, fast=fast)
    else:
        codec = featcodec.get_codec(method, **params)
    codec.threads = 1
    return data, codec


def main(names):
    for name in names:
        fcb = GOLDEN / f"{name}.fcb"
        if fcb.exists():
            print(f"{fcb} exists: golden files are never rewritten")
            continue
        data, codec = golden_input(name)
        blob = featcodec.encode(data, codec, layer="golden/layer:0")
        fcb.write_bytes(blob)
        np.save(GOLDEN / f"{name}.expected.npy", featcodec.decode(blob))
        print(f"wrote {fcb} ({len(blob)} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:] or list(CASES))
