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
}


def main(names):
    rng = np.random.default_rng(2026)
    source = np.maximum(rng.normal(0, 1, (2, 3, 5, 7)), 0).astype(np.float32)
    for name in names:
        fcb = GOLDEN / f"{name}.fcb"
        if fcb.exists():
            print(f"{fcb} exists: golden files are never rewritten")
            continue
        params = dict(CASES[name])
        blob = featcodec.encode(source, params.pop("method"), layer="golden/layer:0", **params)
        fcb.write_bytes(blob)
        np.save(GOLDEN / f"{name}.expected.npy", featcodec.decode(blob))
        print(f"wrote {fcb} ({len(blob)} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:] or list(CASES))
