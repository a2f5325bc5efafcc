import collections
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubfsm.core.values import EpochEnded, FileStamp, FinishRequested
from hubfsm.durable.handover import Inbox
from hubfsm.durable.journal import Journal
from hubfsm.durable.journal_format import INITIAL_SIZE, MAGIC, VALUES, entry_of, event_of
from hubfsm.durable.journal_scan import replay


def run_jobs(j, inbox):
    """What the worker would hand the core, in order: (epoch, metrics) per event."""
    if not isinstance(inbox, Inbox):  # the journal's own queue, as an inbox holds it
        queue, inbox = inbox, Inbox()
        inbox._items = queue
    seen = []
    for taken in inbox.take_all():
        event = taken.event
        assert isinstance(event, EpochEnded)
        seen.append((event.epoch, dict(event.metrics)))
    return seen


def test_appended_entries_replay_in_order_and_queue_jobs(tmp_path):
    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=10, inbox=inbox)
    for epoch in range(5):
        j.append(EpochEnded(epoch, {"loss": 1.0 / (epoch + 1)}))
    assert [seq for seq, *_ in inbox] == [11, 12, 13, 14, 15]
    records = replay(tmp_path / "j", after=12)
    assert [seq for seq, _ in records] == [13, 14, 15]
    assert records[0][1] == ("m", 2, {"loss": 1.0 / 3})


def test_consumed_starts_over_and_stale_records_are_not_replayed(tmp_path):
    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=inbox)
    for epoch in range(20):
        j.append(EpochEnded(epoch, {"x": "long value " * 10}))
    j.consumed(19)  # not everything: nothing happens
    assert len(replay(tmp_path / "j", after=0)) == 20
    j.consumed(20)
    j.append(EpochEnded(99, {}))
    assert [seq for seq, _ in replay(tmp_path / "j", after=0)] == [21]


def test_the_writer_starts_over_once_the_outbox_has_everything_or_at_close(tmp_path):
    j = Journal(tmp_path / "j", seq=0, inbox=collections.deque())
    for epoch in range(3):
        j.append_metrics(epoch, {"loss": 0.5})
    j.consumed(3)  # the worker's word: the next write, on the trainer's thread, starts over
    assert [seq for seq, _ in replay(tmp_path / "j", after=0)] == [1, 2, 3]
    j.append_metrics(3, {"loss": 0.25})
    assert replay(tmp_path / "j", after=0) == [(4, ("m", 3, {"loss": 0.25}))]
    j.append_metrics(4, {"loss": 0.125})
    j.consumed(4)  # not the last record: the file keeps what the outbox lacks
    j.close()
    assert [seq for seq, _ in replay(tmp_path / "j", after=0)] == [4, 5]
    later = Journal(tmp_path / "j", seq=5, inbox=collections.deque())
    later.append_metrics(5, {"loss": 0.0625})
    later.consumed(6)
    later.close()  # everything is in the outbox: the file is left with no records
    assert replay(tmp_path / "j", after=0) == []


def test_a_worker_that_catches_up_while_the_trainer_writes_loses_nothing(tmp_path):
    import threading

    from hubfsm.durable.journal_scan import scan

    queue = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=queue)
    taken: list[int] = []
    done = threading.Event()

    def worker():  # takes what is queued and says so, as often as the GIL lets it
        while not done.is_set() or queue:
            while queue:
                taken.append(queue.popleft()[0])
            if taken:
                j.consumed(taken[-1])

    thread = threading.Thread(target=worker)
    thread.start()
    for epoch in range(3000):
        j.append_metrics(epoch, {"loss": epoch / 8, "map": 0.5})
        if epoch % 300 == 0:
            j.append(EpochEnded(epoch, {"note": "an entry record"}))
    last = taken[-1] if taken else 0  # what the outbox has when the process dies
    done.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    seen = scan(tmp_path / "j", after=last)
    assert seen.damage is None
    # Every record newer than what the worker had taken is still in the file.
    assert [seq for seq, _ in seen.records] == list(range(last + 1, j.seq + 1))
    assert taken == list(range(1, j.seq + 1))


