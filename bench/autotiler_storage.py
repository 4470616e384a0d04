"""Storage of a shared-core auto-tiler against independent per-layer models (the paper's Table 1).

    python bench/autotiler_storage.py models/autotiler/centernet_mbv3/manifest.json

Independent: every layer keeps its own copy of each network its encoder / decoder paths use.
Shared: each ONNX file once. Encoder side (the edge device) and decoder side (the server) apart.
"""

import json
import sys
from pathlib import Path


def main(path):
    manifest = json.loads(Path(path).read_text())
    sizes = {name: record["bytes"] for name, record in manifest["files"].items()}
    rows = []
    for side in ("encoder", "decoder"):
        shared = {f for entry in manifest["layers"].values() for chain in entry[side].values() for f in chain}
        independent = sum(sum(sizes[f] for f in {f for chain in entry[side].values() for f in chain})
                          for entry in manifest["layers"].values())
        rows.append((side, independent, sum(sizes[f] for f in shared)))
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
    print("| part | independent per-layer models | shared core + compatibility | reduction |")
    print("|---|---|---|---|")
    for side, independent, shared in rows:
        reduction = 100 * (1 - shared / independent)
        print(f"| {side} | {independent / 1024:.1f} KiB | {shared / 1024:.1f} KiB | {reduction:.1f} % |")


if __name__ == "__main__":
    main(sys.argv[1])
