"""ffmpeg (subprocess) against PyAV (in process) on real activations: the same codec, per-stage times.

    python bench/studies/video_backends.py data/reference_heldout.h5
"""

import os
import sys

import h5py

import featcodec
from featcodec.metrics import psnr

SAMPLES = 4


def main(path):
    print("| layer | codec | rate | backend | Kbpi | PSNR dB | normalise ms | video enc ms | video dec ms | "
          "denormalise ms |")
    print("|" + "---|" * 10)
    with h5py.File(path) as f:
        for layer in ("S2", "S4"):
            x = f[layer][:SAMPLES]
            for method in ("tiling", "fpc"):
                for rate in ({"qp": 22}, {"kbpi": 60}):
                    for backend in ("ffmpeg", "pyav"):
                        os.environ["FEATCODEC_VIDEO_BACKEND"] = backend
                        codec = featcodec.get_codec(method, **rate)
                        featcodec.encode(x[:1], codec)  # warm-up
                        codec.reset_timings()
                        blob = featcodec.encode(x, codec)
                        y = featcodec.decode(blob, codec=codec)
                        t = {k: 1000 * v / SAMPLES for k, v in codec.timings.items()}
                        kbpi = featcodec.info(blob)["payload_bytes"] * 8 / 1000 / SAMPLES
                        print(f"| {layer} | {method} | {rate} | {backend} | {kbpi:.1f} | {psnr(x, y):.2f} | "
                              f"{t.get('normalise', 0):.1f} | {t.get('video_encode', 0):.1f} | "
                              f"{t.get('video_decode', 0):.1f} | {t.get('denormalise', 0):.1f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
