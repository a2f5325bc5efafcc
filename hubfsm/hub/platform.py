"""The Ultralytics Platform API beside HUB v1: the calls ultralytics 8.4 makes, on the same store.

ultralytics 8.4 (``utils/callbacks/platform.py`` over the ``ultralytics-platform`` SDK)
reports a training with ``Authorization: Bearer ul_...`` to four endpoints:

- ``POST /api/webhooks/training/metrics`` ``{modelId | project + name, event, data}``,
  events ``training_started``, ``epoch_end``, ``console_output``, ``checkpoint_saved`` and
  ``training_complete`` (a console chunk, or the SDK's ``training_progress`` or
  ``system_metrics``, counts as the run's heartbeat); every answer is
  ``{received, event, modelId, runId, cancelled, ...}``;
- ``POST /api/webhooks/models/upload`` ``{filename, modelId, runId}``, answered with a signed
  ``uploadUrl`` the client PUTs the raw file to, and the ``gcsPath``/``uploadPath`` that
  ``checkpoint_saved`` then names to promote that file;
- ``GET /api/models/{owner}/{project}/{model}/files`` (``ul://owner/project/model``): signed
  download URLs;
- ``GET /api/account/summary`` (``yolo login``): 200 for a valid key, 401 otherwise.

A Platform model is a :class:`~hubfsm.hub.store.ModelRecord` like a HUB one (with its
``project``, ``slug`` and ``run_id``), so the pages and ``runs.json`` show runs of both
protocols alike; the epoch metrics go to the same table, the checkpoint becomes the
model's ``last`` weights, the final file its ``best`` ones (see :mod:`hubfsm.hub.platform_files`).
Errors answer ``{"error": ...}``, the shape the client reads.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from hubfsm.hub import records
from hubfsm.hub.calls import HubCall, HubReply, error
from hubfsm.hub.keys import KeyAdmin, is_platform_key
from hubfsm.hub.parse import check_json, metrics_text, plain_number, started_fields, whole_count
from hubfsm.hub.platform_files import FILENAME, PlatformFiles, stored_path
from hubfsm.hub.stored import ModelRecord, StoredReply

#: The events the SDK knows; ultralytics 8.4.190 sends the first five.
EVENTS = (
    "training_started",
    "epoch_end",
    "console_output",
    "checkpoint_saved",
    "training_complete",
    "training_progress",
    "system_metrics",
    "training_failed",
)
#: The workspace of a project given without ``owner/`` (the local hub has one user).
USERNAME = "local"
#: Seconds within which a ``training_started`` sent again is taken as a retry: the SDK's
#: four attempts of at most 30 s each, with their waits, fit in it.
RETRY_WINDOW = 180.0

# ultralytics' model-info fields at epoch 0, under the names HUB-era clients send them.
_MODEL_INFO = {
    "parameters": "model/parameters",
    "gflops": "model/GFLOPs",
    "speedMs": "model/speed_PyTorch(ms)",
}
_SLUG_PART = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,126}[a-z0-9])?")


def slugify(text: str) -> str:
    """The slug rule of ultralytics' Platform client: lower case, dashes, 128 characters."""
    lowered = re.sub(r"[^a-z0-9\s-]", "", text.lower()).replace(" ", "-")
    return re.sub(r"-+", "-", lowered).strip("-")[:128]


def route(method: str, path: str) -> tuple[str, tuple[str, ...]]:
    """(endpoint, path arguments) of a Platform call; endpoint ``unknown`` or ``405:<allowed>``."""
    parts = tuple(path.strip("/").split("/"))
    if parts == ("api", "webhooks", "training", "metrics"):
        return ("training_metrics" if method == "POST" else "405:POST"), ()
    if parts == ("api", "webhooks", "models", "upload"):
        return ("models_upload" if method == "POST" else "405:POST"), ()
    if parts == ("api", "account", "summary"):
        return ("account_summary" if method in ("GET", "HEAD") else "405:GET"), ()
    if len(parts) == 6 and parts[:2] == ("api", "models") and parts[5] == "files" and all(parts):
        return ("model_files" if method in ("GET", "HEAD") else "405:GET"), parts[2:5]
    return "unknown", ()


