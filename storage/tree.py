"""The Merkle tree's tables: leaves, the perfect subtrees above them, signed checkpoints.

Leaves are written by ClickHouse with their rows (migration 10); this module reads
them, keeps the levels above that the checkpointer computes, and stores its
checkpoints. Hashes travel as RowBinary, 32 raw bytes each.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from producers.contract.tlog import merkle
from producers.contract.tlog.merkle import Coord
from storage.engine import Engine
from storage.leaf_sql import leaf_hash_sql
from storage.migrations import check_identifier
from storage.retention import RetentionStore, Tombstone

_LEAF = struct.Struct("<Q32s")
_ROW_CHECK = struct.Struct("<I B Q 16s 32s B Q 16s 32s q 32s")
_EMPTY_UUID = b"\x00" * 16
# A stored subtree above the leaves: level, index, hash, and an empty event id and time.
_NODE = struct.Struct("<BQ32s16sq")
_NIL = "toUUID('00000000-0000-0000-0000-000000000000')"
LEAF_PAGE = 1_000_000
_CACHED_LEVEL = 4
BLOCK_LEVEL = 8
# The levels of a whole block that are stored (`TreeStore.hash_blocks`).
KEPT_BLOCK_LEVELS = (1, BLOCK_LEVEL)
_CHECKPOINT = (
    "log, tree_size, root_hash, toUnixTimestamp64Milli(created_at) AS created_ms, key_id, verifier_key, note"
)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _uuid_text(raw: bytes) -> str:
    # RowBinary UUID: two little-endian 64-bit halves.
    hi, lo = struct.unpack("<QQ", raw)
    h = f"{hi:016x}{lo:016x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class StoredCheckpoint:
    log: str
    size: int
    root: bytes
    created_ms: int
    key_id: str
    verifier_key: str
    note: str


@dataclass(frozen=True)
class RowCheck:
    """One position where a row and the tree disagree (`None`: that side is absent)."""

    index: int
    row_event_id: str | None
    row_hash: bytes | None
    leaf_event_id: str | None
    leaf_hash: bytes | None
    leaf_occurred_ms: int | None
    leaf_body: bytes | None = None
    """The leaf's own record of its event's time and body digest, which its hash covers."""


class TreeStore:
    def __init__(self, engine: Engine, *, database: str) -> None:
        self._engine = engine
        self._db = check_identifier(database)
        self._high: dict[tuple[str, Coord], bytes] = {}
        self._loaded: set[str] = set()
        self._latest: dict[str, tuple[float, StoredCheckpoint | None]] = {}

    def logs(self) -> list[str]:
        rows = self._engine.query(
            f"SELECT log FROM {self._db}.merkle_nodes WHERE level = 0 GROUP BY log "
            f"UNION DISTINCT SELECT log FROM {self._db}.checkpoints GROUP BY log"
        )
        return sorted(r["log"] for r in rows)

    def leaf_count(self, log: str) -> int:
        """One past the log's highest leaf index (its size, when no position is missing)."""
        rows = self._engine.query(
            f"SELECT count() AS n, max(idx) AS top FROM {self._db}.merkle_nodes "
            "WHERE log = {log:String} AND level = 0",
            params={"log": log},
        )
        return int(rows[0]["top"]) + 1 if int(rows[0]["n"]) else 0

    def leaves(self, log: str, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(index, hash) of the log's leaves in [start, end), in index order, a page at a time."""
        end = self.leaf_count(log) if end is None else end
        for page in range(start, end, LEAF_PAGE):
            data = self._engine.query_binary(
                f"SELECT idx, hash FROM {self._db}.merkle_nodes WHERE log = {{log:String}} AND level = 0 "
                "AND idx >= {start:UInt64} AND idx < {stop:UInt64} ORDER BY idx",
                params={"log": log, "start": page, "stop": min(end, page + LEAF_PAGE)},
            )
            yield from _LEAF.iter_unpack(data)

    def leaf_run(self, log: str, start: int) -> tuple[int, int | None]:
        """(end, after): the leaves from `start` on are at every position of [start, end), and
        `after` is the first position past a gap that holds one (None: no gap)."""
        [found] = self._engine.query(
            "SELECT countIf(idx = {start:UInt64} + r) AS run, count() AS n, "
            "minIf(idx, idx != {start:UInt64} + r) AS after "
            "FROM (SELECT idx, row_number() OVER (ORDER BY idx) - 1 AS r FROM (SELECT DISTINCT idx "
            f"FROM {self._db}.merkle_nodes WHERE log = {{log:String}} AND level = 0 "
            "AND idx >= {start:UInt64}))",
            params={"log": log, "start": start},
        )
        run, n = int(found["run"]), int(found["n"])
        return start + run, int(found["after"]) if n > run else None

    def hash_blocks(self, log: str, first: int, stop: int, *, after: int = 0) -> list[bytes]:
        """Hash the aligned blocks of 256 leaves [first, stop) (block b: leaves [256 b,
        256 b + 256)) in ClickHouse, keep their subtrees of levels 1 and 8, and return the
        blocks' roots (their level-8 nodes) in order; every position of them must hold a leaf.
        Subtrees whose leaves all lie below `after` (kept by an earlier checkpoint) are not
        stored again.

        Levels 2 to 7 are hashed, not kept: nothing reads them (a proof hashes what lies
        below level 8 from the block's leaves, `proof_nodes`), and they were half the nodes
        stored, written and merged; level 1 stays for `auditlog verify` to name the pair of
        positions of a forged leaf.

        One statement a call, all its hashing in ClickHouse's threads: the checkpointer's
        own Python then touches one node per 256 leaves (it hashed, packed and stored every
        node itself before, 3.6 µs a leaf on the worker's interpreter)."""
        if stop <= first:
            return []
        block = 1 << BLOCK_LEVEL
        levels = [
            f"arrayMap(p -> SHA256(concat(unhex('01'), p[1], p[2])), "
            f"arraySplit((x, i) -> i % 2 = 1, a{level - 1}, range(1, {(block >> (level - 1)) + 1}))) "
            f"AS a{level}"
            for level in range(1, BLOCK_LEVEL + 1)
        ]
        rows = [
            f"arrayMap((h, k) -> (toUInt8({level}), block * {block >> level} + k - 1, h), a{level}, "
            f"range(1, {(block >> level) + 1}))"
            for level in KEPT_BLOCK_LEVELS
        ]
        # A block's leaves in order (of a position held twice, which `auditlog verify` reports,
        # the smaller hash, as the checkpointer takes it); each level pairs the one below with
        # arraySplit, which reads its array once.
        # On a read connection: the writer's inserts do not wait behind it.
        self._engine.command_aside(
            f"INSERT INTO {self._db}.merkle_nodes (log, level, idx, hash) "
            f"SELECT {{log:String}}, t.1, t.2, t.3 FROM (SELECT block, {', '.join(levels)}, "
            f"arrayJoin(arrayConcat({', '.join(rows)})) AS t FROM ("
            f"SELECT intDiv(idx, {block}) AS block, "
            "arrayMap(x -> x.2, arraySort(groupArray((idx, h)))) AS a0 "
            f"FROM (SELECT idx, min(hash) AS h FROM {self._db}.merkle_nodes WHERE log = {{log:String}} "
            "AND level = 0 AND idx >= {lo:UInt64} AND idx < {hi:UInt64} GROUP BY idx) "
            f"GROUP BY block HAVING length(a0) = {block})) "
            "WHERE bitShiftLeft(t.2 + 1, t.1) > {after:UInt64}",
            params={"log": log, "lo": first * block, "hi": stop * block, "after": after},
        )
        data = self._engine.query_binary(
            f"SELECT idx, any(hash) FROM {self._db}.merkle_nodes WHERE log = {{log:String}} "
            "AND level = {level:UInt8} AND idx >= {first:UInt64} AND idx < {stop:UInt64} "
            "GROUP BY idx ORDER BY idx",
            params={"log": log, "level": BLOCK_LEVEL, "first": first, "stop": stop},
        )
        found = dict(_LEAF.iter_unpack(data))
        lacking = [b for b in range(first, stop) if b not in found]
        if lacking:
            raise RuntimeError(
                f"log {log}: blocks {lacking[:4]} of leaves [{first * block}, {stop * block}) lack a leaf"
            )
        return [found[b] for b in range(first, stop)]

    def nodes(self, log: str, coords: Iterable[Coord]) -> dict[Coord, bytes]:
        """The stored perfect subtrees at `coords`. Those of level 4 and up (one per 16 leaves,
        2 MB a million leaves) are kept in memory once read: a subtree's hash never changes once
        its leaves exist, and each lookup reads a granule, so a warm proof reads four."""
        wanted = sorted(set(coords))
        found = {c: self._high[(log, c)] for c in wanted if (log, c) in self._high}
        missing = [c for c in wanted if c not in found]
        if not missing:
            return found
        data = self._engine.query_binary(
            f"SELECT level, idx, any(hash) FROM {self._db}.merkle_nodes WHERE log = {{log:String}} "
            "AND (level, idx) IN {coords:Array(Tuple(UInt8, UInt64))} GROUP BY level, idx",
            params={"log": log, "coords": missing},
        )
        for level, idx, h in struct.iter_unpack("<BQ32s", data):
            found[(level, idx)] = h
            if level >= _CACHED_LEVEL:
                self._high[(log, (level, idx))] = h
        return found

    def proof_nodes(self, log: str, coords: Iterable[Coord]) -> dict[Coord, bytes]:
        """The perfect subtrees at `coords`, for proofs, in as few reads as a proof can take.

        Below level 8, a node is hashed from its leaves, read as the aligned block of 256
        that holds them: one key range of one granule, 8 KB, and 255 hashes in Python
        (0.2 ms). Level 8 and up (one node per 128 leaves, about 25 MB of memory a 10M-leaf
        log) is read once per log and process and then kept: a perfect subtree's hash never
        changes once its leaves exist. So a warm proof of a row is one read of its block;
        only nodes the tree gained since (its right edge) are looked up on their own. Of two
        leaves at one position, the smaller hash, as the checkpointer takes it."""
        wanted = sorted(set(coords))
        if log not in self._loaded:
            self._load_high(log)
        found = {c: self._high[(log, c)] for c in wanted if (log, c) in self._high}
        missing = [c for c in wanted if c not in found]
        if not missing:
            return found
        low = [(level, idx) for level, idx in missing if level < BLOCK_LEVEL]
        direct = [c for c in missing if c[0] >= BLOCK_LEVEL]
        blocks = sorted({(idx << level) >> BLOCK_LEVEL for level, idx in low})
        if len(blocks) == 1 and not direct:
            data = self._engine.query_binary(
                f"SELECT toUInt8(0), idx, min(hash) FROM {self._db}.merkle_nodes "
                "WHERE log = {log:String} AND level = 0 AND idx >= {lo:UInt64} AND idx < {hi:UInt64} "
                "GROUP BY idx SETTINGS max_threads = 1",
                params={"log": log, "lo": blocks[0] << BLOCK_LEVEL, "hi": (blocks[0] + 1) << BLOCK_LEVEL},
            )
        else:
            data = self._engine.query_binary(
                f"SELECT level, idx, min(hash) FROM {self._db}.merkle_nodes WHERE log = {{log:String}} "
                "AND ((level, idx) IN {coords:Array(Tuple(UInt8, UInt64))} "
                f"OR (level = 0 AND intDiv(idx, {1 << BLOCK_LEVEL}) IN {{blocks:Array(UInt64)}})) "
                "GROUP BY level, idx",
                params={"log": log, "coords": direct, "blocks": blocks},
            )
        leaves: dict[int, bytes] = {}
        for level, idx, h in struct.iter_unpack("<BQ32s", data):
            if level == 0:
                leaves[idx] = h
            else:
                found[(level, idx)] = h
                if level >= _CACHED_LEVEL:
                    self._high[(log, (level, idx))] = h
        for level, idx in low:
            span = [leaves.get(i) for i in range(idx << level, (idx + 1) << level)]
            if all(h is not None for h in span):
                found[(level, idx)] = merkle.levels([h for h in span if h is not None])[level][0]
        return {c: found[c] for c in wanted if c in found}

    def _load_high(self, log: str) -> None:
        data = self._engine.query_binary(
            f"SELECT level, idx, any(hash) FROM {self._db}.merkle_nodes "
            "WHERE log = {log:String} AND level >= {level:UInt8} GROUP BY level, idx",
            params={"log": log, "level": BLOCK_LEVEL},
        )
        for level, idx, h in struct.iter_unpack("<BQ32s", data):
            self._high[(log, (level, idx))] = h
        self._loaded.add(log)

    def put_nodes(self, log: str, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        """Keep perfect subtrees above the leaves (levels >= 1): idempotent in content, a rerun
        after a crash writes the same hashes again."""
        head, pack = _varint(len(log.encode())) + log.encode(), _NODE.pack
        data = b"".join(head + pack(level, idx, h, _EMPTY_UUID, 0) for level, idx, h in nodes if level > 0)
        if data:
            self._engine.insert_binary(
                f"{self._db}.merkle_nodes",
                columns=("log", "level", "idx", "hash", "event_id", "occurred_at"),
                data=data,
            )

    def _checkpoint(self, r: dict[str, Any]) -> StoredCheckpoint:
        return StoredCheckpoint(
            log=r["log"],
            size=int(r["tree_size"]),
            root=bytes.fromhex(r["root_hash"]),
            created_ms=int(r["created_ms"]),
            key_id=r["key_id"],
            verifier_key=r["verifier_key"],
            note=r["note"],
        )

    def checkpoints(self, log: str | None = None) -> list[StoredCheckpoint]:
        """Every checkpoint of one log or all, in the order they were made."""
        where = "WHERE log = {log:String}" if log is not None else ""
        rows = self._engine.query(
            f"SELECT {_CHECKPOINT} FROM {self._db}.checkpoints {where} ORDER BY log, tree_size, created_at",
            params={"log": log} if log is not None else None,
        )
        return [self._checkpoint(r) for r in rows]

    def latest_checkpoint(self, log: str, *, max_age_s: float = 0.0) -> StoredCheckpoint | None:
        """The log's newest checkpoint; one read less than `max_age_s` ago may be given again
        (proofs: a checkpoint a second old proves as well)."""
        if max_age_s > 0:
            cached = self._latest.get(log)
            if cached is not None and time.monotonic() - cached[0] < max_age_s:
                return cached[1]
        found = self._latest_checkpoint(log)
        if max_age_s > 0:
            self._latest[log] = (time.monotonic(), found)
        return found

    def _latest_checkpoint(self, log: str) -> StoredCheckpoint | None:
        rows = self._engine.query(
            f"SELECT {_CHECKPOINT} FROM {self._db}.checkpoints WHERE log = {{log:String}} "
            "ORDER BY tree_size DESC, created_at DESC LIMIT 1",
            params={"log": log},
        )
        return self._checkpoint(rows[0]) if rows else None

    def save_checkpoint(self, cp: StoredCheckpoint) -> None:
        self._latest.pop(cp.log, None)
        self._engine.command(
            f"INSERT INTO {self._db}.checkpoints (log, tree_size, root_hash, created_at, key_id, "
            "verifier_key, note) VALUES ({log:String}, {size:UInt64}, {root:String}, "
            "fromUnixTimestamp64Milli({at:Int64}, 'UTC'), {key:String}, {verifier:String}, {note:String})",
            params={
                "log": cp.log,
                "size": cp.size,
                "root": cp.root.hex(),
                "at": cp.created_ms,
                "key": cp.key_id,
                "verifier": cp.verifier_key,
                "note": cp.note,
            },
        )

    def duplicate_positions(self, log: str) -> list[tuple[str, int, list[str]]]:
        """(table, index, event ids) of each position held by more than one row or leaf."""
        rows = self._engine.query(
            f"SELECT 'row' AS t, leaf_index AS i, groupArray(toString(event_id)) AS ids "
            f"FROM {self._db}.audit_events WHERE log = {{log:String}} GROUP BY leaf_index HAVING count() > 1 "
            f"UNION ALL SELECT 'leaf' AS t, idx AS i, groupArray(toString(event_id)) AS ids "
            f"FROM {self._db}.merkle_nodes WHERE log = {{log:String}} AND level = 0 GROUP BY idx "
            "HAVING count() > 1",
            params={"log": log},
        )
        return sorted((r["t"], int(r["i"]), sorted(r["ids"])) for r in rows)

    def row_mismatches(
        self, logs: Sequence[str], *, since_ms: int | None = None, until_ms: int | None = None
    ) -> dict[str, list[RowCheck]]:
        """Per log, every position where the row stored there does not hash to its leaf, one
        side is missing, or the two name different events. The rows are hashed by ClickHouse
        (`storage.leaf_sql`), every log in one scan of the table (rows of all logs share its
        granules), so a check of every row moves only the disagreements."""
        if not logs:
            return {}
        time = ""
        params: dict[str, Any] = {"logs": list(logs)}
        if since_ms is not None:
            time += " AND occurred_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')"
            params["since"] = since_ms
        if until_ms is not None:
            time += " AND occurred_at < fromUnixTimestamp64Milli({until:Int64}, 'UTC')"
            params["until"] = until_ms
        data = self._engine.query_binary(
            "SELECT toUInt32(indexOf({logs:Array(String)}, ifNull(r.log, l.log))), r.idx IS NOT NULL, "
            f"ifNull(ifNull(r.idx, l.idx), 0), ifNull(r.event_id, {_NIL}), "
            "ifNull(r.h, toFixedString('', 32)), l.idx IS NOT NULL, ifNull(l.idx, 0), "
            f"ifNull(l.event_id, {_NIL}), ifNull(l.hash, toFixedString('', 32)), "
            "ifNull(toUnixTimestamp64Milli(l.occurred_at), 0), ifNull(l.body, toFixedString('', 32)) FROM "
            f"(SELECT toString(log) AS log, leaf_index AS idx, event_id, {leaf_hash_sql()} AS h "
            f"FROM {self._db}.audit_events WHERE log IN {{logs:Array(String)}}{time}) AS r "
            "FULL OUTER JOIN (SELECT toString(log) AS log, idx, event_id, hash, occurred_at, body "
            f"FROM {self._db}.merkle_nodes WHERE log IN {{logs:Array(String)}} AND level = 0{time}) AS l "
            "ON r.log = l.log AND r.idx = l.idx "
            "WHERE r.idx IS NULL OR l.idx IS NULL OR r.h != l.hash OR r.event_id != l.event_id "
            "ORDER BY 1, 3 SETTINGS join_use_nulls = 1",
            params=params,
        )
        out: dict[str, list[RowCheck]] = {}
        for number, has_row, idx, rid, rh, has_leaf, _l, lid, lh, lms, body in _ROW_CHECK.iter_unpack(data):
            out.setdefault(logs[number - 1], []).append(
                RowCheck(
                    index=idx,
                    row_event_id=_uuid_text(rid) if has_row else None,
                    row_hash=rh if has_row else None,
                    leaf_event_id=_uuid_text(lid) if has_leaf else None,
                    leaf_hash=lh if has_leaf else None,
                    leaf_occurred_ms=lms if has_leaf else None,
                    leaf_body=body if has_leaf else None,
                )
            )
        return out

    def tombstones(self, log: str) -> dict[int, Tombstone]:
        """The positions of `log` whose rows a purge removed (`storage.retention`)."""
        return RetentionStore(self._engine, database=self._db).tombstones(log)

    def rows_outside_tree(self, *, limit: int = 1000) -> tuple[int, list[str]]:
        """Rows in no log: how many the store held before the tree existed (migration 9), and,
        when there are more now, the ids of those received since it began: inserted, as no
        writer of this version stores a row outside the tree."""
        epoch = self._engine.query(
            f"SELECT min(began_at) AS at, sum(rows_before) AS before, count() AS n FROM {self._db}.tree_epoch"
        )[0]
        before = int(epoch["before"]) if int(epoch["n"]) else 0
        outside = int(
            self._engine.query(f"SELECT count() AS n FROM {self._db}.audit_events WHERE log = ''")[0]["n"]
        )
        if outside <= before:
            return outside, []
        # Those received since the tree began first, then the newest: a forger picks the time.
        new = self._engine.query(
            f"SELECT toString(event_id) AS id FROM {self._db}.audit_events WHERE log = '' "
            "ORDER BY received_at >= {at:DateTime64(3, 'UTC')} DESC, received_at DESC LIMIT {limit:UInt32}",
            params={"limit": min(limit, outside - before), "at": epoch["at"] if int(epoch["n"]) else 0},
        )
        return before, [r["id"] for r in new]
