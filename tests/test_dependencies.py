"""Floors of dependencies whose older releases give wrong results, not errors."""

from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

#: BarlowTwinsLoss scaled gradients by 1/world_size under DDP before 1.5.26 (lightly #1977, fixed in #1980)
LIGHTLY_FLOOR = Version("1.5.26")


def test_lightly_floor_keeps_barlow_twins_gradients_right_under_ddp():
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    line = next(line for line in pyproject.splitlines() if line.strip().startswith('"lightly'))
    lightly = Requirement(line.split('"')[1])
    assert not lightly.specifier.contains(Version("1.5.25")), f"pyproject allows {lightly}"
    assert lightly.specifier.contains(LIGHTLY_FLOOR)
    assert Version(version("lightly")) >= LIGHTLY_FLOOR
