import asyncio
import multiprocessing as mp

from liu.events import TRADE, Stop
from liu.transport import BATCH, CONTROL, ChannelReader, ChannelWriter


async def test_batches_and_controls_arrive_in_order_through_a_full_pipe():
    r, w = mp.Pipe(duplex=False)
    writer = ChannelWriter(w)
    got: list = []
    done = asyncio.Event()

    def on_frame(kind, payload):
        got.append((kind, payload))
        if kind == CONTROL:
            done.set()

    reader = ChannelReader(r, on_frame, lambda: None)
    # 40 MB of batches: far more than the pipe holds, so the writer must keep a backlog.
    sent = 0
    for b in range(400):
        batch = [(TRADE, f"S{i % 50}", b * 10_000 + i, 100.0 + i, 1.0, 0) for i in range(2000)]
        writer.send_batch(batch)
        sent += len(batch)
    writer.send_control(Stop("done"))
    assert writer.backlog_bytes > 0  # nothing blocked; the rest waits in the backlog
    reader.resume()
    await asyncio.wait_for(asyncio.gather(done.wait(), writer.drain()), 30)
    batches = [p for k, p in got if k == BATCH]
    assert sum(len(b) for b in batches) == sent
    ts = [ev[2] for b in batches for ev in b]
    assert ts == sorted(ts)
    assert got[-1] == (CONTROL, Stop("done"))
    writer.close()
    reader.close()


async def test_reader_reports_eof_when_writer_closes():
    r, w = mp.Pipe(duplex=False)
    eof = asyncio.Event()
    reader = ChannelReader(r, lambda k, p: None, eof.set)
    reader.resume()
    ChannelWriter(w).close()
    await asyncio.wait_for(eof.wait(), 5)
