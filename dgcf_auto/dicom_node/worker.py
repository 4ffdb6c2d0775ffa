"""The DICOM node's worker: follow Orthanc's changes, predict each taken series, send its sCT back.

One series at a time: download its instances into `<state>/work/<id>/`, refuse it with one reason or predict
it with `dgcf_auto.predict(..., output_format="dicom", derived_uids=True)` (the sCT keeps the source's study
and frame of reference; its UIDs derive from the source series and the model id), upload the sCT to Orthanc,
optionally have Orthanc C-STORE it to `forward`, then record the outcome in Orthanc (metadata `dgcf`:
`dgcf-done` or `dgcf-failed:<reason>`), in the state database and as one JSON line on stdout.

Failures: Orthanc unreachable -> the try does not count, wait with back-off (1 s doubling to 60 s) and go on;
a refused series or a DGCFError of prediction -> failed at once with that reason; anything else (or a worker
killed while on the series) -> tried again, and parked as failed after `max_tries` tries.

Test hook: with DGCF_DICOM_NODE_HOLD=download|predict|upload the worker stops in that stage (after the first
instance of a download or upload), writes `<state>/held-<stage>` and sleeps, so a test can kill it there.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dgcf_auto.dicom_node.orthanc import Orthanc, OrthancUnavailable, WrongCredentials
from dgcf_auto.dicom_node.selection import MODALITY_OF_MODEL, SeriesFilter, check_instances, check_size, takes
from dgcf_auto.dicom_node.state import NodeState, now
from dgcf_auto.dicom_node.status import throughput
from dgcf_auto.errors import DGCFError
from dgcf_auto.log import get_logger

log = get_logger(__name__)
HOLD_VARIABLE = "DGCF_DICOM_NODE_HOLD"
MAX_BACKOFF_SECONDS = 60.0


class RetryLater(DGCFError):
    """A failure of this try that another try may not have (the forwarding target was down)."""


@dataclass
class NodeOptions:
    state: Path
    modality: str | None = None          # MR, CT or CBCT; None: from the model's plans
    filters: list[SeriesFilter] = field(default_factory=list)
    forward: str | None = None           # a modality of Orthanc's DicomModalities
    max_voxels: int | None = None
    max_tries: int = 3
    poll_seconds: float = 5.0
    uid_prefix: str | None = None
    once: bool = False                   # drain the changes and the queue, then return


class DicomNode:
    def __init__(self, orthanc: Orthanc, predictor, options: NodeOptions, emit: Callable[[str], None] | None = None):
        from dgcf_auto.inference.provenance import build_provenance

        self.orthanc, self.predictor, self.options = orthanc, predictor, options
        self.emit = emit or (lambda line: print(line, flush=True))
        self.state = NodeState(options.state)
        folder = predictor.checkpoint_files[0].parent.parent
        source = predictor.plans.get("source_modality")
        modality = options.modality or MODALITY_OF_MODEL.get(str(source))
        if modality is None:
            raise DGCFError(f"model {folder}: its plans name no source modality ({source!r}); give --modality")
        self.modality: str = modality
        identity = build_provenance(folder, predictor.checkpoint_files, predictor.options)
        self.model = {"folder": str(folder), "folds": [p.parent.name for p in predictor.checkpoint_files],
                      "model_id": identity["model_id"]}
        self.hold = os.environ.get(HOLD_VARIABLE)

    # ------------------------------------------------------------------------------------------ the loop
    def run(self) -> None:
        backoff = 1.0
        while True:
            try:
                self.read_changes()
                worked = self.work_queue()
                backoff = 1.0
            except OrthancUnavailable as exc:
                log.warning(f"{exc}; retrying in {backoff:.0f} s")
                time.sleep(backoff)
                backoff = min(2 * backoff, MAX_BACKOFF_SECONDS)
                continue
            if self.options.once and not worked:
                return
            if not worked:
                time.sleep(self.options.poll_seconds)

    def read_changes(self) -> None:
        """Queue every StableSeries the node takes, moving the change index with it (one transaction a page)."""
        since = self.state.last_change()
        while True:
            page = self.orthanc.changes(since)
            taken = []
            for change in page.get("Changes", []):
                if change.get("ChangeType") == "StableSeries":
                    found = self._describe(change["ID"])
                    if found is not None:
                        taken.append(found)
            self.state.enqueue(taken, page.get("Last", since))
            since = page.get("Last", since)
            if page.get("Done", True):
                return

    def _describe(self, series_id: str) -> dict | None:
        try:
            series = self.orthanc.series(series_id)
            first = self.orthanc.instance_tags(series["Instances"][0]) if series.get("Instances") else {}
        except WrongCredentials:
            raise
        except DGCFError as exc:  # deleted since it became stable
            log.info(f"series {series_id}: no longer in Orthanc ({exc})")
            return None
        tags = {**first, **series.get("MainDicomTags", {})}
        if not takes(self.modality, self.options.filters, tags):
            return None
        return {"orthanc_id": series_id, "series_uid": tags.get("SeriesInstanceUID", ""),
                "description": tags.get("SeriesDescription", ""), "instances": len(series.get("Instances", [])),
                "received": _orthanc_time(series.get("LastUpdate"))}

    def work_queue(self) -> bool:
        """Finish every queued series; False when there was nothing to do."""
        worked = False
        while True:
            for parked in self.state.exhausted(self.options.max_tries):
                why = parked["reason"] or "the worker died while " + parked["state"]
                self._fail(parked, f"parked after {parked['tries']} tries: {why}")
                worked = True
            row = self.state.next_series()
            if row is None:
                return worked
            self.process(row)
            worked = True

    # ----------------------------------------------------------------------------------------- one series
    def process(self, row) -> None:
        series_id = row["orthanc_id"]
        work = self.options.state / "work" / series_id
        shutil.rmtree(work, ignore_errors=True)
        started, clock = self.state.start(series_id), time.perf_counter()
        try:
            sct = self._predict_and_send(series_id, row["series_uid"], work)
        except (OrthancUnavailable, WrongCredentials, KeyboardInterrupt):  # KeyboardInterrupt: also SIGTERM
            self.state.undo_try(series_id)  # not the series' fault: the try does not count
            raise
        except DGCFError as exc:
            exc.args = (str(exc).replace(str(work / "series"), "series"),)  # no work paths in labels
            if isinstance(exc, RetryLater) and row["tries"] + 1 < self.options.max_tries:
                self.state.retry_later(series_id, _one_line(exc))
                log.warning(f"series {row['series_uid']}: {_one_line(exc)}; will try again")
            else:
                self._fail(row, _one_line(exc), started)
            return
        except Exception as exc:  # noqa: BLE001 - unexpected: retried, then parked; the worker goes on
            reason = f"{type(exc).__name__}: {_one_line(exc)}"
            log.warning(f"series {row['series_uid']}: {reason}")
            self.state.retry_later(series_id, reason)
            return
        finally:
            shutil.rmtree(work, ignore_errors=True)
        sent = now()
        seconds = round(time.perf_counter() - clock, 3)
        self.state.done(series_id, sent=sent, seconds=seconds, **sct)
        self._label(series_id, "dgcf-done")
        self._log_line(row, "done", started=started, sent=sent, seconds=seconds,
                       **{k: v for k, v in sct.items() if k != "sct_orthanc_id"})

    def _predict_and_send(self, series_id: str, series_uid: str, work: Path) -> dict:
        """Download, check, predict, upload (and forward) one series: what the state records of its sCT."""
        from dgcf_auto.inference.api import predict

        clock = time.perf_counter()
        series = self.orthanc.series(series_id)
        instances = series.get("Instances", [])
        first = self.orthanc.instance_tags(instances[0]) if instances else {}
        check_size(len(instances), first, self.options.max_voxels)
        source = work / "series"
        source.mkdir(parents=True)
        for index, instance in enumerate(instances):
            (source / f"{index:05d}.dcm").write_bytes(self.orthanc.instance_file(instance))
            self._maybe_hold("download")
        check_instances(source)
        self.state.stage(series_id, "predicting")
        self._maybe_hold("predict")
        downloaded = time.perf_counter()
        out = predict(source, work / "out", predictor=self.predictor, output_format="dicom",
                      series_uids=(series_uid,), dicom_uid_prefix=self.options.uid_prefix, derived_uids=True,
                      progress=False, max_voxels=self.options.max_voxels)[0]
        self.state.stage(series_id, "uploading")
        predicted = time.perf_counter()
        written = sorted(out.iterdir())
        sct_id = None
        for path in written:
            sct_id = self.orthanc.upload(path.read_bytes()).get("ParentSeries", sct_id)
            self._maybe_hold("upload")
        if self.options.forward and sct_id is not None:
            self._forward(self.options.forward, sct_id)
        return {"sct_orthanc_id": sct_id, "sct_series_uid": _series_uid(written), "sha256": _files_sha256(written),
                "instances": len(written), "download_s": round(downloaded - clock, 3),
                "predict_s": round(predicted - downloaded, 3), "send_s": round(time.perf_counter() - predicted, 3)}

    def _forward(self, modality: str, sct_id: str) -> None:
        try:
            self.orthanc.store_to_modality(modality, sct_id)
        except OrthancUnavailable as exc:
            self.orthanc.system()  # Orthanc itself down: the caller waits for it
            raise RetryLater(f"forwarding to {self.options.forward} failed ({exc})") from None

    def _fail(self, row, reason: str, started: str | None = None) -> None:
        self.state.fail(row["orthanc_id"], reason)
        self._label(row["orthanc_id"], f"dgcf-failed:{reason}")
        self._log_line(row, "failed", started=started, reason=reason)
        log.warning(f"series {row['series_uid']} ({row['description'] or 'no description'}): failed: {reason}")

    def _label(self, series_id: str, value: str) -> None:
        try:
            self.orthanc.set_metadata(series_id, value)
        except WrongCredentials:
            raise
        except DGCFError as exc:  # metadata 'dgcf' not declared in Orthanc's UserMetadata, or series deleted
            log.warning(f"cannot record '{value[:40]}' on series {series_id} in Orthanc ({exc}); declare "
                        f"\"UserMetadata\": {{\"dgcf\": 1024}} in its configuration (documentation/dicom_node.md)")

    def _log_line(self, row, outcome: str, **values) -> None:
        line = {"series_uid": row["series_uid"], "orthanc_id": row["orthanc_id"], "description": row["description"],
                "outcome": outcome, "received": row["received"], "queued": row["queued"], **values,
                "try": self.state.db.execute("SELECT tries FROM series WHERE orthanc_id = ?",
                                             (row["orthanc_id"],)).fetchone()[0],
                "model": self.model, "series_per_hour": throughput(self.state.rows())[0]}
        self.emit(json.dumps(line, sort_keys=False))

    def _maybe_hold(self, stage: str) -> None:
        if self.hold == stage:
            (self.options.state / f"held-{stage}").write_text(str(os.getpid()))
            while True:
                time.sleep(3600)


# ------------------------------------------------------------------------------------------------ helpers
def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _files_sha256(files: list[Path]) -> str:
    """SHA-256 of the sCT instances, file after file in name order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _series_uid(files: list[Path]) -> str:
    import pydicom

    header = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    return str(header.SeriesInstanceUID)


def _orthanc_time(value: str | None) -> str | None:
    """Orthanc's LastUpdate (20261206T205512, UTC) as ISO 8601."""
    if value is None:
        return None
    try:
        return datetime.datetime.strptime(value, "%Y%m%dT%H%M%S").strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        return None


def read_password(path: str | os.PathLike) -> str:
    """The password: the file's first line. Refused when others may read the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DGCFError(f"--password_file {path}: cannot be read ({exc.strerror})") from None
    if sys.platform != "win32" and path.stat().st_mode & 0o077:
        raise DGCFError(f"--password_file {path}: readable by others (mode {path.stat().st_mode & 0o777:o}); "
                        f"chmod 600 it")
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise DGCFError(f"--password_file {path}: empty")
    return lines[0]
