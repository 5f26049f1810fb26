"""Every command the documentation shows works as written.

The fenced code blocks of the user-facing Markdown files (``DOCS``) are extracted and run,
offline, at the tiny sizes the documents use, against ``../shared/data`` (skipped with a clear
message where it is absent):

- ```` ```bash ````, ```` ```sh ```` and ```` ```shell ```` blocks run in bash, ```` ```python ````
  blocks with this environment's python (``python - <<EOF`` in the same shell). All blocks of one
  file run in order in one ``bash -euo pipefail`` session started in the repository root, with
  the environment's bin folder first on PATH: a later block sees what an earlier one built
  (train, then generate), as a reader who pastes them into one terminal does.
- ``/tmp`` in the blocks is replaced by a fresh temporary folder per file, so that runs do not
  collide with each other or with a reader's files (``../shared/data`` by ``$MIXTAPE_SHARED_DATA``
  when that is set).
- A block that cannot run here (downloads, GPU clusters, hours-long runs, installing packages)
  carries a marker on the line right before its opening fence::

      <!-- docs-test: skip (downloads WMT'14 from the internet) -->

  The reason is mandatory. Every other fenced block must name its language: ``bash``/``sh``/
  ``shell``/``python`` blocks run, any other (``text`` for printed output) is shown only.

The checks of the markers and languages are quick; running the blocks is ``slow`` (minutes).
"""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT_SHARED_DATA = REPO.parent / "shared" / "data"

RUN_LANGUAGES = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]*(?:\([^)]*\)[^)]*)*)\)\s*"
                    r"-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")


def documents() -> List[Path]:
    """The Markdown files a user reads commands from."""
    names = ["README.md", "CONTRIBUTING.md", "examples/README.md",
             "examples/translation/README.md", "examples/language_model/README.md",
             "benchmarks/README.md", "examples/pytorch/README.md"]
    paths = [REPO / name for name in names] + sorted((REPO / "docs").glob("*.md"))
    return [path for path in paths if path.is_file()]


@dataclass
class Block:
    path: Path
    line: int                 # 1-based line of the opening fence
    language: str             # the info string's first word, lower case ('' if none)
    code: str
    skip: Optional[str]       # the marker's reason, None when the block runs

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.skip is None and self.language in RUN_LANGUAGES


def parse(path: Path):
    """(blocks, problems) of a Markdown file: its fenced code blocks and the marker errors."""
    lines = path.read_text().splitlines()
    blocks, problems = [], []
    pending = None  # (line, reason) of a marker waiting for its fence
    i = 0
    while i < len(lines):
        line = lines[i]
        where = f"{path.relative_to(REPO)}:{i + 1}"
        if line.lstrip().startswith("<!--") and "docs-test" in line:
            match = MARKER.match(line)
            if not match:
                problems.append(f"{where}: malformed marker (write <!-- docs-test: skip (REASON) "
                                f"-->): {line.strip()}")
            elif not match["reason"].strip():
                problems.append(f"{where}: a skip marker needs a reason: {line.strip()}")
            pending = (i + 1, match["reason"].strip() if match else "")
            i += 1
            continue
        fence = FENCE.match(line)
        if fence:
            indent, mark = fence["indent"], fence["fence"]
            body, j = [], i + 1
            while j < len(lines) and not (lines[j].strip().startswith(mark[0] * len(mark))
                                          and lines[j].strip().strip(mark[0]) == ""):
                text = lines[j]
                body.append(text[len(indent):] if text.startswith(indent) else text.lstrip())
                j += 1
            skip = None
            if pending is not None:
                if pending[0] == i:  # the marker is the line right before the fence
                    skip = pending[1]
                else:
                    problems.append(f"{path.relative_to(REPO)}:{pending[0]}: a skip marker must "
                                    f"be the line right before a code block's opening fence")
                pending = None
            blocks.append(Block(path, i + 1, fence["info"].lower(), "\n".join(body) + "\n", skip))
            i = j + 1
            continue
        if pending is not None and line.strip():
            problems.append(f"{path.relative_to(REPO)}:{pending[0]}: a skip marker must be the "
                            f"line right before a code block's opening fence")
            pending = None
        i += 1
    if pending is not None:
        problems.append(f"{path.relative_to(REPO)}:{pending[0]}: a skip marker with no code "
                        f"block after it")
    for block in blocks:
        if not block.language:
            problems.append(f"{block.where}: a code block without a language: write ```bash or "
                            f"```python (run by tests/test_docs.py) or ```text (not run)")
    return blocks, problems


