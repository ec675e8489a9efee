"""Every Python block of the README runs on its own, as written (a newcomer copies them one by one)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_alone(index, tmp_path):
    out = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stderr[-2000:]


def test_readme_has_python_blocks_and_the_ten_line_output():
    assert len(BLOCKS) >= 2
    text = README.read_text()
    assert "pip install -e . && python -m gradflow" in text
    assert "pip install -e '.[test]' && python -m pytest -q" in text
