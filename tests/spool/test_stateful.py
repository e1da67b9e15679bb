"""Model-based test: random sequences of operations against a simple in-memory model."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from spool import Batch, Spool


@dataclass
class ModelBatch:
    """What the model believes about one batch key."""

    first: int  # first id of the batch's range (never changes for a key)
    ids: list[int]
    owner: Optional[str]  # None once released
    generation: int  # which Spool instance claimed it (dead_letter needs "mine")


@dataclass
class Model:
    """Live rows, batches and dead letters, plus the highest id ever assigned."""

    live: dict[int, bytes] = field(default_factory=dict)
    batches: dict[str, ModelBatch] = field(default_factory=dict)
    dead: dict[int, bytes] = field(default_factory=dict)
    max_id: int = 0

    def batched(self) -> set[int]:
        return {i for b in self.batches.values() for i in b.ids}

    def holder(self, batch: Batch) -> Optional[ModelBatch]:
        mb = self.batches.get(batch.key)
        return mb if mb is not None and mb.owner == batch.owner else None


class SpoolMachine(RuleBasedStateMachine):
    """Drives a real Spool and the Model side by side and compares every answer."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="spool-model-"))
        self.spool = Spool(self.dir / "m.db")
        self.model = Model()
        self.handed: list[Batch] = []  # every batch ever returned (current and stale)
        self.generation = 0

    def teardown(self) -> None:
        self.spool.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(data=st.binary(max_size=20) | st.text(max_size=5))
    def append(self, data: Union[bytes, str]) -> None:
        new_id = self.spool.append(data)
        assert new_id > self.model.max_id
        self.model.max_id = new_id
        self.model.live[new_id] = data.encode() if isinstance(data, str) else data

    @rule(n=st.integers(1, 5), cap=st.none() | st.integers(1, 40))
    def claim(self, n: int, cap: Optional[int]) -> None:
        got = self.spool.claim(n, max_bytes=cap)
        expected_key, expected_ids = self._expected_claim(n, cap)
        if not expected_ids:
            assert got is None
            return
        assert got is not None
        assert list(got.ids) == expected_ids
        assert [r.data for r in got.records] == [self.model.live[i] for i in expected_ids]
        if expected_key is not None:
            assert got.key == expected_key
        self.model.batches[got.key] = ModelBatch(
            expected_ids[0] if expected_key is None else self.model.batches[got.key].first,
            expected_ids,
            got.owner,
            self.generation,
        )
        self.handed.append(got)

    def _expected_claim(self, n: int, cap: Optional[int]) -> tuple[Optional[str], list[int]]:
        released = [(mb.first, key) for key, mb in self.model.batches.items() if mb.owner is None]
        for _, key in sorted(released):
            if self.model.batches[key].ids:
                return key, sorted(self.model.batches[key].ids)
            del self.model.batches[key]  # husk: every row was dead-lettered
        taken = self.model.batched()
        free = sorted(i for i in self.model.live if i not in taken)[:n]
        if cap is not None and free:
            total, keep = 0, list[int]()
            for i in free:
                total += len(self.model.live[i])
                if total > cap and keep:
                    break
                keep.append(i)
                if total > cap:
                    break
            free = keep
        return None, free

    @precondition(lambda self: self.handed)
    @rule(pick=st.integers(0, 10**6))
    def ack(self, pick: int) -> None:
        batch = self.handed[pick % len(self.handed)]
        mb = self.model.holder(batch)
        expected = 0 if mb is None else len(mb.ids)
        assert self.spool.ack(batch) == expected
        if mb is not None:
            for i in mb.ids:
                del self.model.live[i]
            del self.model.batches[batch.key]

    @precondition(lambda self: self.handed)
    @rule(pick=st.integers(0, 10**6))
    def release(self, pick: int) -> None:
        batch = self.handed[pick % len(self.handed)]
        self.spool.release(batch)
        mb = self.model.holder(batch)
        if mb is not None:
            mb.owner = None

    @precondition(lambda self: self.handed)
    @rule(pick=st.integers(0, 10**6))
    def renew(self, pick: int) -> None:
        batch = self.handed[pick % len(self.handed)]
        assert self.spool.renew(batch) is (self.model.holder(batch) is not None)

    @precondition(lambda self: any(len(b) >= 2 for b in self.handed))
    @rule(pick=st.integers(0, 10**6))
    def split(self, pick: int) -> None:
        candidates = [b for b in self.handed if len(b) >= 2]
        batch = candidates[pick % len(candidates)]
        mb = self.model.holder(batch)
        a, b = self.spool.split(batch)
        assert a.records + b.records == batch.records and a.owner == b.owner == batch.owner
        self.handed += [a, b]
        if mb is None:
            return
        cut = b.records[0].id
        del self.model.batches[batch.key]
        self.model.batches[a.key] = ModelBatch(
            mb.first, [i for i in mb.ids if i < cut], batch.owner, mb.generation
        )
        self.model.batches[b.key] = ModelBatch(
            cut, [i for i in mb.ids if i >= cut], batch.owner, mb.generation
        )

    @precondition(lambda self: self.handed)
    @rule(pick=st.integers(0, 10**6), mask=st.integers(0, 31))
    def dead_letter(self, pick: int, mask: int) -> None:
        batch = self.handed[pick % len(self.handed)]
        chosen = [r for k, r in enumerate(batch.records) if mask >> (k % 5) & 1]
        mine = {
            i
            for mb in self.model.batches.values()
            if mb.owner is not None and mb.generation == self.generation
            for i in mb.ids
        }
        moved = [r.id for r in chosen if r.id in mine]
        assert self.spool.dead_letter(chosen, "reason") == len(moved)
        for i in moved:
            self.model.dead[i] = self.model.live.pop(i)
            for mb in self.model.batches.values():
                if i in mb.ids:
                    mb.ids.remove(i)

    @rule(everything=st.booleans(), mask=st.integers(0, 7))
    def requeue_dead(self, everything: bool, mask: int) -> None:
        dead = sorted(self.model.dead)
        wanted = dead if everything else [i for k, i in enumerate(dead) if mask >> (k % 3) & 1]
        assert self.spool.requeue_dead(None if everything else wanted) == len(wanted)
        for i in wanted:
            self.model.max_id += 1
            self.model.live[self.model.max_id] = self.model.dead.pop(i)

    @rule(everything=st.booleans())
    def purge_dead(self, everything: bool) -> None:
        wanted = sorted(self.model.dead)[: None if everything else 1]
        assert self.spool.purge_dead(None if everything else wanted) == len(wanted)
        for i in wanted:
            del self.model.dead[i]

    @rule()
    def reopen(self) -> None:
        self.spool.close()
        self.spool = Spool(self.dir / "m.db")
        self.generation += 1

    @invariant()
    def counters_match(self) -> None:
        stats = self.spool.stats()
        leased = sum(len(mb.ids) for mb in self.model.batches.values() if mb.owner is not None)
        assert stats.leased == leased
        assert stats.pending == len(self.model.live) - leased
        assert stats.dead == len(self.model.dead)
        assert stats.total_bytes == sum(map(len, self.model.live.values())) + sum(
            map(len, self.model.dead.values())
        )
        assert self.spool.last_id() == self.model.max_id
        assert self.spool.pending_through(self.model.max_id) == len(self.model.live)
        assert sorted(d.id for d in self.spool.dead_letters()) == sorted(self.model.dead)


SpoolMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_spool_matches_model = pytest.mark.timeout(120)(SpoolMachine.TestCase)
