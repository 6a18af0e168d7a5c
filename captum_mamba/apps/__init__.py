"""The applications built on the library: the ``captum-mamba`` command line
(:mod:`~captum_mamba.apps.cli`), the demo, the training of its text classifier
(:mod:`~captum_mamba.apps.sentiment`), data-set attribution
(:mod:`~captum_mamba.apps.dataset`), the comparative study, the benchmark and the README
pictures, with what they share: reading data sets (:mod:`~captum_mamba.apps.data`),
loading models (:mod:`~captum_mamba.apps.loading`), the method catalogue of the runs
(:mod:`~captum_mamba.apps.methods`) and sharded runs (:mod:`~captum_mamba.apps.sharding`).

No module of the library (``ops``, ``rules``, ``adapters``, ``attr``, ``lrp``,
``baselines``, ``metrics``, ``visualization``) imports from here.
"""
