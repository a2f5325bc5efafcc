"""A damaged journal: every intact record is read back, and what was lost is reported."""

import collections
import struct

import pytest
from structlog.testing import capture_logs

from hubfsm.core.values import EpochEnded
from hubfsm.durable.journal import Journal
from hubfsm.durable.journal_format import RECORD as _RECORD
from hubfsm.durable.journal_scan import _scan, replay, scan


def write(path, epochs, *, values=True):
    """A closed journal of ``epochs`` metrics records (values records, or entry records)."""
    j = Journal(path, seq=0, inbox=collections.deque())
    for epoch in range(epochs):
        if values:
            j.append_metrics(epoch, {"loss": 1.0 / (epoch + 1), "map": 0.5})
        else:
            j.append(EpochEnded(epoch, {"text": f"epoch {epoch} " * 5}))
    j.close()
    return bytearray(path.read_bytes())


def record_offsets(data):
    """Where each record with a nonzero sequence number starts (an intact journal)."""
    offsets = {}
    pos = 8
    while data[pos : pos + 8] != bytes(8):
        low, _, seq = _RECORD.unpack_from(data, pos)
        values = low & 0x8000_0000
        body = 5 + 9 * (low & 0x7FFF_FFFF)  # a marshal list of floats
        size = 16 + body + (-body % 8) + 8 if values else 16 + low + (-low % 8)
        if seq:
            offsets[seq] = pos
        pos += size
    return offsets


def test_an_intact_journal_has_no_damage(tmp_path):
    write(tmp_path / "j", 5)
    result = scan(tmp_path / "j", after=0)
    assert len(result.records) == 5 and result.damage is None


def test_flipped_bytes_in_the_middle_lose_only_that_record(tmp_path):
    path = tmp_path / "j"
    data = write(path, 10, values=False)
    at = record_offsets(data)[4]
    data[at + 20] ^= 0xFF  # inside record 4's payload: its CRC no longer matches
    path.write_bytes(bytes(data))
    result = scan(path, after=0)
    assert [seq for seq, _ in result.records] == [1, 2, 3, 5, 6, 7, 8, 9, 10]
    damage = result.damage
    assert damage is not None
    assert damage.lost == 1 and damage.seqs == (4, 4) and damage.epochs == (3, 3)
    assert damage.stretches == 1 and damage.bad_bytes > 0
    assert "1 record(s) lost" in damage.describe()
    # the plain replay gives back the same records, and says so in the log
    with capture_logs() as logs:
        assert replay(path, after=0) == result.records
    assert [entry["event"] for entry in logs] == ["journal.damaged"]


def test_a_broken_length_resynchronises_on_the_next_record(tmp_path):
    path = tmp_path / "j"
    data = write(path, 10)
    offsets = record_offsets(data)
    # values records 3 and 4: their first words (count and epoch) become garbage
    for seq in (3, 4):
        struct.pack_into("<I", data, offsets[seq], 0x1234_5678)
    path.write_bytes(bytes(data))
    result = scan(path, after=0)
    assert [entry[1] for _, entry in result.records] == [0, 1, 4, 5, 6, 7, 8, 9]
    assert result.damage is not None
    assert result.damage.lost == 2 and result.damage.seqs == (3, 4)
    assert result.damage.epochs == (2, 3)


def test_damage_before_what_the_outbox_has_loses_nothing_new(tmp_path):
    path = tmp_path / "j"
    data = write(path, 10, values=False)
    data[record_offsets(data)[2] + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    result = scan(path, after=5)
    assert [seq for seq, _ in result.records] == [6, 7, 8, 9, 10]
    # the bytes are still reported unreadable, but no record newer than 5 is lost
    assert result.damage is not None and result.damage.lost == 0


def test_a_lost_schema_still_tells_which_epochs_are_gone(tmp_path):
    path = tmp_path / "j"
    data = write(path, 4)
    data[8 + 20] ^= 0xFF  # the schema record right after the header
    path.write_bytes(bytes(data))
    result = scan(path, after=0)
    assert result.records == []
    assert result.damage is not None
    assert result.damage.lost == 4 and result.damage.epochs == (0, 3)


def test_damage_at_the_end_is_reported_with_an_unknown_count(tmp_path):
    path = tmp_path / "j"
    data = write(path, 6, values=False)
    data[record_offsets(data)[6] + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    result = scan(path, after=0)
    assert [seq for seq, _ in result.records] == [1, 2, 3, 4, 5]
    assert result.damage is not None
    assert result.damage.lost is None and result.damage.seqs == (6, None)
    assert "unknown number" in result.damage.describe()


def test_a_damaged_header_is_reported_and_the_records_still_read(tmp_path):
    path = tmp_path / "j"
    data = write(path, 3)
    data[0:4] = b"XXXX"
    path.write_bytes(bytes(data))
    result = scan(path, after=0)
    assert len(result.records) == 3
    assert result.damage is not None and result.damage.header


def test_records_past_the_first_read_are_all_read_back(tmp_path):
    """A journal whose records run past the part read first is read on to its end."""
    path = tmp_path / "j"
    data = write(path, 2000, values=False)  # entry records: far more than 64 KiB
    assert max(record_offsets(data).values()) > 1 << 16
    result = scan(path, after=0)
    assert [seq for seq, _ in result.records] == list(range(1, 2001))
    assert result.damage is None


def test_damage_past_the_first_read_is_found_as_in_the_whole_file(tmp_path):
    """What lies past the part read first is read, whatever ends the records."""
    path = tmp_path / "j"
    data = write(path, 2000, values=False)
    offsets = record_offsets(data)
    late = next(seq for seq, at in offsets.items() if at > 1 << 16)
    data[offsets[late] + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    result = scan(path, after=0)
    assert [seq for seq, _ in result.records] == [s for s in range(1, 2001) if s != late]
    assert result.damage is not None and result.damage.seqs == (late, late)


@pytest.mark.parametrize("records", [3, 700, 2000])
@pytest.mark.parametrize("flip", [None, 100, 1 << 16, (1 << 16) + 4000])
def test_a_scan_finds_what_a_scan_of_the_whole_file_finds(tmp_path, records, flip):
    """Reading a part first never changes what is found, damaged or not."""
    path = tmp_path / "j"
    data = write(path, records, values=False)
    if flip is not None and flip < len(data):
        data[flip] ^= 0xFF
    path.write_bytes(bytes(data))
    whole = _scan(path, bytes(data), 0, whole=True)
    assert scan(path, after=0) == whole
    assert scan(path, after=records // 2) == _scan(path, bytes(data), records // 2, whole=True)
