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


def test_the_ten_lines_print_what_the_readme_says(tmp_path):
    """The numbers the README shows under "prints" are what its first block prints (the count
    of gradient evaluations may differ by a few on another CPU: it is checked apart)."""
    shown = re.search(r"\nprints\n\n```\n(.*?)```", README.read_text(), re.S).group(1).strip().splitlines()
    out = subprocess.run([sys.executable, "-c", BLOCKS[0]], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    printed = out.stdout.strip().splitlines()
    assert printed[:-1] == shown[:-1]
    nfev = re.compile(r"diversity ([\d.]+), (\d+) gradient evaluations")
    (div, n), (div_shown, n_shown) = nfev.match(printed[-1]).groups(), nfev.match(shown[-1]).groups()
    assert div == div_shown and abs(int(n) - int(n_shown)) <= 5
