#!/usr/bin/env bash
# Throughput of `featcodec convert` on a ~1 GB dumped set of real activations, -j 1 and -j 2.
#   bash bench/studies/convert_throughput.sh data/reference_train.h5 data/reference_heldout.h5 > bench/results/convert.txt
set -euo pipefail
work=$(mktemp -d /tmp/featcodec-convert.XXXXXX)
trap 'rm -rf "$work"' EXIT
FEATCODEC=${FEATCODEC:-.venv/bin/featcodec}
PY=${PY:-.venv/bin/python}
"$PY" - "$work/src" "$@" <<'PY'
import sys, h5py, numpy as np, pathlib
root = pathlib.Path(sys.argv[1])
for path in sys.argv[2:]:
    with h5py.File(path) as f:
        for layer in ("S2", "S4"):
            data = f[layer]
            for i in range(data.shape[0]):
                out = root / pathlib.Path(path).stem / layer
                out.mkdir(parents=True, exist_ok=True)
                x = data[i : i + 1]
                np.save(out / f"{i:03d}.npy", x)
                if layer == "S4":
                    np.save(out / f"{i:03d}_flipped.npy", np.ascontiguousarray(x[..., ::-1]))
PY
echo "input: $(du -sb "$work/src" | cut -f1) bytes in $(find "$work/src" -name '*.npy' | wc -l) files"
for jobs in 1 2; do
    echo "== -j $jobs: lightweight --levels 8 (quantizer designed per file)"
    /usr/bin/time -f "peak RSS of one process: %M KiB, wall %e s" \
        "$FEATCODEC" convert "$work/src" "$work/out$jobs" -m lightweight --levels 8 -j "$jobs" --json "$work/s$jobs.json"
done
cmp <(cd "$work/out1" && find . -name '*.fcb' -exec sha256sum {} + | sort) \
    <(cd "$work/out2" && find . -name '*.fcb' -exec sha256sum {} + | sort) && echo "-j 1 and -j 2 outputs are identical"
