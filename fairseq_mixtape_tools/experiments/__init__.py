"""The experiments of RESULTS.md, one module each, behind the same small interface
(``common.Driver``: ``parse_args``, ``plan``, ``run_for``, ``train_arguments``, ``train``,
``write_table``, ``main`` and ``STAGES``):

  ptb       Penn Treebank language model: softmax vs MoS vs Mixtape vs sigsoftmax
            (examples/language_model/ptb_experiment.py)
  multi30k  Multi30k English-German translation, trained to convergence
            (examples/translation/multi30k_experiment.py)
  sweep     the output-width sweep of a word-level language model
            (examples/language_model/bottleneck_sweep.py)
  common    what they share: that interface, the output variants they compare
            (OUTPUT_VARIANTS), the flags they have in common (their definitions and checks),
            runs, their steps and results, and the tables

The scripts in ``examples/`` only call each module's ``main``. This module imports nothing;
import the experiment you need, e.g. ``fairseq_mixtape_tools.experiments.sweep``.
"""
