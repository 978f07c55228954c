"""Kubernetes exec probes for `auditlog worker`, which serves no HTTP.

    python /opt/auditlog/worker_probe.py ready   # readinessProbe
    python /opt/auditlog/worker_probe.py live    # livenessProbe

Both read the worker's own settings (AUDITLOG_WORKER_*), so they look at the
group, topic and stats file the worker uses. Exit 0 = healthy, 1 = not.

ready: this pod is a member of the consumer group, found by its static member
  id (AUDITLOG_WORKER_INSTANCE_ID, the pod name). A worker joins only after its
  startup (topics, migrations, the directory read to its end), so "ready" means
  consuming. Kafka unreachable = not ready; that restarts nothing.

live: fails only when the worker is wedged: its stats file (written after every
  batch and every retry of a failing store write) is older than
  --stale-seconds while a partition assigned to it has messages past the
  committed offset. An idle worker, a worker still starting (no stats file
  yet), a worker retrying a down ClickHouse and an unreachable Kafka all pass:
  restarting would not help any of them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EXIT_OK = 0
EXIT_FAIL = 1


@dataclass(frozen=True)
class GroupView:
    """What the probe learned from Kafka: this member's partitions and their lag."""

    member_found: bool
    state: str
    lag: dict[tuple[str, int], int]


def decide_ready(view: GroupView | None) -> tuple[bool, str]:
    if view is None:
        return False, "kafka not reachable"
    if not view.member_found:
        return False, f"not a member of the consumer group (group state {view.state})"
    return True, f"member of the consumer group (state {view.state}, {len(view.lag)} partitions)"


def decide_live(
    stats_age_s: float | None, stale_s: float, view_fn: Callable[[], GroupView | None]
) -> tuple[bool, str]:
    if stats_age_s is None:
        return True, "no batch yet"
    if stats_age_s < stale_s:
        return True, f"last batch or retry {stats_age_s:.0f}s ago"
    view = view_fn()
    if view is None:
        return True, "kafka not reachable; not the worker's fault"
    behind = {tp: n for tp, n in view.lag.items() if n > 0}
    if not behind:
        return True, f"idle for {stats_age_s:.0f}s, nothing to consume"
    return False, f"nothing written for {stats_age_s:.0f}s while its partitions lag: {behind}"


def group_view(settings: Any, timeout_s: float) -> GroupView | None:
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin._listoffsets import OffsetSpec

    from producers.kafka_config import admin_config

    admin = AdminClient({**admin_config(settings.connection()), "log_level": 0})
    try:
        group = admin.describe_consumer_groups([settings.group_id], request_timeout=timeout_s)[
            settings.group_id
        ].result()
        mine = [m for m in group.members if m.group_instance_id == settings.instance_id]
        state = getattr(group.state, "name", str(group.state))
        if not mine:
            return GroupView(False, state, {})
        tps = [
            TopicPartition(tp.topic, tp.partition)
            for tp in mine[0].assignment.topic_partitions
            if tp.topic == settings.raw_topic
        ]
        if not tps:
            return GroupView(True, state, {})
        committed_req = [ConsumerGroupTopicPartitions(settings.group_id, tps)]
        committed = admin.list_consumer_group_offsets(committed_req, request_timeout=timeout_s)
        done = {
            (tp.topic, tp.partition): tp.offset
            for tp in committed[settings.group_id].result().topic_partitions
        }
        latest_spec: Any = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        latest = admin.list_offsets({tp: latest_spec for tp in tps}, request_timeout=timeout_s)
        lag = {}
        for tp, fut in latest.items():
            end = fut.result().offset
            start = max(done.get((tp.topic, tp.partition), 0), 0)  # -1001: nothing committed yet
            lag[(tp.topic, tp.partition)] = max(end - start, 0)
        return GroupView(True, state, lag)
    except KafkaException:
        return None


def stats_age(settings: Any) -> float | None:
    path = settings.stats_path
    if path is None or not path.exists():
        return None
    return max(time.time() - float(path.stat().st_mtime), 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("check", choices=("ready", "live"))
    parser.add_argument("--timeout", type=float, default=5.0, help="Kafka request timeout (s)")
    parser.add_argument("--stale-seconds", type=float, default=300.0, help="live: silence tolerated (s)")
    args = parser.parse_args(argv)

    from stream.settings import WorkerSettings

    settings = WorkerSettings()
    if not settings.instance_id:
        print("AUDITLOG_WORKER_INSTANCE_ID is not set: the probe cannot find this worker", file=sys.stderr)
        return EXIT_FAIL
    if args.check == "ready":
        ok, why = decide_ready(group_view(settings, args.timeout))
    else:
        ok, why = decide_live(
            stats_age(settings), args.stale_seconds, lambda: group_view(settings, args.timeout)
        )
    print(why, file=sys.stdout if ok else sys.stderr)
    return EXIT_OK if ok else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
