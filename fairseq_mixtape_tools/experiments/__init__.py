"""The experiments of RESULTS.md, one module each:

  ptb       Penn Treebank language model: softmax vs MoS vs Mixtape vs sigsoftmax
            (examples/language_model/ptb_experiment.py)
  multi30k  Multi30k English-German translation, trained to convergence
            (examples/translation/multi30k_experiment.py)
  sweep     the output-width sweep of a word-level language model
            (examples/language_model/bottleneck_sweep.py)
  common    what they share: runs, their steps and results, the output variants they compare,
            the checks of their flags, and the tables

The scripts in ``examples/`` only call each module's ``main``. This module imports nothing;
import the experiment you need, e.g. ``fairseq_mixtape_tools.experiments.sweep``.
"""
