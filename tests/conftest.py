import os
import subprocess
import sys

import pytest


def run_cli(*args, input=None, cwd=None, check=None):
    """Run the real `featcodec` executable in a subprocess; returns CompletedProcess (bytes)."""
    result = subprocess.run(
        [sys.executable, "-m", "featcodec", *map(str, args)],
        input=input, capture_output=True, cwd=cwd, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if check is True:
        assert result.returncode == 0, result.stderr.decode()
    return result


@pytest.fixture
def cli():
    return run_cli
