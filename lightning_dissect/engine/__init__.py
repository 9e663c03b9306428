"""How a network is run and fed.

Hooks on named layers, the runners, the sample sources (latents, image sets, image folders) and
discovery of a generator on a LightningModule. The public names are re-exported from
:mod:`lightning_dissect`. This ``__init__`` imports nothing, so that one module loads alone.
"""