def test_a_torn_record_ends_the_replay(tmp_path):
    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=inbox)
    for epoch in range(3):
        j.append(EpochEnded(epoch, {"a": epoch}))
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
    j.append(EpochEnded(0, {"a": 0.5}))
    end_of_first = j._at * 8
    j.append(EpochEnded(1, {"a": 1.5, "b": 2.5}))
    end = j._at * 8 + 8
    j.close()
    data = bytearray((tmp_path / "j").read_bytes())
    # A kill in the middle of the copy: the header is in, the payload only partly.
    data[end_of_first + 30 : end] = bytes(end - end_of_first - 30)
    (tmp_path / "j").write_bytes(bytes(data))
    assert replay(tmp_path / "j", after=0) == [(1, ("m", 0, {"a": 0.5}))]


def test_the_journal_grows_past_its_first_size(tmp_path):
    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=inbox)
    big = {"k": "v" * 10_000}
    n = INITIAL_SIZE // 10_000 * 3
    for epoch in range(n):
        j.append(EpochEnded(epoch, big))
    assert len(replay(tmp_path / "j", after=0)) == n


def test_numpy_like_scalars_are_made_plain(tmp_path):
    class Scalar:
        def item(self):
            return 0.25

    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=inbox)
    j.append(EpochEnded(0, {"loss": Scalar()}))
    assert replay(tmp_path / "j", after=0)[0][1] == ["m", 0, {"loss": 0.25}]


def test_a_missing_or_foreign_file_replays_nothing(tmp_path):
    assert replay(tmp_path / "none", after=0) == []
    (tmp_path / "x").write_bytes(b"not a journal")
    assert replay(tmp_path / "x", after=0) == []


def test_metrics_with_the_same_names_go_in_as_values_and_come_back_whole(tmp_path):
    inbox = Inbox()
    j = inbox.open_journal(Journal, tmp_path / "j", seq=0)
    logged = [{"loss": 1.0 / (e + 1), "map": e / 10} for e in range(5)]
    for epoch, metrics in enumerate(logged):
        inbox.put_metrics(epoch, metrics)
    assert inbox.queued_epochs() == [0, 1, 2, 3, 4]
    # After the schema, each epoch is three words and the values' 23 marshal bytes
    # (a list of two floats) in three more: the names are not written again.
    assert j._at - j._base == 5 * (3 + 3)
    assert replay(tmp_path / "j", after=3) == [(4, ("m", 3, logged[3])), (5, ("m", 4, logged[4]))]
    assert run_jobs(j, inbox) == list(enumerate(logged))


def test_other_names_or_values_go_in_as_entries_and_become_the_schema_later(tmp_path):
    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=inbox)
    calls = [
        (0, {"loss": 0.5}),
        (1, {"loss": 0.25, "count": 3}),  # an int: kept an int, so an entry record
        (2, {"map": 0.1}),  # other names while records are pending: an entry record
        (3, {"loss": 0.125}),
    ]
    for epoch, metrics in calls:
        j.append_metrics(epoch, metrics)
    assert replay(tmp_path / "j", after=0) == [
        (seq + 1, ("m", epoch, metrics)) for seq, (epoch, metrics) in enumerate(calls)
    ]
    assert run_jobs(j, inbox) == calls
    assert isinstance(calls[1][1]["count"], int)
    j.consumed(4)
    j.append_metrics(4, {"map": 0.2})
    # The write after the outbox caught up started over with the newer names as the
    # schema: this epoch is a values record (three words and 14 bytes of values).
    assert j._names == ("map",) and j._at - j._base == 5
    assert replay(tmp_path / "j", after=4) == [(5, ("m", 4, {"map": 0.2}))]


