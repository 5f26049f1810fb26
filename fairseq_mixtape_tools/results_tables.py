"""Copy the tables the experiment scripts generate into the documents that quote them.

A document quotes a generated file between two markers::

    <!-- generated: examples/language_model/results/sweep_hidden/sweep.md -->
    ... the file's text, copied by this tool ...
    <!-- end generated -->

so that the numbers a reader sees are the ones the script wrote, never typed by hand.
``python -m fairseq_mixtape_tools.results_tables`` rewrites every quoted block of RESULTS.md
from its file; ``--check`` only reports the blocks that differ (exit code 1).
"""

import pathlib
import re
import sys
from typing import List, Tuple

from .arguments import ArgumentParser
from .experiments.common import REPO

DOCUMENTS = ["RESULTS.md"]
BLOCK = re.compile(r"(<!-- generated: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end generated -->)",
                   re.DOTALL)


def refreshed(text: str, root: pathlib.Path = REPO) -> Tuple[str, List[str]]:
    """``text`` with every quoted block replaced by its file's current text, and the paths of
    the blocks that changed. A block naming a file that does not exist is an error."""
    changed = []

    def replace(match):
        path = root / match["path"]
        if not path.is_file():
            raise SystemExit(f"results_tables: error: {match['path']}: quoted in a document but "
                             "not found; allowed: a file the experiment scripts wrote")
        body = path.read_text()
        if body != match["body"]:
            changed.append(match["path"])
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, text), changed


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="report the quoted blocks that differ from their files (exit 1), "
                             "without writing")
    args = parser.parse_args(argv)
    stale = []
    for name in DOCUMENTS:
        document = REPO / name
        text, changed = refreshed(document.read_text())
        stale += [f"{name}: {path}" for path in changed]
        if changed and not args.check:
            document.write_text(text)
    for line in stale:
        print(("differs: " if args.check else "updated: ") + line)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
