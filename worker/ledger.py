"""The recall worker's offset and rebalance bookkeeping, without Kafka: what may be committed, where each
partition starts after a rebalance, which records to read again, which history partitions to restore or drop.

``RecallWorker`` calls it from the consumer's callbacks and its loop and does the Kafka calls itself
(commit, seek, committed); every decision is here, so it is unit-tested without a broker
(tests/unit/worker/test_ledger.py) and the integration tests cover the Kafka calls around it.

Partitions are anything hashable with ``topic`` and ``partition`` (kafka_io.TopicPartition in the worker).
Terms: an *offset* is always the next offset to read (Kafka's commit convention). A batch is *finished*
once its results and changelog were produced and flushed; only then are its offsets *due* for commit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


def _lowest(into: dict[Any, int], tp: Any, off: int) -> None:
    into[tp] = min(into.get(tp, off), off)


def _highest(into: dict[Any, int], tp: Any, off: int) -> None:
    into[tp] = max(into.get(tp, off), off)


@dataclass
class Ledger:
    """See the module docstring. ``clicks`` is the clicks topic: its partition numbers are the history's."""

    clicks: str
    generation: int = 0  # bumped by every revoke/lost/assign: a batch gathered before it is stale
    assigned: set[Any] = field(default_factory=set)
    assigning: bool = False  # revoked, not assigned yet (eager rebalancing)
    to_commit: dict[Any, int] = field(default_factory=dict)  # finished, not committed yet
    positions: dict[Any, int] = field(default_factory=dict)  # committed (consumer_lag counts from here)
    # published, not committed, and the partition revoked or lost meanwhile: see resume_after_loss
    unconfirmed: dict[Any, int] = field(default_factory=dict)
    pending_seek: dict[Any, int] = field(default_factory=dict)  # rewinds waiting for the assignment
    revoked_state: set[int] = field(default_factory=set)  # clicks partitions revoked, history kept for now
    pending_restore: set[int] = field(default_factory=set)  # clicks partitions whose history to restore
    changelog_carry: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # of dropped batches

    # -- batches and commits --------------------------------------------------------------------------
    def finish_batch(self, offsets: Mapping[Any, int]) -> None:
        """A batch's results were flushed: its offsets are due for commit."""
        for tp, off in offsets.items():
            _highest(self.to_commit, tp, off)

    def due(self) -> dict[Any, int]:
        """Take the offsets to commit now (the caller commits them, then calls committed or commit_failed)."""
        out, self.to_commit = self.to_commit, {}
        return out

    def committed(self, offsets: Mapping[Any, int]) -> None:
        self.positions.update(offsets)

    def commit_failed(self, offsets: Mapping[Any, int]) -> None:
        """The commit failed (e.g. rebalanced meanwhile): retry with the next commit where still ours; the new
        owner of the others redoes them (at-least-once)."""
        for tp, off in offsets.items():
            if tp in self.assigned:
                _highest(self.to_commit, tp, off)

    # -- rebalance (called from inside poll) -------------------------------------------------------------
    def revoking(self, revoked: Iterable[Any]) -> dict[Any, int]:
        """Finished offsets of partitions being revoked: commit them now, so that their next owner (maybe this
        member again) does not answer them twice. Then call revoked_commit_failed if that commit failed, and
        revoke."""
        gone = set(revoked)
        return {tp: off for tp, off in self.to_commit.items() if tp in gone}

    def revoked_commit_failed(self, offsets: Mapping[Any, int]) -> None:
        """Another owner answers them again; if they come back here, this member resumes after them."""
        for tp, off in offsets.items():
            _highest(self.unconfirmed, tp, off)

    def revoke(self, revoked: Iterable[Any]) -> None:
        """Eager rebalancing revokes everything and then assigns: the history of revoked clicks partitions is
        kept until the assignment says whether they come back (no member owns them in between)."""
        gone = set(revoked)
        self.generation += 1
        self.assigning = True
        self.revoked_state |= {tp.partition for tp in gone if tp.topic == self.clicks}
        self.assigned -= gone
        self.to_commit = {tp: off for tp, off in self.to_commit.items() if tp not in gone}
        self.positions = {tp: off for tp, off in self.positions.items() if tp not in gone}

    def lose(self, lost: Iterable[Any]) -> set[int]:
        """Evicted from the group: another member may have served these partitions meanwhile, so nothing local
        about them can be trusted. Returns the clicks partitions whose history the caller drops."""
        gone = set(lost)
        # what this member published but could not commit: resumed after, if the partitions come back (a
        # broker outage longer than the session timeout loses the assignment client-side, then hands it back)
        for tp, off in self.to_commit.items():
            if tp in gone:
                _highest(self.unconfirmed, tp, off)
        parts = {tp.partition for tp in gone if tp.topic == self.clicks}
        self.revoke(gone)
        self.revoked_state -= parts
        self.changelog_carry = [e for e in self.changelog_carry if e[0] not in parts]
        return parts

    def assign(
        self,
        assigned: Iterable[Any],
        held: set[int],
        committed: Callable[[list[Any]], Mapping[Any, int | None] | None],
    ) -> tuple[dict[Any, int], set[int], dict[Any, int]]:
        """New assignment. ``held``: clicks partitions whose history is in memory; ``committed`` asks the
        group's committed offsets (None when they are unavailable). Returns (start offsets for the
        consumer, clicks partitions whose history to drop, the starts that resume after offsets published
        before a loss); ``pending_restore`` says which histories to restore."""
        new = set(assigned)
        self.generation += 1
        self.assigning = False
        self.assigned |= new
        clicks = {tp.partition for tp in new if tp.topic == self.clicks}
        gone = self.revoked_state - clicks
        # what belonged to partitions now gone: their new owner answers and commits from the committed
        # offset; a carried (older) changelog entry published later would overwrite its newer one
        self.changelog_carry = [e for e in self.changelog_carry if e[0] not in gone]
        self.pending_restore -= gone
        self.revoked_state.clear()
        self.pending_restore |= clicks - (held - gone)
        resumed = self.resume_after_loss(new, committed)
        start = dict(resumed)
        for tp in new:  # seeks that waited for this assignment (see rewind): set with it
            if tp in self.pending_seek:
                start.setdefault(tp, self.pending_seek.pop(tp))
        return start, gone, resumed

    def resume_after_loss(
        self, assigned: set[Any], committed: Callable[[list[Any]], Mapping[Any, int | None] | None]
    ) -> dict[Any, int]:
        """Partitions lost (or revoked with a failed commit) and now back: start at the higher of the
        committed offset and what this member had published before. Everything below either was answered
        (by this member, or by one that owned the partition meanwhile and committed further), so nothing is
        lost and nothing that this member published is answered again."""
        back = {tp: off for tp, off in self.unconfirmed.items() if tp in assigned}
        self.unconfirmed = {}
        if not back:
            return {}
        got = committed(list(back))
        if got is None:  # unavailable: start from the committed offsets (duplicates, never a loss)
            return {}
        start = {}
        for tp, off in back.items():
            c = got.get(tp)
            if c is None or off > c:
                start[tp] = off
                _highest(self.to_commit, tp, off)
                self.pending_seek.pop(tp, None)  # a rewind below it would re-read what was published
        return start

    # -- reading again ---------------------------------------------------------------------------------
    def drop_inflight(self, batches: Iterable[tuple[Mapping[Any, int], list[tuple[int, bytes, bytes]]]],
                      held: set[int]) -> dict[Any, int]:
        """After a rebalance every batch in flight (its lowest offset per partition, its changelog entries) is
        dropped unpublished. Returns the lowest offset per partition, to read them again. Their clicks are
        already in the history, so the replay skips them (offset check) and never writes their changelog
        entries: those are carried to the next published batch, for the partitions still held."""
        low: dict[Any, int] = {}
        for first, changelog in batches:
            self.changelog_carry += [e for e in changelog if e[0] in held]
            for tp, off in first.items():
                _lowest(low, tp, off)
        return low

    def rewind(self, offsets: Iterable[tuple[Any, int]]) -> dict[Any, int]:
        """Where to seek the partitions that are ours back to: the lowest of ``offsets`` per partition (and
        of earlier rewinds still waiting). The client may revoke in one poll and assign in a later one:
        between the two nothing is assigned, so those seeks wait in ``pending_seek`` until the assignment
        says which partitions stayed (the others' new owners read them from the committed offset)."""
        want = dict(self.pending_seek)
        for tp, off in offsets:
            _lowest(want, tp, off)
        self.pending_seek = {}
        now = {}
        for tp, off in want.items():
            if tp in self.assigned:
                now[tp] = off
            elif self.assigning:
                self.pending_seek[tp] = off
        return now

    def take_changelog_carry(self) -> list[tuple[int, bytes, bytes]]:
        carry, self.changelog_carry = self.changelog_carry, []
        return carry
