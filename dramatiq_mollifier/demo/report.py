"""What the demo measured: the per-tenant table and the exactly-once check."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..console import format_table

__all__ = [
    "DemoSummary",
    "Sent",
    "TenantRow",
    "percentile",
    "render_table",
    "summarize",
]


@dataclass(frozen=True, slots=True)
class Sent:
    """One ``send()`` the producer made."""

    message_id: str
    org_id: str
    env_id: str
    sent_at_ms: float


@dataclass(frozen=True, slots=True)
class TenantRow:
    """One line of the table."""

    tenant: str
    sent: int
    #: Sent but never written to the broker by the producer: the mollifier buffered them.
    diverted: int
    #: Runs of the actor on a copy a drainer put back on the broker.
    drained: int
    #: Distinct messages the actor ran.
    processed: int
    wait_p50_ms: float | None
    wait_p99_ms: float | None


@dataclass
class DemoSummary:
    rows: list[TenantRow]
    total: TenantRow
    #: Messages the actor ran more than once.
    duplicates: int
    #: Each reason the table does not add up; empty when it does.
    problems: list[str] = field(default_factory=list)

    @property
    def adds_up(self) -> bool:
        return not self.problems


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of ``values`` (``pct`` in 0..100); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def tenant_label(org_id: str, env_id: str) -> str:
    return f"{org_id}/{env_id}"


def summarize(
    sent: Sequence[Sent],
    direct_ids: Iterable[str],
    runs: Sequence[bytes | str],
    seen: Mapping[bytes | str, bytes | str | int],
) -> DemoSummary:
    """Build the table from what the producer and the actor recorded, and check it adds up.

    ``direct_ids``: messages the producer's broker wrote itself; ``runs``: the actor's JSON
    records; ``seen``: message id to how many times the actor ran it.
    """
    direct = set(direct_ids)
    counts = {_text(k): int(v) for k, v in seen.items()}
    waits: dict[str, list[float]] = defaultdict(list)
    drained: Counter[str] = Counter()
    for raw in runs:
        org_id, env_id, sent_at_ms, started_ms, was_drained = json.loads(raw)
        label = tenant_label(org_id, env_id)
        waits[label].append(started_ms - sent_at_ms)
        drained[label] += bool(was_drained)
    per_tenant: dict[str, list[Sent]] = defaultdict(list)
    for record in sent:
        per_tenant[tenant_label(record.org_id, record.env_id)].append(record)

    rows = []
    for label, records in per_tenant.items():
        rows.append(
            TenantRow(
                tenant=label,
                sent=len(records),
                diverted=sum(1 for r in records if r.message_id not in direct),
                drained=drained[label],
                processed=sum(1 for r in records if counts.get(r.message_id, 0) > 0),
                wait_p50_ms=percentile(waits[label], 50),
                wait_p99_ms=percentile(waits[label], 99),
            )
        )
    rows.sort(key=lambda row: (-row.sent, row.tenant))
    every_wait = [w for values in waits.values() for w in values]
    total = TenantRow(
        tenant="total",
        sent=sum(r.sent for r in rows),
        diverted=sum(r.diverted for r in rows),
        drained=sum(r.drained for r in rows),
        processed=sum(r.processed for r in rows),
        wait_p50_ms=percentile(every_wait, 50),
        wait_p99_ms=percentile(every_wait, 99),
    )
    sent_ids = {r.message_id for r in sent}
    duplicates = sum(1 for count in counts.values() if count > 1)
    problems = []
    if total.processed != total.sent:
        problems.append(
            f"{total.sent - total.processed:,} of {total.sent:,} messages sent were never processed"
        )
    if duplicates:
        problems.append(f"{duplicates:,} messages were processed more than once")
    strangers = len(set(counts) - sent_ids)
    if strangers:
        problems.append(f"{strangers:,} messages were processed that the demo never sent")
    for row in rows:
        if row.diverted != row.drained:
            problems.append(f"{row.tenant}: {row.diverted:,} diverted but {row.drained:,} drained")
    return DemoSummary(rows, total, duplicates, problems)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def render_table(summary: DemoSummary) -> str:
    """The table the demo ends with (waits rounded to whole milliseconds)."""

    def ms(value: float | None) -> int | None:
        return None if value is None else round(value)

    rows = [
        (r.tenant, r.sent, r.diverted, r.drained, r.processed, ms(r.wait_p50_ms), ms(r.wait_p99_ms))
        for r in [*summary.rows, summary.total]
    ]
    headers = ("TENANT", "SENT", "DIVERTED", "DRAINED", "PROCESSED", "WAIT P50 MS", "WAIT P99 MS")
    table = format_table(headers, rows).splitlines()
    rule = "-" * max(len(line) for line in table)
    return "\n".join([*table[:-1], rule, table[-1]])
