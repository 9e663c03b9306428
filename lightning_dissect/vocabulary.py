"""The concepts a segmenter knows: names, categories and part-of links (a plain data type).

Kept apart from the segmenters so that results can carry a vocabulary without importing them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, overload

import torch
from torch import Tensor

__all__ = ["ConceptVocabulary", "NO_CATEGORY"]

NO_CATEGORY = "none"


@dataclass(frozen=True)
class ConceptVocabulary:
    """The concepts a segmenter can name: a sequence of concept names, one per label index.

    ``len(vocab)``, ``vocab[i]``, iteration and ``name in vocab`` work as on the tuple of names;
    :meth:`index` gives a name's label.

    Args:
        names: One name per label index.
        categories: One category per concept (``"object"``, ``"part"``, ``"material"``,
            ``"colour"``, ...). The "no label" entry has category ``"none"``.
        unlabeled_index: The label that means "no label" (skipped by the statistics), or ``None``
            when every label is a real concept.
        parents: Optional part → whole links: ``parents[k]`` is the index of the concept that
            concept ``k`` is a part of (``window`` → ``house``), or ``None``.

    Raises:
        ValueError: If the lengths differ, names repeat, the unlabeled index is out of range or its
            category is not ``"none"``, or a parent index is invalid.

    Examples:
        >>> vocab = ConceptVocabulary(
        ...     names=("unlabeled", "house", "window"),
        ...     categories=("none", "object", "part"),
        ...     parents=(None, None, 1),
        ... )
        >>> vocab.num_concepts, vocab.index("window"), vocab.category_names
        (3, 2, ('object', 'part'))
        >>> len(vocab), vocab[2], list(vocab), "window" in vocab, "door" in vocab
        (3, 'window', ['unlabeled', 'house', 'window'], True, False)
        >>> ConceptVocabulary.from_dict(vocab.to_dict()) == vocab
        True

    """

    names: tuple[str, ...]
    categories: tuple[str, ...]
    unlabeled_index: int | None = 0
    parents: tuple[int | None, ...] | None = None
    _lookup: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        categories = tuple(str(c) for c in self.categories)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "categories", categories)
        if len(names) == 0:
            raise ValueError("ConceptVocabulary needs at least one concept name.")
        if len(categories) != len(names):
            raise ValueError(
                f"ConceptVocabulary has {len(names)} names but {len(categories)} categories; "
                "give one category per concept."
            )
        lookup: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in lookup:
                raise ValueError(f"ConceptVocabulary: concept name {name!r} appears twice.")
            lookup[name] = i
        object.__setattr__(self, "_lookup", lookup)
        if self.unlabeled_index is not None:
            u = self.unlabeled_index
            if isinstance(u, bool) or not isinstance(u, int) or not 0 <= u < len(names):
                raise ValueError(
                    f"ConceptVocabulary: unlabeled_index={u!r} is not a label in "
                    f"[0, {len(names)})."
                )
            if categories[u] != NO_CATEGORY:
                raise ValueError(
                    f"ConceptVocabulary: the unlabeled entry {names[u]!r} must have category "
                    f"{NO_CATEGORY!r}, not {categories[u]!r}."
                )
        if self.parents is not None:
            parents = tuple(None if p is None else int(p) for p in self.parents)
            object.__setattr__(self, "parents", parents)
            if len(parents) != len(names):
                raise ValueError(
                    f"ConceptVocabulary has {len(names)} names but {len(parents)} parents."
                )
            for i, p in enumerate(parents):
                if p is None:
                    continue
                if not 0 <= p < len(names) or p == i or p == self.unlabeled_index:
                    raise ValueError(
                        f"ConceptVocabulary: parent {p} of {names[i]!r} is not another concept."
                    )

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._lookup

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...

    def __getitem__(self, index: int | slice) -> str | tuple[str, ...]:
        return self.names[index]

    def __reversed__(self) -> Iterator[str]:
        return reversed(self.names)

    @property
    def num_concepts(self) -> int:
        """Number of labels, including the "no label" entry."""
        return len(self.names)

    @property
    def category_names(self) -> tuple[str, ...]:
        """Sorted unique categories, without ``"none"``."""
        return tuple(sorted(set(self.categories) - {NO_CATEGORY}))

    def index(self, name: str) -> int:
        """Label index of a concept name.

        Raises:
            KeyError: If the vocabulary has no concept of that name (the message lists the closest
                names, as an unknown layer name does).

        Examples:
            >>> vocab = ConceptVocabulary(("unlabeled", "tree", "grass"), ("none", "object", "material"))
            >>> try:
            ...     vocab.index("trees")
            ... except KeyError as err:
            ...     print(err.args[0])
            'trees' is not a concept of this vocabulary; closest concept names: 'tree'

        """
        try:
            return self._lookup[name]
        except (KeyError, TypeError):
            import difflib

            close = difflib.get_close_matches(str(name), list(self._lookup), n=3, cutoff=0.5)
            hint = f"; closest concept names: {', '.join(repr(c) for c in close)}" if close else ""
            raise KeyError(f"{name!r} is not a concept of this vocabulary{hint}") from None

    def parent_table(self) -> Tensor:
        """Int64 ``(num_concepts,)``: each concept's parent, or the unlabeled index (0) if none.

        Examples:
            >>> ConceptVocabulary(("-", "a", "b"), ("none", "object", "part"),
            ...                   parents=(None, None, 1)).parent_table()
            tensor([0, 0, 1])

        """
        none = 0 if self.unlabeled_index is None else self.unlabeled_index
        parents = self.parents or (None,) * self.num_concepts
        return torch.tensor([none if p is None else p for p in parents], dtype=torch.int64)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (plain lists, ints and strings)."""
        return {
            "names": list(self.names),
            "categories": list(self.categories),
            "unlabeled_index": self.unlabeled_index,
            "parents": None if self.parents is None else list(self.parents),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConceptVocabulary:
        """Inverse of :meth:`to_dict`."""
        parents = data.get("parents")
        return cls(
            names=tuple(data["names"]),
            categories=tuple(data["categories"]),
            unlabeled_index=data.get("unlabeled_index", 0),
            parents=None if parents is None else tuple(parents),
        )
