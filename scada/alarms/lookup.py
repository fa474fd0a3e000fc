"""Which alarm instances read which tags: the change batches' way in to the engine."""

from __future__ import annotations

import numpy as np


class TagLookup:
    """tag -> the instances reading it, built once from (tag, instance) pairs.

    A pair is one int64 key, ``instance << 32 | tag``: sorting a batch's keys groups its
    instances by definition (instances are numbered definition by definition) and keeps each
    beside its tag. Most tags feed one instance or none: ``tag_key[tag]`` is that pair's key
    (-1: none), so a batch finds its pairs in one random read per tag. A tag feeding several
    holds ``-2 - j``, j its row in a CSR (``multi_off``, ``multi_key``) of those tags' keys only.
    """

    def __init__(self, tags: np.ndarray, insts: np.ndarray, n_tags: int) -> None:
        if n_tags >= 1 << 32:  # pragma: no cover - four billion tags
            raise ValueError("a tag id must fit in 32 bits")
        order = np.argsort(tags, kind="stable")
        tags, insts = tags[order], insts[order]
        keys = insts.astype(np.int64) << 32 | tags
        counts = np.bincount(tags, minlength=n_tags)
        self.tag_key = np.full(n_tags, -1, np.int64)
        one = counts[tags] == 1
        self.tag_key[tags[one]] = keys[one]
        multi = np.flatnonzero(counts > 1)
        self.tag_key[multi] = -2 - np.arange(len(multi))
        self.multi_off = np.concatenate([[0], np.cumsum(counts[multi])]).astype(np.int64)
        self.multi_key = keys[~one]

    def affected(self, ids: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The instances reading the changed tags ``ids``, sorted (so grouped by definition).

        Returns (instances, the tag each was reached by, bounds): definition k's are rows
        bounds[k]:bounds[k + 1], ``starts`` being each definition's first instance. An instance
        appears once per changed tag it reads (an expression reading several changed points:
        several times).
        """
        keys = self.tag_key[ids]
        keys.sort()
        # Negative keys sort first: tags feeding no instance (-1) or several (below -1).
        start = 0 if keys[0] >= 0 else int(np.searchsorted(keys, 0))
        if start and keys[0] < -1:
            j = -2 - keys[: np.searchsorted(keys, -1)]
            lo = self.multi_off[j]
            counts = self.multi_off[j + 1] - lo
            first = np.repeat(lo - np.cumsum(counts) + counts, counts)
            keys = np.concatenate([keys[start:], self.multi_key[first + np.arange(len(first))]])
            keys.sort()
        else:
            keys = keys[start:]
        inst = keys >> 32
        return inst, keys & 0xFFFFFFFF, np.searchsorted(inst, starts)