class PlatformEndpoints(KeyAdmin, PlatformFiles):
    """The Platform API (a part of :class:`~hubfsm.hub.domain.Hub`)."""

    _replayed: Counter[str]

    def platform_handle(self, call: HubCall) -> HubReply:
        """Answer one call under ``/api/``."""
        endpoint, args = route(call.method, call.path)
        with self._lock:
            self._requests[f"platform_{endpoint.split(':')[0]}"] += 1
        # Platform takes only its own kind of key, as the service does (HUB keys get 401).
        who = self.principal(call.api_key) if is_platform_key(call.api_key) else None
        if who is None:
            if call.api_key and self.principal(call.api_key) is not None:
                # Its holder exported the HUB key (HUB_API_KEY) where a ul_ key goes.
                hint = "the Platform API takes a ul_ key (`hubfsm hub keys add --platform`)"
                return error(401, f"Invalid API key for Platform, a HUB key: {hint}")
            return error(401, "Invalid or missing API key" if call.api_key else "Missing API key")
        if endpoint == "unknown":
            return error(404, f"Not found: {call.method} {call.path[:200]!r}")
        if endpoint.startswith("405:"):
            allowed = endpoint[4:]
            return error(405, f"Method not allowed; use {allowed}", {"Allow": allowed})
        if endpoint in ("training_metrics", "models_upload"):
            body = call.json
            if not isinstance(body, dict):
                return error(400, "The body must be a JSON object")
            problem = check_json(body)
            if problem is not None:
                return error(400, f"The body is not valid JSON: {problem}")
        with self._lock, self.store.transaction():
            if endpoint == "account_summary":
                return self._summary(who)
            if endpoint == "model_files":
                return self._files(who, *args)
            if endpoint == "models_upload":
                return self._upload_url(who, call.json)  # type: ignore[arg-type]
            return self._training_event(who, call.json)  # type: ignore[arg-type]

    # Read endpoints.

    def _summary(self, who: str) -> HubReply:
        mine = [r for r in self.store.list_models() if r.owner == who]
        projects = {r.project for r in mine if r.project is not None}
        name = next((k.label for k in self.store.list_keys() if k.id == who), "") or USERNAME
        body = {
            "username": USERNAME,
            "name": name,
            "accountType": "personal",
            "plan": "free",
            "creditsCents": 0,
            "counts": {"projects": len(projects), "datasets": 0, "models": len(mine)},
            "teams": [],
        }
        return HubReply(200, body)

    def _upload_url(self, who: str, body: Mapping[str, Any]) -> HubReply:
        filename = body.get("filename")
        if not isinstance(filename, str) or FILENAME.fullmatch(filename) is None:
            return error(400, "'filename' must be a plain file name, such as best.pt")
        record = self._identified(who, body)
        if isinstance(record, HubReply):
            return record
        run_id = body.get("runId")
        if run_id is not None and run_id != record.run_id:
            return error(409, f"Run {run_id!r} is not the model's current run")
        upload_path = f"uploads/{record.id}/{record.run_id or 0}/{self.new_id()}/{filename}"
        url = (
            self.signer.upload_url(self.public_root, "/" + upload_path)
            if self.signer is not None
            else f"{self.public_root}/{upload_path}"
        )
        data = {
            "uploadUrl": url,
            "gcsPath": stored_path(upload_path),
            "uploadPath": upload_path,
            "modelId": record.id,
        }
        return HubReply(200, data)

    def cancel(self, model_id: str) -> bool:
        """Ask the run writing to ``model_id`` to stop: its next answers say ``cancelled``."""
        with self._lock, self.store.transaction():
            record = self.store.get_model(model_id)
            if record is None:
                return False
            self.store.put_model(records.evolve(record, cancelled=True))
            return True

    def _training_event(self, who: str, body: Mapping[str, Any]) -> HubReply:
        event, data = body.get("event"), body.get("data")
        if event not in EVENTS:
            return error(400, f"'event' must be one of {', '.join(EVENTS)}")
        if not isinstance(data, dict):
            return error(400, "'data' must be an object")
        if event == "training_started":
            return self._start_once(who, body, data)
        record = self._identified(who, body)
        if isinstance(record, HubReply):
            return record
        handlers = {
            "epoch_end": self._epoch_end,
            "console_output": self._console_output,
            "checkpoint_saved": self._checkpoint_saved,
            "training_complete": self._complete,
            "training_progress": self._alive,
            "system_metrics": self._alive,
        }
        handler = handlers.get(str(event))
        if handler is not None:
            result = handler(record, data)
            if isinstance(result, HubReply):
                return result
            record = result
        return _received(str(event), record)

    def _identified(self, who: str, body: Mapping[str, Any]) -> ModelRecord | HubReply:
        """The model a call names by ``modelId`` (or, for legacy callers, project and name)."""
        model_id = body.get("modelId")
        if model_id is not None:
            record = self.store.get_model(model_id) if isinstance(model_id, str) else None
            if record is None or record.owner != who or record.project is None:
                return error(404, "Model not found")
            return record
        project, slug = body.get("project"), body.get("name") or "train"
        if isinstance(project, str) and isinstance(slug, str):
            wanted, model = _project(project), slugify(slug)
            for record in reversed(self.store.list_models()):
                if record.owner == who and record.project == wanted and record.slug == model:
                    return record
        return error(404, "Model not found")

    def _start_once(self, who: str, body: Mapping[str, Any], data: Mapping[str, Any]) -> HubReply:
        """``training_started``, where a retry of the same request opens nothing new.

        The SDK retries it (after a timeout, a 5xx, a 429) with the very same body, and the
        protocol has no idempotency key: without this, an answer lost on the way would leave
        a model per attempt. A body sent again within :data:`RETRY_WINDOW` seconds, while
        its run has heard nothing since, gets the first answer again. (A new run's body
        differs: it carries the machine's load at that moment, ``data.system``.)
        """
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        scope = f"{who}\x1fplatform_started\x1f{hashlib.sha256(text.encode()).hexdigest()}"
        stored = self.store.get_reply(scope)
        if stored is not None:
            record = self.store.get_model(str(stored.body.get("modelId")))
            fresh = self.clock() - stored.body.get("_at", 0.0) <= RETRY_WINDOW
            if fresh and record is not None and record.run_id == stored.body.get("runId"):
                untouched = record.metrics_epoch is None and not record.has_last_weights
                if untouched and not record.cancelled:
                    self._replayed["platform_training_started"] += 1
                    answer = {k: v for k, v in stored.body.items() if k != "_at"}
                    return HubReply(200, answer, {"Idempotent-Replayed": "true"})
        reply = self._started(who, body, data)
        if reply.ok and reply.body.get("cancelled") is False:
            self.store.put_reply(scope, StoredReply(200, {**reply.body, "_at": self.clock()}))
        return reply

    def _started(self, who: str, body: Mapping[str, Any], data: Mapping[str, Any]) -> HubReply:
        now = self.clock()
        if body.get("modelId") is not None:
            record = self._identified(who, body)
            if isinstance(record, HubReply):
                return record  # 404: the client registers a new model by project and name
            if record.cancelled:
                return _received("training_started", record)
            record = records.evolve(
                record,
                status="training",
                run_id=(record.run_id or 0) + 1,
                updated_at=now,
                **started_fields(data),
            )
            self.store.put_model(record)
            return self._opened(record)
        project, name = body.get("project"), body.get("name")
        if not isinstance(project, str) or not _project(project):
            return error(400, "'project' must name a project, such as owner/project")
        if name is not None and not isinstance(name, str):
            return error(400, "'name' must be a string")
        workspace = _project(project)
        # Two processes looking for a free slug at once would both find the same one.
        self.store.claim(f"slug {workspace}")
        slug = self._free_slug(workspace, slugify(name or "train") or "train")
        record = ModelRecord(
            self._fresh_id(),
            slug,
            now,
            "",
            owner=who,
            status="training",
            started_at=now,
            updated_at=now,
            project=workspace,
            slug=slug,
            run_id=1,
        )
        record = records.evolve(record, **started_fields(data))
        self.store.put_model(record)
        return self._opened(record)

    def _opened(self, record: ModelRecord) -> HubReply:
        reply = _received("training_started", record)
        reply.body["modelSlug"] = record.slug
        reply.body["modelUrl"] = f"{self.public_root}/models/{record.id}"
        return reply

    def _free_slug(self, workspace: str, slug: str) -> str:
        taken = {r.slug for r in self.store.list_models() if r.project == workspace}
        if slug not in taken:
            return slug
        number = 2
        while f"{slug}-{number}" in taken:
            number += 1
        return f"{slug}-{number}"

    def _epoch_end(self, record: ModelRecord, data: Mapping[str, Any]) -> ModelRecord | HubReply:
        epoch, metrics = data.get("epoch"), data.get("metrics")
        if not whole_count(epoch):
            return error(400, "'epoch' must be a non-negative integer")
        if not isinstance(metrics, dict):
            return error(400, "'metrics' must be an object")
        # What a chart can show: plain names with numbers (null for a non-finite one).
        values = {k: v for k, v in metrics.items() if _plain_name(k) and plain_number(v)}
        info = data.get("modelInfo")
        if isinstance(info, dict):
            values.update({_MODEL_INFO[k]: v for k, v in info.items() if k in _MODEL_INFO})
        try:
            text = metrics_text(json.dumps(values), epoch)
        except ValueError as problem:
            return error(400, str(problem))
        now = self.clock()
        self.store.put_metrics(record.id, {epoch: text}, now)
        # The final validation of best.pt comes as the epoch after the last (``epochs``
        # for a run that ran them all; sooner after a cancel or an early stop): kept, not
        # progress, so a run stopped after 5 epochs does not count 6.
        if record.epochs is not None and epoch >= record.epochs:
            return record
        if record.metrics_epoch is not None and epoch == record.metrics_epoch + 1:
            before = dict(self.store.get_metrics(record.id)).get(epoch - 1)
            if records.repeats_training(before, values):
                return record
        updated = records.after_metrics(record, {epoch: text}, now)
        if record.status == "trained":
            # The client sends epochs from a pool: one may land after training_complete.
            updated = records.evolve(updated, status="trained")
        self.store.put_model(updated)
        return updated

    def _console_output(
        self, record: ModelRecord, data: Mapping[str, Any]
    ) -> ModelRecord | HubReply:
        chunk, content, lines = data.get("chunkId"), data.get("content"), data.get("lineCount", 0)
        if not isinstance(chunk, int) or isinstance(chunk, bool) or abs(chunk) >= 2**62:
            return error(400, "'chunkId' must be an integer")
        if not isinstance(content, str):
            return error(400, "'content' must be a string")
        if not whole_count(lines):
            lines = content.count("\n")
        self.store.put_console(record.id, chunk, lines, content)
        return self._alive(record, data)

    def _alive(self, record: ModelRecord, data: Mapping[str, Any]) -> ModelRecord:
        """Note that the trainer lives, as a heartbeat: 8.4 sends none, only console chunks."""
        if record.status == "trained":
            return record
        alive = records.evolve(record, heartbeat_at=self.clock())
        self.store.put_model(alive)
        return alive


def _received(event: str, record: ModelRecord) -> HubReply:
    body = {
        "received": True,
        "event": event,
        "mode": "remote",
        "modelId": record.id,
        "runId": record.run_id,
        "cancelled": record.cancelled,
    }
    return HubReply(200, body)


def _project(project: str) -> str:
    """``owner/project`` of a project given as ``owner/project`` or ``project``; "" if none."""
    owner, _, name = project.rpartition("/") if "/" in project else (USERNAME, "/", project)
    owner, name = slugify(owner.split("/")[0]), slugify(name)
    if not (_SLUG_PART.fullmatch(owner) and _SLUG_PART.fullmatch(name)):
        return ""
    return f"{owner}/{name}"


def _plain_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and len(name) <= 200
        and name.isascii()
        and name.isprintable()
        and '"' not in name
        and "\\" not in name
    )
