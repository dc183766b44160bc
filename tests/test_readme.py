"""The README's Python examples run as written (those that need a CUDA device are skipped)."""
import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
SECTION = README.split("## Python API", 1)[1].split("\n## ", 1)[0] if "## Python API" in README else ""
BLOCKS = re.findall(r"```python\n(.*?)```", SECTION, flags=re.S)


def test_the_python_api_section_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    code = BLOCKS[index]
    if "needs a CUDA device" in code:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("the example needs a CUDA device")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md (Python API example {index + 1})", "exec"), {"__name__": "__readme__"})
