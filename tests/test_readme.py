"""The README's two set-up lines are exactly what CI runs first."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_setup_lines():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL).group(1).strip().splitlines()
    assert len(block) == 2 and "se4lip-extract" in block[0] and "pytest" in block[1]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd ", "export "))]
    assert ci[:2] == block
    assert ci[2:] == ["ruff check .", "bash .ci/old_pythons.sh"]  # the lint, then the renderers' Pythons
