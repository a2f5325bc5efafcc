"""The simulator's in-memory outbox keeps and drops weight snapshots as the real one does."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubfsm.core import protocol
from hubfsm.core.values import Offered, OpOpened, Rejected
from hubfsm.durable.handover import stamp_of
from hubfsm.durable.outbox import Outbox
from hubfsm.sim.memdisk import MemoryDisk

MODEL = "M" * 20


def _exists(outbox: Outbox, disk: MemoryDisk | None, path: str) -> bool:
    return path in disk.files if disk is not None else Path(path).exists()


@pytest.mark.parametrize("kind", ["files", "memory"])
def test_a_rejected_uploads_snapshot_is_kept_and_a_superseded_one_goes(tmp_path, kind):
    disk = MemoryDisk() if kind == "memory" else None
    root = tmp_path / "outbox"
    outbox = disk.open_outbox(MODEL, root) if disk is not None else Outbox.open(MODEL, root)
    weights = []
    for epoch in range(2):
        path = tmp_path / f"epoch{epoch}.pt"
        path.write_bytes(f"weights of epoch {epoch}".encode())
        part = outbox.snapshot(path, name="last.pt", stamp=stamp_of(path))
        assert part is not None
        weights.append(part)
    refused = protocol.upload_checkpoint(MODEL, 0, weights[0], is_best=False, key="k-1")
    outbox.apply(
        [OpOpened("checkpoint", refused, 0), Offered("checkpoint", (1, weights[1], False))]
    )
    outbox.apply([Rejected("checkpoint", refused, 0, 422, "bad weights")])
    outbox.apply([Offered("checkpoint", None)])  # the newer offer is withdrawn: files are collected

    assert _exists(outbox, disk, weights[0].path)  # kept with the rejected record
    assert not _exists(outbox, disk, weights[1].path)  # nothing refers to it any more
    assert [r.request.file.path for r in outbox.load().rejected] == [weights[0].path]
    outbox.close()


@pytest.mark.parametrize("kind", ["files", "memory"])
def test_discarding_forgets_records_and_snapshots_and_frees_the_outbox(tmp_path, kind):
    # A session whose disk lagged the hub's acknowledgments discards its outbox at
    # close; the simulated one fell through to the real outbox's and crashed the run.
    disk = MemoryDisk() if kind == "memory" else None
    root = tmp_path / "outbox"

    def opened() -> Outbox:
        return disk.open_outbox(MODEL, root) if disk is not None else Outbox.open(MODEL, root)

    outbox = opened()
    path = tmp_path / "last.pt"
    path.write_bytes(b"weights")
    part = outbox.snapshot(path, name="last.pt", stamp=stamp_of(path))
    assert part is not None
    refused = protocol.upload_checkpoint(MODEL, 0, part, is_best=False, key="k-1")
    outbox.apply([OpOpened("checkpoint", refused, 0)])
    outbox.apply([Rejected("checkpoint", refused, 0, 422, "bad weights")])
    outbox.discard()
    assert not _exists(outbox, disk, part.path)
    again = opened()  # not locked any more, and empty
    assert again.load().empty
    again.close()
