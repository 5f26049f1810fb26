"""python -m fairseq_mixtape_tools.benchmark: the benchmark's command line (command.py)."""

from .command import cli

if __name__ == "__main__":
    cli()
