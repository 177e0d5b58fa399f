"""The ``lucid`` command line (installed as the package ``lucid_cli``): a thin click layer.

Every command is one library call: ``pool3d`` runs a ``lucid.stream.job.PoolJob``
and ``info`` wraps ``lucid.inspect.describe``.  The ``lucid`` package itself never
imports click or tqdm.
"""