def test_names_in_another_order_do_not_take_the_values_path(tmp_path):
    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=inbox)
    j.append_metrics(0, {"a": 1.0, "b": 2.0})
    j.append_metrics(1, {"b": 3.0, "a": 4.0})
    assert [list(m) for _, (_, _, m) in replay(tmp_path / "j", after=0)] == [
        ["a", "b"],
        ["b", "a"],
    ]
    assert run_jobs(j, inbox) == [(0, {"a": 1.0, "b": 2.0}), (1, {"b": 3.0, "a": 4.0})]


def test_a_values_record_killed_before_its_first_word_is_not_replayed(tmp_path):
    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=inbox)
    j.append_metrics(0, {"loss": 0.5})
    second = j._at
    j.append_metrics(1, {"loss": 0.25})
    j.close()
    data = bytearray((tmp_path / "j").read_bytes())
    data[second * 8 : second * 8 + 8] = bytes(8)  # every word in but the commit
    (tmp_path / "j").write_bytes(bytes(data))
    assert replay(tmp_path / "j", after=0) == [(1, ("m", 0, {"loss": 0.5}))]


def test_a_torn_values_record_ends_the_replay(tmp_path):
    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=inbox)
    for epoch in range(3):
        j.append_metrics(epoch, {"loss": 0.5, "map": 0.25})
    third = j._at - 6  # two words, three of values, the repeated seq
    j.close()
    data = bytearray((tmp_path / "j").read_bytes())
    # A power cut that wrote the record's first page but not the one with its tail.
    data[(third + 5) * 8 : (third + 6) * 8] = struct.pack("<Q", 77)
    (tmp_path / "j").write_bytes(bytes(data))
    assert [seq for seq, _ in replay(tmp_path / "j", after=0)] == [1, 2]


def test_values_records_grow_the_journal_and_starting_over_keeps_the_schema(tmp_path):
    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=inbox)
    metrics = {f"metric/{i}": float(i) for i in range(100)}
    n = INITIAL_SIZE // (103 * 8) * 2
    for epoch in range(n):
        j.append_metrics(epoch, metrics)
    assert len(run_jobs(j, inbox)) == n
    assert [seq for seq, _ in replay(tmp_path / "j", after=n - 2)] == [n - 1, n]
    j.consumed(n)
    j.append_metrics(n, metrics)
    assert replay(tmp_path / "j", after=0) == [(n + 1, ("m", n, metrics))]


def test_a_version_1_journal_still_replays(tmp_path):
    import marshal
    import zlib

    records = b""
    for seq, entry in ((1, ("m", 0, {"loss": 0.5})), (2, ("m", 1, {"loss": 0.25}))):
        body = marshal.dumps(entry)
        records += struct.pack("<IIQ", len(body), zlib.crc32(body), seq) + body
    (tmp_path / "j").write_bytes(struct.pack("<4sI", MAGIC, 1) + records + bytes(4))
    assert replay(tmp_path / "j", after=1) == [(2, ("m", 1, {"loss": 0.25}))]


def test_a_version_2_journal_with_raw_double_values_still_replays(tmp_path):
    import marshal
    import zlib

    schema = marshal.dumps(("k", ("loss", "map")), 2)
    records = struct.pack("<IIQ", len(schema), zlib.crc32(schema), 0) + schema
    records += bytes(-len(schema) % 8)
    for seq, epoch, values in ((1, 0, (0.5, 0.1)), (2, 1, (0.25, 0.2))):
        records += struct.pack("<IIQ2dQ", 2 | VALUES, epoch, seq, *values, seq)
    (tmp_path / "j").write_bytes(struct.pack("<4sI", MAGIC, 2) + records + bytes(8))
    assert replay(tmp_path / "j", after=0) == [
        (1, ("m", 0, {"loss": 0.5, "map": 0.1})),
        (2, ("m", 1, {"loss": 0.25, "map": 0.2})),
    ]


