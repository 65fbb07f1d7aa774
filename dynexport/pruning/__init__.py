"""Pruning whose savings are real.

``dynexport.prune`` (this package's ``prune`` module) leaves pruning masks on a model;
``dynexport build`` then removes the channels those masks zero (``compaction``, through
torch-pruning's dependency graph) and reports, per layer, channels and MACs before and after
and the unstructured sparsity that no runtime it targets turns into speed (``sparsity``).
"""

from dynexport.pruning import prune  # noqa: F401  (``dynexport.prune``)
