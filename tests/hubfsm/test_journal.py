import collections

from hubfsm.journal import INITIAL_SIZE, Journal, replay


def test_appended_entries_replay_in_order_and_queue_jobs(tmp_path):
    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=10, inbox=inbox)
    for epoch in range(5):
        j.append(("m", epoch, {"loss": 1.0 / (epoch + 1)}), f"job{epoch}")
    assert [seq for seq, _ in inbox] == [11, 12, 13, 14, 15]
    records = replay(tmp_path / "j", after=12)
    assert [seq for seq, _ in records] == [13, 14, 15]
    assert records[0][1] == ("m", 2, {"loss": 1.0 / 3})


def test_consumed_starts_over_and_stale_records_are_not_replayed(tmp_path):
    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=inbox)
    for epoch in range(20):
        j.append(("m", epoch, {"x": "long value " * 10}), None)
    j.consumed(19)  # not everything: nothing happens
    assert len(replay(tmp_path / "j", after=0)) == 20
    j.consumed(20)
    j.append(("m", 99, {}), None)
    assert [seq for seq, _ in replay(tmp_path / "j", after=0)] == [21]


def test_a_torn_record_ends_the_replay(tmp_path):
    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=inbox)
    for epoch in range(3):
        j.append(("m", epoch, {"a": epoch}), None)
    j.close()
    data = bytearray((tmp_path / "j").read_bytes())
    # corrupt the third record's payload
    third = data.find(b"\x03\x00\x00\x00\x00\x00\x00\x00")
    data[third + 10] ^= 0xFF
    (tmp_path / "j").write_bytes(bytes(data))
    assert [seq for seq, _ in replay(tmp_path / "j", after=0)] == [1, 2]


def test_a_record_copied_only_halfway_ends_the_replay(tmp_path):
    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=inbox)
    j.append(("m", 0, {"a": 0.5}), None)
    end_of_first = j._pos
    j.append(("m", 1, {"a": 1.5, "b": 2.5}), None)
    j.close()
    data = bytearray((tmp_path / "j").read_bytes())
    # A kill in the middle of the copy: the header is in, the payload only partly.
    data[end_of_first + 30 : j._pos + 4] = bytes(j._pos + 4 - end_of_first - 30)
    (tmp_path / "j").write_bytes(bytes(data))
    assert replay(tmp_path / "j", after=0) == [(1, ("m", 0, {"a": 0.5}))]


def test_the_journal_grows_past_its_first_size(tmp_path):
    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=inbox)
    big = {"k": "v" * 10_000}
    n = INITIAL_SIZE // 10_000 * 3
    for epoch in range(n):
        j.append(("m", epoch, big), None)
    assert len(replay(tmp_path / "j", after=0)) == n


def test_numpy_like_scalars_are_made_plain(tmp_path):
    class Scalar:
        def item(self):
            return 0.25

    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=inbox)
    j.append(("m", 0, {"loss": Scalar()}), None)
    assert replay(tmp_path / "j", after=0)[0][1] == ["m", 0, {"loss": 0.25}]


def test_a_missing_or_foreign_file_replays_nothing(tmp_path):
    assert replay(tmp_path / "none", after=0) == []
    (tmp_path / "x").write_bytes(b"not a journal")
    assert replay(tmp_path / "x", after=0) == []
