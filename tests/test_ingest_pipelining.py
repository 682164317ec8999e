"""Ingest keeps more than one batch committing at once (issue 14) and still acknowledges in arrival
order, each batch only after its own commit. A writer whose commits finish in the reverse order shows
both: with one transaction at a time (the code before) the second write never starts while the first
waits, and this test's wait for both times out."""
from __future__ import annotations

import asyncio

import orjson

from wulian.ingest.batch_writer import DeviceInfo, WriteResult
from wulian.ingest.mqtt_client import InMessage
from wulian.ingest.pipeline import IngestConfig, Ingestor


class FakeConsumer:
    def __init__(self, batches: list[list[InMessage]]) -> None:
        self.batches = list(batches)
        self.acks: list[int] = []
        self.backlog = 0

    async def get_batch(self, max_n: int, max_wait_s: float) -> list[InMessage]:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.Event().wait()

    def ack_many(self, messages) -> int:
        self.acks.extend(m.mid for m in messages)
        return len(messages)


class GatedWriter:
    """Each write waits for its gate; records which writes were entered and which committed."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Event] = []
        self.entered: list[int] = []
        self.committed: list[int] = []
        self.both_in = asyncio.Event()

    async def resolve_devices(self, wanted):
        return {d: DeviceInfo(1, r, s) for d, (r, s) in wanted.items()}

    async def resolve_metrics(self, names):
        return {n: 1 for n in names}

    async def write(self, rows, also=None) -> WriteResult:
        k = len(self.entered)
        self.entered.append(k)
        gate = self.gates[k]
        if len(self.entered) == 2:
            self.both_in.set()
        await gate.wait()
        self.committed.append(k)
        return WriteResult(staged=len(rows.readings), inserted=len(rows.readings))


def _msg(mid: int) -> InMessage:
    return InMessage(1, mid, 1, "wl/r1/grid/D1/telemetry", orjson.dumps({"ts": 1_700_000_000_000 + mid,
                                                                          "values": {"v": 1.0}}))


async def test_two_batches_commit_at_once_and_acks_stay_in_arrival_order():
    consumer = FakeConsumer([[_msg(1), _msg(2)], [_msg(3), _msg(4)]])
    writer = GatedWriter()
    writer.gates = [asyncio.Event(), asyncio.Event()]
    ing = Ingestor(consumer, writer, IngestConfig(batch_delay_s=0.0, max_inflight=2))
    run = asyncio.create_task(ing.run())
    try:
        await asyncio.wait_for(writer.both_in.wait(), 10)  # the second write started before the first ended
        writer.gates[1].set()  # the later batch commits first ...
        while writer.committed != [1]:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert consumer.acks == []  # ... but is not acknowledged before the earlier one commits
        writer.gates[0].set()
        while len(consumer.acks) < 4:
            await asyncio.sleep(0.01)
        assert consumer.acks == [1, 2, 3, 4]
        assert ing.stats.messages == 4 and ing.stats.batches == 2
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
