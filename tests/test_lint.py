"""The codebase is ruff clean (style and imports), checked with the suite so CI enforces it."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ruff_clean():
    ruff = Path(sys.executable).parent / "ruff"
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run([str(ruff), *args], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


#: import names whose distribution is called otherwise
DISTRIBUTION = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml", "pytorch_lightning": "pytorch-lightning"}


def test_every_third_party_import_is_declared():
    """A package we import must be a declared dependency, not one that happens to arrive with another."""
    import ast
    import re

    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[\[<>=!~ ]", spec, maxsplit=1)[0].lower() for spec in project["dependencies"]}
    ours = {"pretrain", "finetune", "cluster", "quickstart_time"}
    imported = set()
    for path in [*REPO.glob("pretrain/**/*.py"), *REPO.glob("finetune/**/*.py"), *REPO.glob("cluster/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {name for name in imported - ours if name not in sys.stdlib_module_names}
    missing = {DISTRIBUTION.get(name, name).lower() for name in third_party} - declared
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