def test_a_float_subclass_goes_in_as_values_and_comes_back_a_float(tmp_path):
    class Scalar(float):  # as numpy's float64 is
        pass

    inbox = Inbox()
    j = inbox.open_journal(Journal, tmp_path / "j", seq=0)
    inbox.put_metrics(0, {"loss": 0.5})
    at = j._at
    inbox.put_metrics(1, {"loss": Scalar(0.25)})
    assert j._at - at == 5  # a values record: three words, and 14 bytes of values in two
    with pytest.raises(TypeError):
        inbox.put_metrics(2, {"loss": object()})
    assert [seq for seq, _ in replay(tmp_path / "j", after=0)] == [1, 2]
    taken = [(seq, e.metrics) for seq, e, *_ in inbox.take_all()]
    assert taken == [(1, {"loss": 0.5}), (2, {"loss": 0.25})]
    assert type(taken[1][1]["loss"]) is float


names = st.sampled_from(["loss", "map", "lr", "box"])
metric_values = st.one_of(
    st.floats(allow_nan=False), st.integers(-(2**40), 2**40), st.text(max_size=3)
)
calls = st.lists(
    st.tuples(
        st.integers(-2, 2**33),
        st.dictionaries(names, metric_values, max_size=4),
        st.booleans(),  # the worker catches up after this call
    ),
    max_size=30,
)


@pytest.mark.parametrize("_", [None])
@settings(max_examples=150, deadline=None)
@given(script=calls)
def test_whatever_is_logged_the_jobs_and_the_replay_give_it_back(tmp_path_factory, _, script):
    path = tmp_path_factory.mktemp("j") / "j"
    inbox = collections.deque()
    j = Journal(path, seq=0, inbox=inbox)
    delivered, expected, consumed = [], [], 0
    for epoch, metrics, catch_up in script:
        j.append_metrics(epoch, metrics)
        expected.append((epoch, metrics))
        if catch_up:
            delivered += run_jobs(j, inbox)
            consumed = j.seq
            j.consumed(consumed)
    pending = expected[len(delivered) :]
    assert [(e, m) for _, (_, e, m) in replay(path, after=consumed)] == pending
    delivered += run_jobs(j, inbox)
    assert delivered == expected
    for (_, got), (_, want) in zip(delivered, expected, strict=True):
        assert [type(v) for v in got.values()] == [type(v) for v in want.values()]
    j.close()


def test_jobs_run_after_close_read_what_was_written_not_the_next_session(tmp_path):
    inbox = collections.deque()
    j = Journal(tmp_path / "j", seq=0, inbox=inbox)
    j.append_metrics(0, {"loss": 0.5})
    j.append_metrics(1, {"loss": 0.25})
    j.close()
    j.consumed(2)  # a worker that outlived the session: nothing happens
    # A new session of the same model takes the file over before those jobs run.
    later = Journal(tmp_path / "j", seq=0, inbox=collections.deque())
    for epoch in range(2):
        later.append_metrics(epoch, {"loss": 99.0})
    assert run_jobs(j, inbox) == [(0, {"loss": 0.5}), (1, {"loss": 0.25})]
    later.close()


def test_a_finish_goes_in_with_its_held_link_and_an_older_entry_still_reads(tmp_path):
    stamp = FileStamp(10, 20, 30)
    event = FinishRequested("best.pt", 4, 0.5, stamp, 60.0, "/o/files/.held-1-2")
    journal = Journal(tmp_path / "j", seq=0, inbox=collections.deque())
    journal.append(event)
    journal.close()
    assert [entry for _, entry in replay(tmp_path / "j", after=0)] == [entry_of(event)]
    assert event_of(entry_of(event)) == event
    # An entry from before the held link was journaled has one field fewer.
    older = ("f", "best.pt", 4, 0.5, 10, 20, 30, 60.0)
    assert event_of(older) == FinishRequested("best.pt", 4, 0.5, stamp, 60.0)
