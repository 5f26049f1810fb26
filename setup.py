"""Two distributions from one tree:

    pip install .                                  fairseq-mixtape: the fairseq plugin, its
                                                   tools and the core (fairseq and its needs)
    FAIRSEQ_MIXTAPE_DIST=core pip install .        fairseq-mixtape-core: the output layers and
                                                   their loss alone (torch only)
"""

import os

from setuptools import find_packages, setup

CORE = os.environ.get("FAIRSEQ_MIXTAPE_DIST", "full") == "core"
if os.environ.get("FAIRSEQ_MIXTAPE_DIST", "full") not in ("full", "core"):
    raise SystemExit(f"FAIRSEQ_MIXTAPE_DIST: got {os.environ['FAIRSEQ_MIXTAPE_DIST']!r}; "
                     "allowed: full (default) or core")

FULL_REQUIRES = [
    # official fairseq 0.12.2 does not run on Python >= 3.11; fairseq-fixed is its build for it
    'fairseq-fixed==0.12.3.1; python_version >= "3.11"',
    'fairseq==0.12.2; python_version < "3.11"',
    "numpy",
    "hydra-core>=1.0.7",
    "omegaconf>=2.0.6",
    "sacrebleu>=2.0",
    "sentencepiece",
    "subword-nmt",
    "sacremoses",
    "tensorboardX",
    "matplotlib",
]

setup(
    name="fairseq-mixtape-core" if CORE else "fairseq-mixtape",
    version="0.3.0",
    description=("Mixtape, Mixture of Softmaxes and sigsoftmax output layers for PyTorch"
                 if CORE else
                 "Mixtape, Mixture of Softmaxes and sigsoftmax output layers for fairseq"),
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    # core: the layers and their loss; full: also the plugin (what --user-dir points at) and the
    # tools around it (demo, benchmark, ...)
    packages=(["fairseq_mixtape", "fairseq_mixtape.output_layers"] if CORE else find_packages(
        include=["fairseq_mixtape", "fairseq_mixtape.*", "fairseq_mixtape_tools",
                 "fairseq_mixtape_tools.*"])),
    python_requires=">=3.8",
    install_requires=["torch>=1.13"] + ([] if CORE else FULL_REQUIRES),
    entry_points={} if CORE else {"console_scripts": [
        "fairseq-mixtape-bottleneck = fairseq_mixtape_tools.bottleneck:cli",
        "fairseq-mixtape-demo = fairseq_mixtape_tools.demo:cli",
        "fairseq-mixtape-benchmark = fairseq_mixtape_tools.benchmark:cli",
    ]},
)
