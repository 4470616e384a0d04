"""Camera clips made from training photos, for the HEVC rate model's group curves.

    python bench/pan_clips.py data/pans.h5                    # from training photos (the model's table)
    python bench/pan_clips.py data/pans_heldout.h5 heldout    # from held-out photos (its check)

Four bundled clips are few to learn how x265 groups of P frames spend bits. Each of 12
training photos (examples/images, the training split of examples/make_data.py) becomes a
16-frame, 30 fps clip made by the bundled ffmpeg (H.264 at CRF 18, so its frames carry coding
noise like a camera's): a slow pan (1 px per frame), a fast pan (4 px), a zoom, or a fixed
camera with sensor noise; the reference detector's S2 and S4 activations of its frames are
dumped to one HDF5 file (``images`` names each frame's clip).
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import imageio_ffmpeg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from make_data import IMAGES, MODEL, splits  # noqa: E402

from featcodec.dump import dump  # noqa: E402

FRAMES = 16
MOTIONS = {
    "slowpan": "scale=800:600:force_original_aspect_ratio=increase,crop=640:480:x='n*1':y='n*0.5'",
    "fastpan": "scale=800:600:force_original_aspect_ratio=increase,crop=640:480:x='n*4':y='n*1'",
    "zoom": "scale=800:600:force_original_aspect_ratio=increase,crop='640-n*6':'480-n*4.5',scale=640:480",
    "fixed": "scale=800:600:force_original_aspect_ratio=increase,crop=640:480,noise=alls=6:allf=t",
}


def make_clip(photo: Path, motion: str, out: Path) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-loop", "1",
                    "-i", str(photo), "-vf", MOTIONS[motion] + ",format=yuv420p", "-frames:v", str(FRAMES),
                    "-r", "30", "-c:v", "libx264", "-crf", "18", str(out)], check=True)


def main(output: str, split: str = "train") -> None:
    photos = splits()[split][::3][:12] if split == "train" else splits()[split][:12]
    with tempfile.TemporaryDirectory() as folder:
        clips = []
        for i, name in enumerate(photos):
            motion = list(MOTIONS)[i % len(MOTIONS)]
            clip = Path(folder) / f"{Path(name).stem}_{motion}.mp4"
            make_clip(IMAGES / name, motion, clip)
            clips.append(str(clip))
        summary = dump(str(MODEL), ["S2", "S4"], clips, output, force=True, compression="lzf")
    print(f"{output}: {summary}", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:3])
