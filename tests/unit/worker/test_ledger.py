"""worker/ledger.py: the recall worker's offset and rebalance decisions, without a broker."""

from __future__ import annotations

from worker.kafka_io import TopicPartition as TP
from worker.ledger import Ledger

C0, C1, R0, R1 = TP("clicks", 0), TP("clicks", 1), TP("req", 0), TP("req", 1)


def _ledger(*assigned: TP) -> Ledger:
    led = Ledger("clicks")
    led.assign(assigned, held=set(), committed=lambda _tps: {})
    led.pending_restore.clear()  # as if restored
    return led


def test_finished_batches_are_due_once_at_their_highest_offset() -> None:
    led = _ledger(C0, R0)
    led.finish_batch({C0: 5, R0: 3})
    led.finish_batch({C0: 4, R0: 9})  # an older offset never moves a due commit back
    assert led.due() == {C0: 5, R0: 9} and led.due() == {}
    led.committed({C0: 5, R0: 9})
    assert led.positions == {C0: 5, R0: 9}


def test_a_failed_commit_is_retried_only_for_partitions_still_ours() -> None:
    led = _ledger(C0, R0, C1)
    led.finish_batch({C0: 5, C1: 7})
    offsets = led.due()
    led.revoke([C1])
    led.commit_failed(offsets)
    assert led.to_commit == {C0: 5}


def test_revoke_hands_back_what_to_commit_and_forgets_the_partition() -> None:
    led = _ledger(C0, C1, R0, R1)
    led.finish_batch({C0: 5, C1: 7, R1: 2})
    assert led.revoking([C1, R1]) == {C1: 7, R1: 2}
    gen = led.generation
    led.revoke([C1, R1])
    assert led.generation > gen and led.assigning and led.assigned == {C0, R0}
    assert led.to_commit == {C0: 5} and led.revoked_state == {1}


def test_assign_keeps_the_history_of_partitions_that_came_back_and_drops_the_others() -> None:
    led = _ledger(C0, C1, R0, R1)
    led.revoke([C0, C1, R0, R1])  # eager: everything revoked, then a new assignment
    start, gone, resumed = led.assign([C1, R1], held={0, 1}, committed=lambda _tps: {})
    assert gone == {0} and start == {} and resumed == {}
    assert led.pending_restore == set()  # partition 1's history is still in memory
    start, gone, _ = led.assign([C0, R0], held={1}, committed=lambda _tps: {})
    assert gone == set() and led.pending_restore == {0}  # a new partition: restore its history


def test_a_revoke_whose_commit_failed_resumes_after_what_was_published_if_it_comes_back() -> None:
    led = _ledger(C0, R0)
    led.finish_batch({R0: 10})
    done = led.revoking([C0, R0])
    led.revoked_commit_failed(done)
    led.revoke([C0, R0])
    start, _gone, resumed = led.assign([C0, R0], held={0}, committed=lambda tps: dict.fromkeys(tps, 6))
    assert start == resumed == {R0: 10} and led.to_commit == {R0: 10}


def test_resume_keeps_the_committed_offset_when_another_member_went_further() -> None:
    led = _ledger(C0, R0)
    led.finish_batch({R0: 10})
    led.lose([C0, R0])
    start, _gone, resumed = led.assign([C0, R0], held=set(), committed=lambda tps: dict.fromkeys(tps, 15))
    assert start == resumed == {}


def test_resume_without_committed_offsets_starts_from_the_committed_ones() -> None:
    led = _ledger(C0, R0)
    led.finish_batch({R0: 10})
    led.lose([C0, R0])
    start, _gone, resumed = led.assign([C0, R0], held=set(), committed=lambda _tps: None)
    assert start == resumed == {}


def test_lost_partitions_drop_history_and_carried_changelog() -> None:
    led = _ledger(C0, C1, R0, R1)
    led.changelog_carry = [(0, b"u1", b"h1"), (1, b"u2", b"h2")]
    assert led.lose([C1, R1]) == {1}
    assert led.changelog_carry == [(0, b"u1", b"h1")] and led.revoked_state == set()
    assert led.assigned == {C0, R0}


def test_dropped_batches_are_read_again_from_their_lowest_offsets_and_their_changelog_carried() -> None:
    led = _ledger(C0, C1, R0, R1)
    low = led.drop_inflight(
        [({C0: 4, R0: 8}, [(0, b"u1", b"a")]), ({C0: 6, R1: 2}, [(1, b"u2", b"b")])], held={0},
    )
    assert low == {C0: 4, R0: 8, R1: 2}
    assert led.take_changelog_carry() == [(0, b"u1", b"a")] and led.changelog_carry == []


def test_rewind_seeks_now_what_is_ours_and_waits_for_the_assignment_otherwise() -> None:
    led = _ledger(C0, R0)
    assert led.rewind([(C0, 9), (C0, 4), (R0, 3)]) == {C0: 4, R0: 3}
    led.revoke([C0, R0])  # between revoke and assign: nothing is ours, the seeks wait
    assert led.rewind([(C0, 2), (R0, 7)]) == {} and led.pending_seek == {C0: 2, R0: 7}
    start, _gone, _ = led.assign([C0], held={0}, committed=lambda _tps: {})
    assert start == {C0: 2} and led.pending_seek == {R0: 7}  # R0 went to another member
    assert led.rewind([]) == {} and led.pending_seek == {}  # no longer ours nor assigning: forgotten


def test_a_resumed_partition_drops_a_rewind_below_what_was_published() -> None:
    led = _ledger(C0, R0)
    led.finish_batch({R0: 10})
    led.lose([C0, R0])
    led.rewind([(R0, 3)])
    start, _gone, _ = led.assign([C0, R0], held=set(), committed=lambda tps: dict.fromkeys(tps, 5))
    assert start == {R0: 10}
