"""The README's and docs/'s commands run as written: every ``sh`` and ``python`` block of a page, in
page order, in a scratch folder of its own that sees the repository's examples/ and models/
(``console`` blocks — training for hours, a Dask cluster — are shown, not run)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def test_the_pages_have_runnable_blocks():
    readme = blocks((ROOT / "README.md").read_text())
    assert sum(lang == "sh" for lang, _ in readme) >= 3 and any(lang == "python" for lang, _ in readme)
    for page in PAGES:  # a block is run or says why not
        for lang, code in blocks((ROOT / page).read_text()):
            assert lang in ("sh", "python", "console") or not code.lstrip().startswith(("featcodec", "import")), \
                f"{page}: an untagged block of commands"


@pytest.mark.parametrize("page", [p for p in PAGES if any(lang in ("sh", "python")
                                                          for lang, _ in blocks((ROOT / p).read_text()))])
def test_commands_run_as_written(page, tmp_path):
    for name in ("examples", "models"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for lang, code in blocks((ROOT / page).read_text()):
        if lang not in ("sh", "python"):
            continue
        command = ["bash", "-euo", "pipefail", "-c", code] if lang == "sh" else [sys.executable, "-c", code]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{page}:\n{code}\n{result.stderr[-2000:]}"
