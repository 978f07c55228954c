"""The Merkle tree of RFC 6962 / RFC 9162 section 2.1, over SHA-256.

Leaf hash `SHA-256(0x00 || data)`, node hash `SHA-256(0x01 || left || right)`; the
tree of n leaves splits at the largest power of two below n. A stored tree keeps
the hash of every *perfect* subtree, named by `(level, index)`: the subtree of the
leaves `[index * 2^level, (index + 1) * 2^level)`. Any range a proof needs is a few
perfect subtrees (`perfect_parts`), so a proof at any size is a handful of lookups.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()

Coord = tuple[int, int]
"""(level, index) of a perfect subtree; level 0 is a leaf."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def perfect_parts(start: int, end: int) -> list[Coord]:
    """The aligned perfect subtrees that make up the leaves [start, end), left to right.

    Every range a proof names is of this kind: `start` is a multiple of a power of two
    at least as large as the range, so the greedy split is the tree's own split."""
    parts = []
    while start < end:
        size = end - start
        level = size.bit_length() - 1
        while start % (1 << level):
            level -= 1
        parts.append((level, start >> level))
        start += 1 << level
    return parts


def fold(hashes: Sequence[bytes]) -> bytes:
    """The root of consecutive perfect subtrees, largest first (a range's `perfect_parts`)."""
    if not hashes:
        return EMPTY_ROOT
    root = hashes[-1]
    for h in reversed(hashes[:-1]):
        root = node_hash(h, root)
    return root


class Frontier:
    """The compact range of a tree: the roots of its perfect subtrees, largest first.

    Appending a leaf merges equal subtrees, like a binary counter; `coords_added`
    names every perfect subtree completed, so a store can keep them for proofs."""

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count():
            raise ValueError(
                f"a tree of {size} leaves has {size.bit_count()} perfect subtrees, not {len(hashes)}"
            )
        self.size = size
        self._hashes = list(hashes)

    @staticmethod
    def coords(size: int) -> list[Coord]:
        return perfect_parts(0, size)

    def append(self, leaf: bytes, completed: list[tuple[int, int, bytes]] | None = None) -> None:
        h, level, index = leaf, 0, self.size
        if completed is not None:
            completed.append((0, index, h))
        while index & 1:
            h = node_hash(self._hashes.pop(), h)
            level, index = level + 1, index >> 1
            if completed is not None:
                completed.append((level, index, h))
        self._hashes.append(h)
        self.size += 1

    def extend(self, leaves: Sequence[bytes], completed: list[tuple[int, int, bytes]] | None = None) -> None:
        """Append many leaves at once, a level at a time: the same tree and completed subtrees
        as `append` one by one, in two thirds of the time (50,000 leaves: 70 against 110 ms).
        `completed` gets the subtrees of level 1 and up; the leaves are the caller's."""
        if not leaves:
            return
        size, end = self.size, self.size + len(leaves)
        sha = hashlib.sha256
        old = {level: h for (level, _), h in zip(perfect_parts(0, size), self._hashes, strict=True)}
        kept: dict[int, bytes] = {}
        row, base = list(leaves), size  # the nodes of this level from index `base` on
        for level in range(end.bit_length()):
            if level in old:
                row.insert(0, old[level])
                base -= 1
            if len(row) % 2:
                kept[level] = row.pop()
            row = [
                sha(b"\x01" + left + right).digest() for left, right in zip(row[0::2], row[1::2], strict=True)
            ]
            base >>= 1
            if completed is not None:
                completed.extend((level + 1, base + i, h) for i, h in enumerate(row))
        self._hashes = [kept[level] for level in sorted(kept, reverse=True)]
        self.size = end

    def root(self) -> bytes:
        return fold(self._hashes)

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)


def levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every perfect subtree of a tree, level by level (`levels[l][i]` is subtree (l, i)): the
    whole tree in one pass per level, for a verifier that needs its root at many sizes."""
    out = [list(leaves)]
    sha = hashlib.sha256
    while len(out[-1]) > 1:
        below = out[-1]
        pairs = zip(below[0::2], below[1::2], strict=False)
        out.append([sha(b"\x01" + left + right).digest() for left, right in pairs])
    return out


def root_at(tree_levels: Sequence[Sequence[bytes]], size: int) -> bytes:
    """The root of the first `size` leaves, from `levels` of at least that many."""
    return fold([tree_levels[level][index] for level, index in perfect_parts(0, size)])


def root_of(leaves: Iterable[bytes]) -> bytes:
    frontier = Frontier()
    for leaf in leaves:
        frontier.append(leaf)
    return frontier.root()


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots form the audit path of leaf `index` in a tree of `size`
    (RFC 6962 PATH), nearest the leaf first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index - start < k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots prove a tree of `old` leaves a prefix of one of `new`
    (RFC 6962 SUBPROOF), in proof order."""
    if not 0 < old <= new:
        raise ValueError(f"no consistency proof from {old} to {new} leaves")
    ranges: list[tuple[int, int]] = []
    start, end, m, whole = 0, new, old, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m, whole = start + k, m - k, False
    if not whole:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def coords_for(ranges: Iterable[tuple[int, int]]) -> set[Coord]:
    return {c for a, b in ranges for c in perfect_parts(a, b)}


def hashes_for(ranges: Sequence[tuple[int, int]], nodes: Mapping[Coord, bytes]) -> list[bytes]:
    """A proof's hashes from the stored perfect subtrees (`coords_for(ranges)` of them)."""
    return [fold([nodes[c] for c in perfect_parts(a, b)]) for a, b in ranges]


def prove_inclusion(
    index: int, size: int, lookup: Callable[[set[Coord]], Mapping[Coord, bytes]]
) -> list[bytes]:
    ranges = inclusion_ranges(index, size)
    return hashes_for(ranges, lookup(coords_for(ranges)))


def prove_consistency(
    old: int, new: int, lookup: Callable[[set[Coord]], Mapping[Coord, bytes]]
) -> list[bytes]:
    if old == new:
        return []
    ranges = consistency_ranges(old, new)
    return hashes_for(ranges, lookup(coords_for(ranges)))


def root_from_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """RFC 9162 2.1.3.2: the root that `path` leads to from `leaf`; raises ValueError when
    the path has the wrong length for this index and size."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise ValueError("audit path too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("audit path too short")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> bool:
    try:
        return root_from_inclusion(index, size, leaf, path) == root
    except ValueError:
        return False


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2."""
    if old == new:
        return old_root == new_root and not proof
    if not 0 < old < new or not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:  # old is a power of two: its root is the proof's implicit first hash
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root