DOCS = documents()


def test_documents_are_found():
    names = {path.relative_to(REPO).as_posix() for path in DOCS}
    assert {"README.md", "examples/translation/README.md",
            "examples/language_model/README.md"} <= names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_markers_and_languages(path):
    """Every skip marker has a reason and sits right before a block; every block names its
    language (so that no command is left out of the run by accident)."""
    _, problems = parse(path)
    assert not problems, "\n".join(problems)


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
LINKED_DOCS = DOCS + [REPO / "RESULTS.md"]


def heading_anchors(path: Path) -> set:
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation other than
    '-' and '_' dropped, spaces to '-' (a repeated heading gets -1, -2, ...); fenced code left
    out."""
    anchors, seen, fenced = set(), {}, False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading and not fenced:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def broken_links(path: Path, root: Path = REPO) -> List[str]:
    """The relative links of a Markdown file whose file or heading anchor does not exist, each
    as 'FILE:LINE: TARGET: why', FILE relative to ``root``."""
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for match in LINK.finditer(line):
            target = match.group("target")
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            name, _, anchor = target.partition("#")
            linked = (path.parent / name).resolve() if name else path
            where = f"{path.relative_to(root)}:{number}: {target}"
            if not linked.exists():
                problems.append(f"{where}: no file {linked}")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
                problems.append(f"{where}: no heading with anchor #{anchor} in {linked.name}")
    return problems


@pytest.mark.parametrize("path", LINKED_DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(path):
    """Every relative link names a file of the repository and, with #anchor, one of its
    headings (so that renaming a heading or moving a file cannot leave a dead link)."""
    problems = broken_links(path)
    assert not problems, "\n".join(problems)


def test_link_check_finds_a_dead_anchor_and_file(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A heading: here (2 of 3)\n\n[ok](#a-heading-here-2-of-3) [bad](#a-heading) "
                    "[gone](missing.md) [web](https://example.org/x)\n")
    problems = [p.split(": ", 2)[2] for p in broken_links(page, tmp_path)]
    assert problems == ["no heading with anchor #a-heading in page.md",
                        f"no file {tmp_path / 'missing.md'}"]


def script_of(blocks: List[Block], tmp: Path, shared: Optional[Path]) -> str:
    """The bash session that runs a file's blocks in order; each announces itself on stderr."""
    out = ["set -euo pipefail"]
    for n, block in enumerate(blocks):
        code = re.sub(r"(?<![\w./-])/tmp(?=[/\s\"':;)]|$)", str(tmp), block.code, flags=re.M)
        if shared is not None and shared != DEFAULT_SHARED_DATA:
            code = code.replace("../shared/data", str(shared))
        out.append(f"echo {quote('=== docs-test: running ' + block.where)}\" (at ${{SECONDS}} s)\" >&2")
        if RUN_LANGUAGES[block.language] == "python":
            end = f"DOCS_TEST_PYTHON_{n}_EOF"
            assert end not in code
            out.append(f"{quote(sys.executable)} - <<'{end}'\n{code}{end}")
        else:
            out.append(code)
    out.append("echo '=== docs-test: all blocks passed' >&2")
    return "\n".join(out) + "\n"


def quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.mark.slow
@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_commands_run(path, tmp_path, request):
    blocks, problems = parse(path)
    assert not problems, "\n".join(problems)
    runnable = [block for block in blocks if block.runs]
    if not runnable:
        pytest.skip(f"{path.relative_to(REPO)} has no runnable code blocks")
    shared = None
    if any("shared/data" in block.code for block in runnable):
        shared = request.getfixturevalue("shared_data")  # skips where ../shared/data is absent
    run_blocks(runnable, tmp_path, shared)


