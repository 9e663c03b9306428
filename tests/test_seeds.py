"""Seeds derived from a seed have one owner, and keep the values they had (results do not move)."""

from __future__ import annotations

import io
import random
import tokenize
from pathlib import Path

import pytest

import lightning_dissect
from lightning_dissect._utils.seeds import SEED_PURPOSES, derive_seed
from lightning_dissect.engine.latents import noise_seed

# the formulas as the previous release wrote them at each place of use
REFERENCE = {
    "noise": lambda seed, index: seed * 1_000_003 + index,  # latents.noise_seed
    "level_selection": lambda seed, index: seed + 1,  # dissect's iqr level-selection bank
    "ablation_latents": lambda seed, index: seed + 1000,  # the callback's ablation latents
    "control": lambda seed, index: (seed * 1_000_003 + index * 7_919 + 12_345) % (2**63 - 1),
    "validation": lambda seed, index: seed + 1,  # SyntheticSceneDataModule's validation split
}


def test_every_purpose_keeps_its_value():
    assert set(SEED_PURPOSES) == set(REFERENCE)
    rng = random.Random(0)
    cases = [(0, 0), (1, 32), (-3, 5)] + [(rng.randrange(-2**31, 2**31), rng.randrange(0, 10**6)) for _ in range(50)]
    for purpose, formula in REFERENCE.items():
        for seed, index in cases:
            assert derive_seed(seed, purpose, index) == formula(seed, index), (purpose, seed, index)


def test_noise_seed_is_the_noise_purpose():
    for seed, first in [(0, 0), (1, 0), (1, 32), (123, 4096)]:
        assert noise_seed(seed, first) == derive_seed(seed, "noise", first) == seed * 1_000_003 + first


def test_unknown_purpose_names_the_argument():
    with pytest.raises(KeyError, match="`purpose` 'nosie'"):
        derive_seed(0, "nosie")


def _seed_formulas(source: str) -> list[int]:
    """Lines where code (not strings, comments or docs) writes ``<...seed> + n`` or ``<...seed> * n``."""
    tokens = [tok for tok in tokenize.generate_tokens(io.StringIO(source).readline)
              if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)]
    return [
        a.start[0] for a, b, c in zip(tokens, tokens[1:], tokens[2:])
        if a.type == tokenize.NAME and a.string.endswith("seed") and b.string in ("+", "*")
        and c.type == tokenize.NUMBER
    ]


def test_the_formula_finder_sees_code_only():
    assert _seed_formulas("x = cfg.seed + 1\ny = '(seed+1)'  # seed * 3\nz = seed * 1_000_003 + i\n") == [1, 3]


def test_no_seed_formula_outside_its_owner():
    root = Path(lightning_dissect.__file__).parent
    found = [
        f"{path.relative_to(root)}:{line}"
        for path in sorted(root.rglob("*.py")) if path.name != "seeds.py"
        for line in _seed_formulas(path.read_text(encoding="utf-8"))
    ]
    assert not found, "seed formulas outside _utils/seeds.py: " + "; ".join(found)
