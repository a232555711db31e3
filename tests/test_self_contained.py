"""The repository alone runs every test: nothing reads a path outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a path that climbs out of the checkout, or the sibling folder the project grew up beside
OUTSIDE = re.compile(r"\.\./|[\"'/]shared[\"'/]|parents\[(\d+)\]")


def tracked_sources() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    suffixes = {".py", ".yaml", ".yml", ".toml", ".ini", ".cfg"}
    return [ROOT / f for f in listed if Path(f).suffix in suffixes or f.startswith(".ci/")]


def climbs_out(path: Path, line: str) -> bool:
    if path.suffix in {".yaml", ".yml"}:
        line = line.partition("#")[0]  # Distiller's own comments quote its command lines
    for match in OUTSIDE.finditer(line):
        levels = match.group(1)
        if levels is None:
            return True
        # Path(__file__).parents[n] must stay inside the checkout
        depth = len(path.relative_to(ROOT).parts) - 1  # folders between the file and ROOT
        if int(levels) > depth:
            return True
    return False


def third_party(path: Path) -> bool:
    """Distiller's own schedule files, copied unchanged: their paths are Distiller's (the
    importer reports model_activation_stats and never reads it)."""
    return path.read_text(errors="replace").startswith("# Source: IntelLabs/distiller")


def test_no_source_reads_outside_the_repository() -> None:
    this = Path(__file__).resolve()
    offenders = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                 for path in tracked_sources()
                 if path.is_file() and path != this and not third_party(path)
                 for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
                 if climbs_out(path, line) and "noqa: outside-ok" not in line]
    assert offenders == []


def test_the_check_catches_a_path_outside() -> None:
    test_file = ROOT / "tests" / "test_x.py"
    assert climbs_out(test_file, 'Path(__file__).parents[2] / "shared" / "x"')
    assert climbs_out(test_file, "open('../shared/distiller-schedules/a.yaml')")
    assert not climbs_out(test_file, "Path(__file__).parents[1] / 'scenarios'")
    assert not climbs_out(ROOT / "tests" / "adapters" / "test_x.py", "Path(__file__).parents[2]")
