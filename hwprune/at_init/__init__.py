"""Pruning at initialization: the sweep (pruner x compression x seed), its run status and its analysis.

``sweep`` runs one masked training per row and writes the results store; ``status`` marks each run
ok / untrainable / collapsed; ``analysis`` draws the model-dependent plots; ``cli`` is
``hwprune prune-at-init`` (and ``tools/prune_at_init.py``). The weight scorers themselves live in
:mod:`hwprune.prune.scorers`.
"""
