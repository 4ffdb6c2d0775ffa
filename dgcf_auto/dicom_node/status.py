"""What the node has done: the throughput and `dgcf_dicom_node --status`, read from the state database."""
from __future__ import annotations

import datetime
from pathlib import Path

from dgcf_auto.dicom_node.state import NodeState
from dgcf_auto.errors import DGCFError


def throughput(rows) -> tuple[float | None, float | None, int]:
    """(series per hour, mean seconds per series, n) over the series sent in the last hour."""
    done = [r for r in rows if r["state"] == "done" and r["sent"] and r["started"]]
    if not done:
        return None, None, 0
    last = max(_parse(r["sent"]) for r in done)
    recent = [r for r in done if (last - _parse(r["sent"])).total_seconds() <= 3600]
    span = (last - min(_parse(r["started"]) for r in recent)).total_seconds()
    mean = sum(r["seconds"] or 0 for r in recent) / len(recent)
    return (round(3600 * len(recent) / span, 1) if span > 0 else None), round(mean, 2), len(recent)


def status_text(state_dir: Path) -> str:
    """What `dgcf_dicom_node --status` prints: counts, throughput, then the queue, failures and recent work."""
    path = Path(state_dir) / "node.sqlite"
    if not path.is_file():
        raise DGCFError(f"--state {state_dir}: no node.sqlite; has dgcf_dicom_node run with this --state?")
    state = NodeState(state_dir)
    try:
        rows, last = state.rows(), state.last_change()
    finally:
        state.close()
    by_state: dict[str, list] = {}
    for row in rows:
        by_state.setdefault(row["state"], []).append(row)
    per_hour, mean, n = throughput(rows)
    in_flight = [r for r in rows if r["state"] in ("downloading", "predicting", "uploading")]
    lines = [f"state {state_dir}: last Orthanc change {last}",
             f"queued {len(by_state.get('queued', []))}, in flight {len(in_flight)}, "
             f"done {len(by_state.get('done', []))}, failed {len(by_state.get('failed', []))}",
             f"throughput: {per_hour if per_hour is not None else '-'} series/hour, mean "
             f"{mean if mean is not None else '-'} s per series (last hour, {n} series)"]

    def describe(row) -> str:
        return f"  {row['series_uid']} '{row['description'] or ''}'"

    sections = (("in flight", in_flight, lambda r: f" ({r['state']}, try {r['tries']})"),
                ("queued", by_state.get("queued", []), lambda r: f" (tries {r['tries']})" if r["tries"] else ""),
                ("failed", by_state.get("failed", []), lambda r: f": {r['reason']} (tries {r['tries']})"),
                ("done", by_state.get("done", [])[-20:], lambda r: f": sCT {r['sct_series_uid']} in {r['seconds']} s"))
    for title, chosen, detail in sections:
        if chosen:
            lines.append(f"{title}:")
            lines += [describe(r) + detail(r) for r in chosen]
    return "\n".join(lines)


def _parse(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
