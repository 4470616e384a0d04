"""The README's commands run as written: every ``sh`` block, then every ``python`` block, in a scratch
folder that sees the repository's examples/ and models/ (``console`` blocks, such as training for hours,
are shown, not run)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_runnable_blocks():
    readme = (ROOT / "README.md").read_text()
    assert len(blocks(readme, "sh")) >= 3 and blocks(readme, "python")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    for name in ("examples", "models"):
        (folder / name).symlink_to(ROOT / name)
    return folder


def test_readme_commands_run_as_written(scratch):
    readme = (ROOT / "README.md").read_text()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for block in blocks(readme, "sh"):
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=scratch, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{block}\n{result.stderr[-2000:]}"
    for block in blocks(readme, "python"):
        subprocess.run([sys.executable, "-c", block], cwd=scratch, check=True, timeout=120)
    assert (scratch / "s4_again.npy").exists() and (scratch / "restored.h5").exists()
