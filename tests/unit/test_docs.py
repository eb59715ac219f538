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


def _gen_ref():  # docs/gen_ref.py is a script beside the docs, not part of the package
    import importlib.util
    import sys

    if "gen_ref" in sys.modules:
        return sys.modules["gen_ref"]
    spec = importlib.util.spec_from_file_location("gen_ref", ROOT / "docs" / "gen_ref.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_ref"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_config_field_is_in_the_reference_with_a_docstring() -> None:
    import dataclasses

    from entropy_rl.control.detector import DetectorConfig
    from entropy_rl.train import config

    gen = _gen_ref()
    undocumented = []
    sections = [(f.name, f.type) for f in dataclasses.fields(config.Config) if f.name != "preset"]
    classes = [(name, getattr(config, tp)) for name, tp in sections]
    classes.append(("control.detector_kwargs", DetectorConfig))
    for prefix, cls in classes:
        path = ROOT / "src" / (cls.__module__.replace(".", "/") + ".py")
        _, parsed = gen.dataclass_fields(path, cls.__name__)
        # the ast reading sees exactly the fields the dataclass has, in order
        assert [f.name for f in parsed] == [f.name for f in dataclasses.fields(cls)]
        undocumented += [f"{prefix}.{f.name}" for f in parsed if not f.doc]
    assert not undocumented, (
        "config fields without a docstring (write a string literal under the field; it is "
        "the text of the config reference): " + ", ".join(undocumented)
    )
    page = gen.config_reference()
    assert "| `algo.lr` | `float` | `1e-4` |" in page  # the author's spelling of the default
    assert "One of `token-mean`, `seq-mean-token-mean`" in page  # allowed values from _choice


def test_the_clip_table_in_the_concepts_guide_is_the_commands_output() -> None:
    from entropy_rl.ops.clip import format_clip_table

    table = format_clip_table([0.9, 0.4, 0.01], eps_low=0.2, eps_high=0.28)
    assert table in (ROOT / "docs" / "concepts.md").read_text()


_IMAGE = re.compile(r"^!\[[^\]]*\]\(([^)]+\.png)\)")
_STAMP = re.compile(r"entropy-rl \d+\.\d+\.\d+ at commit `[0-9a-f]{7,}`")


def test_every_figure_names_its_command_and_version() -> None:
    """A figure is followed by a caption with the command (in backticks) and the version."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    bad = []
    for page in pages:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if not _IMAGE.match(line):
                continue
            rest = [ln for ln in lines[i + 1 : i + 12] if ln.strip() and not _IMAGE.match(ln)]
            caption = " ".join(rest[:4])
            if not (rest and rest[0].startswith("*") and "`entropy-rl " in caption):
                bad.append(f"{page.name}:{i + 1}: no caption with the command")
            elif not _STAMP.search(caption):
                bad.append(
                    f"{page.name}:{i + 1}: caption lacks 'entropy-rl X.Y.Z at commit `abc1234`'"
                )
            image = (page.parent / _IMAGE.match(line).group(1)).resolve()
            if not image.is_file():
                bad.append(f"{page.name}:{i + 1}: {image.name} does not exist")
    assert not bad, "\n".join(bad)


def test_the_readmes_relative_links_exist() -> None:
    """MkDocs checks the site's links; the README is not part of the site, so check it here."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert len(local) > 10
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*(?:\{\s*#([\w-]+)[^}]*\})?\s*$")


def _anchors(text: str) -> set[str]:
    """The ids MkDocs gives the headings of a page: ``{#id}`` where given, else the toc
    extension's slug of the heading's text (outside fenced code)."""
    from markdown.extensions.toc import slugify

    ids, fenced = set(), False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif line.startswith("::: "):  # mkdocstrings: the object's dotted path is its id
            ids.add(line[4:].strip())
        elif not fenced and (m := _HEADING.match(line)):
            plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).replace("`", "")
            ids.add(m.group(2) or slugify(plain.replace("*", ""), "-"))
    return ids


def dead_links(pages: dict[Path, str]) -> list[str]:
    """``page: target`` for every relative link of ``pages`` (path -> text) to a file that
    does not exist or an anchor its page lacks (pages not in ``pages`` are read from disk)."""
    bad = []
    for page, text in pages.items():
        for target in _LINK.findall(re.sub(r"(?s)```.*?```", "", text)):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            if dest not in pages and not dest.exists():
                bad.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                body = pages[dest] if dest in pages else dest.read_text()
                ids = _anchors(body)  # a documented object's members: module.member
                if anchor not in ids and not any(anchor.startswith(i + ".") for i in ids):
                    bad.append(f"{page.name}: {target} (no such anchor)")
    return bad


def test_the_link_check_finds_dead_files_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## Run info {#run-info}\n\n### `model.dtype` here\n")
    page = tmp_path / "b.md"
    text = (
        "[ok](a.md#run-info) [ok](a.md#modeldtype-here) [ok](a.md#title) [ok](#local)\n"
        "## Local\n[web](https://x.org/#y)\n```\n[in code](gone.md)\n```\n"
        "[bad](a.md#errors) [bad](gone.md) [bad](#nowhere)\n"
    )
    assert dead_links({page: text}) == [
        "b.md: a.md#errors (no such anchor)", "b.md: gone.md (no such file)",
        "b.md: #nowhere (no such anchor)",
    ]  # fmt: skip


def test_no_page_of_the_docs_or_the_readme_links_to_a_missing_file_or_anchor() -> None:
    """What mkdocs --strict checks, without building the site (and the README, which is not
    part of it); the reference pages are the ones docs/gen_ref.py generates."""
    docs = ROOT / "docs"
    pages = {p.resolve(): p.read_text() for p in [ROOT / "README.md", *docs.rglob("*.md")]}
    gen = _gen_ref()
    generated = {"reference/config.md": gen.config_reference, "reference/cli.md": gen.cli_reference,
                 "reference/presets.md": gen.presets_reference, "benchmarks.md": gen.benchmarks_page}  # fmt: skip
    for name, make in generated.items():
        pages[(docs / name).resolve()] = make()
    assert len(pages) > 15
    bad = dead_links(pages)
    assert not bad, "dead links in the docs:\n" + "\n".join(bad)
