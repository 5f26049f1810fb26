from setuptools import find_packages, setup

setup(
    name="fairseq-mixtape",
    version="0.2.0",
    description="Mixtape, Mixture of Softmaxes and sigsoftmax output layers for fairseq",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    # the plugin (what --user-dir points at) and the tools around it (demo, benchmark, ...)
    packages=find_packages(include=["fairseq_mixtape", "fairseq_mixtape.*",
                                    "fairseq_mixtape_tools", "fairseq_mixtape_tools.*"]),
    python_requires=">=3.8",
    install_requires=[
        # official fairseq 0.12.2 does not run on Python >= 3.11; fairseq-fixed is its build for it
        'fairseq-fixed==0.12.3.1; python_version >= "3.11"',
        'fairseq==0.12.2; python_version < "3.11"',
        "torch>=1.13",
        "numpy",
        "hydra-core>=1.0.7",
        "omegaconf>=2.0.6",
        "sacrebleu>=2.0",
        "sentencepiece",
        "subword-nmt",
        "sacremoses",
        "tensorboardX",
        "matplotlib",
    ],
    entry_points={"console_scripts": [
        "fairseq-mixtape-bottleneck = fairseq_mixtape_tools.bottleneck:cli",
        "fairseq-mixtape-demo = fairseq_mixtape_tools.demo:cli",
        "fairseq-mixtape-benchmark = fairseq_mixtape_tools.benchmark:cli",
    ]},
)