def run_blocks(blocks: List[Block], tmp_path: Path, shared: Optional[Path]) -> str:
    """Run ``blocks`` in order in one bash session, as a reader pastes them (``/tmp`` replaced
    by ``tmp_path``); fails naming the block that failed. Returns what they printed."""
    script = script_of(blocks, tmp_path, shared)
    (tmp_path / "docs_test.sh").write_text(script)
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is as fast, and far faster
    env.setdefault("MPLBACKEND", "Agg")     # on a busy machine
    result = subprocess.run(["bash", "-euo", "pipefail", str(tmp_path / "docs_test.sh")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    started = re.findall(r"=== docs-test: running (\S+)", result.stderr)
    assert result.returncode == 0, (
        f"the block at {started[-1] if started else '?'} failed (exit {result.returncode})\n"
        f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-8000:]}")
    return result.stdout + result.stderr


def block_starting(path: Path, first_line: str) -> Block:
    """The one fenced block of ``path`` whose code starts with ``first_line``."""
    blocks, problems = parse(path)
    assert not problems, "\n".join(problems)
    found = [block for block in blocks if block.code.startswith(first_line)]
    assert len(found) == 1, f"{path}: {len(found)} blocks start with {first_line!r}"
    return found[0]


def test_results_quote_the_generated_tables():
    """Every table RESULTS.md quotes between ``<!-- generated: FILE -->`` markers is FILE's text
    as the experiment script wrote it (``python -m fairseq_mixtape_tools.results_tables``
    refreshes the copies), and the main sections quote at least the sweep and Multi30k."""
    from fairseq_mixtape_tools.results_tables import BLOCK, refreshed

    text = (REPO / "RESULTS.md").read_text()
    quoted = {match["path"] for match in BLOCK.finditer(text)}
    assert {"examples/language_model/results/sweep_hidden/sweep.md",
            "examples/translation/results/multi30k.md"} <= quoted
    _, stale = refreshed(text)
    assert not stale, f"RESULTS.md's copies differ from {stale}: run python -m " \
                      "fairseq_mixtape_tools.results_tables"


def test_results_tables_finds_a_stale_copy(tmp_path):
    from fairseq_mixtape_tools.results_tables import refreshed

    (tmp_path / "table.md").write_text("| a |\n|---|\n| 1 |\n")
    document = "x\n<!-- generated: table.md -->\n| a |\n|---|\n| 2 |\n<!-- end generated -->\ny\n"
    text, stale = refreshed(document, tmp_path)
    assert stale == ["table.md"] and "| 1 |" in text and "| 2 |" not in text
    assert refreshed(text, tmp_path) == (text, [])
    with pytest.raises(SystemExit, match="missing.md: quoted in a document but not found"):
        refreshed("<!-- generated: missing.md -->\n<!-- end generated -->", tmp_path)


def undocumented_flags(guide: str) -> List[str]:
    """The plugin's fairseq-train flags that ``guide`` never names as `` `--flag``."""
    import dataclasses

    from fairseq_mixtape.models.flags import OutputLayerFlags, flag_name

    flags = [flag_name(f.name) for f in dataclasses.fields(OutputLayerFlags)
             if not f.name.startswith("_")]  # (FairseqDataclass._name: not a flag)
    return [flag for flag in flags if not re.search(rf"`{re.escape(flag)}[` ]", guide)]


def test_the_guide_documents_every_flag():
    """Every flag the plugin adds to fairseq-train (OutputLayerFlags: the output layer's settings,
    their former names, the wiring, compiling) is named in docs/guide.md; one left out is found."""
    guide = (REPO / "docs" / "guide.md").read_text()
    assert undocumented_flags(guide) == []
    assert undocumented_flags(guide.replace("`--mixtape-gate-noise", "`--mixtape-noise")) == \
        ["--mixtape-gate-noise"]
