"""The training side: the dissection callbacks, their round history, the replay of a run.

The callbacks are re-exported from :mod:`lightning_dissect`; import them from there. This
``__init__`` imports nothing, so that :mod:`lightning_dissect.callbacks.history` loads without
Lightning.
"""
