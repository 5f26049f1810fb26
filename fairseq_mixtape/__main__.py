"""``python -m fairseq_mixtape`` prints the plugin's directory (absolute), for

    fairseq-train --user-dir "$(python -m fairseq_mixtape)" ...

from any directory once the plugin is installed."""

import pathlib

print(pathlib.Path(__file__).resolve().parent)
