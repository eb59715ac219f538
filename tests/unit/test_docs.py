"""The repository refers to nothing outside itself.

Every tracked text file is searched for pointers to notes that ship with neither the repository
nor the package (the internal notes this project was started from) and for absolute paths of
the machine a file was written on. A docstring should cite the paper or a section of docs/.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Built from pieces so that this file does not match itself.
_NOTES = ("REFERENCE" + ".md", "FINDINGS" + ".md", "shared" + "/")
_MACHINE = re.compile(r"(?<![\w.~-])/(?:" + "|".join(("work", "home", "Users", "root")) + r")/")
_SKIP_DIRS = {".git", ".venv", "site", "runs", "build", "dist", "__pycache__", ".mypy_cache"}
_BINARY = {".png", ".jpg", ".safetensors", ".bin", ".pt", ".gz", ".zip", ".whl"}


def _tracked_files() -> list[Path]:
    """Files git tracks; without git (an unpacked sdist), every file outside build outputs."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file() and not _SKIP_DIRS & set(p.relative_to(ROOT).parts)
        ]
    return [ROOT / n for n in names if Path(n).suffix not in _BINARY and (ROOT / n).is_file()]


def find_outside_references(files: list[Path], root: Path) -> list[str]:
    """``path:line: text`` for every line that points outside the repository."""
    hits = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if any(note in line for note in _NOTES) or _MACHINE.search(line):
                hits.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return hits


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text(
        "ok line\n"
        "see " + "REFERENCE" + ".md section 2\n"
        "data at /" + "work/models/x\n"
        "relative/work/is fine and so is ~/work/x\n"
    )
    hits = find_outside_references([bad], tmp_path)
    assert [h.split(":")[1] for h in hits] == ["2", "3"]


def test_no_file_refers_outside_the_repository() -> None:
    files = _tracked_files()
    assert len(files) > 50  # the listing worked
    hits = find_outside_references(files, ROOT)
    assert not hits, (
        "these lines point at notes outside the repository or at a machine path; cite the "
        "paper or a section of docs/ instead:\n" + "\n".join(hits)
    )
