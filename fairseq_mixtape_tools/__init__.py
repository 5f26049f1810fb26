"""Tools around the fairseq-mixtape plugin: the demo, the benchmark, the rank diagnostic
(``bottleneck``), the experiment runner and helpers they share. Kept apart from the plugin
package ``fairseq_mixtape`` so that ``--user-dir`` and ``import fairseq_mixtape`` load only the
output layers, models and criterions.

This module imports nothing; import the tool you need, e.g. ``fairseq_mixtape_tools.demo``.
"""
