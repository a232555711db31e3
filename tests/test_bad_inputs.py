"""The bad-input corpus (tests/bad_inputs/cases.yaml) through the command line.

Every case must give exit 2 and exactly one stderr line naming the file (and line or field)
and what is wrong, with no traceback; `run` must refuse before it writes a run folder or
builds a reference. Most cases call the CLI's ``main()`` in this process (it is what the
console script runs); a few run the real ``squeezelab`` console script end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from bad_input_files import CORPUS, copy_corpus
from tiny import invoke

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    kind: str  # the class of mistake: the folder
    file: str
    at: str
    says: str
    named: str  # the file the error line names (relative to the class folder)
    commands: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.file}"


def _cases() -> list[Case]:
    manifest = yaml.safe_load((CORPUS / "cases.yaml").read_text())
    cases = []
    for kind, entries in manifest.items():
        for file, spec in entries.items():
            scenario = kind != "distiller" or "commands" in spec
            default = ("validate", "run") if scenario else ("import-distiller",)
            cases.append(Case(kind, file, spec["at"], spec["says"], spec.get("in", file),
                              tuple(spec.get("commands", default))))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_corpus(tmp_path_factory.mktemp("bad") / "corpus")


def test_the_corpus_covers_every_class_of_the_issue() -> None:
    counts = Counter(case.kind for case in CASES)
    assert sum(counts.values()) >= 60
    assert set(counts) == {"not_yaml", "one_mistake", "validate_vs_run", "reference",
                           "distiller", "searchable"}
    assert min(counts.values()) >= 10, counts
    listed = {(CORPUS / case.kind / case.file) for case in CASES}
    on_disk = {p for p in CORPUS.glob("*/*.yaml")}
    assert on_disk <= listed, f"corpus files without an entry: {sorted(on_disk - listed)}"


def _expected_start(case: Case, folder: Path) -> str:
    named = folder / case.kind / case.named
    return f"squeezelab: error: {named}:" + (f"{case.at}: " if case.at else " ")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_one_line_exit_2(case: Case, corpus: Path, tmp_path: Path) -> None:
    path = corpus / case.kind / case.file
    for command in case.commands:
        args = [command, str(path)]
        if command in ("run", "regress", "search"):
            args += ["--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
        if command == "regress":
            args += ["--baseline", str(ROOT / "scenarios" / "baselines" / "regression.json")]
        code, out, err = invoke(*args)
        lines = err.splitlines()
        assert code == 2 and len(lines) == 1, f"{command}: exit {code}\n{err}{out}"
        line = lines[0]
        assert line.startswith(_expected_start(case, corpus)), f"{command}: {line}"
        assert case.says in line, f"{command}: {line}"
        assert "Traceback" not in err and out == "", f"{command}: {out}"
        # refused before any job: no run folder, no reference built
        assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def squeezelab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = Path(sys.executable).with_name("squeezelab")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "unified.cli"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("case", ["not_yaml/latin1.yaml", "reference/python-raises-at-import.yaml",
                                  "reference/weights-pickled-model.yaml",
                                  "validate_vs_run/input-too-small.yaml"])
def test_the_console_script_prints_one_line_and_no_progress(case: str, corpus: Path,
                                                            tmp_path: Path) -> None:
    (spec,) = [c for c in CASES if c.id == case]
    path = corpus / case
    result = squeezelab("run", str(path), "--out", str(tmp_path / "out"), "--cache-dir",
                        str(tmp_path / "cache"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""  # no progress bar, no table
    (line,) = result.stderr.splitlines()
    assert line.startswith(_expected_start(spec, corpus)) and spec.says in line
    assert not (tmp_path / "out").exists()
