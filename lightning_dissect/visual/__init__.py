"""Pictures as uint8 tensors.

Grids and overlays, the unit strips of a round, the colour scales and the bundled font.
"""
