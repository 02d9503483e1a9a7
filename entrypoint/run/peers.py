"""What the ranks of a run agree on, and how a rank notices that another is gone.

Several nodes see the checkpoint dir through their own copy of a bucket (SkyPilot's `MOUNT_CACHED`: writes land in
the node's cache and reach the bucket, and the other nodes, later). So a rank never decides alone from what it
sees there: global rank 0 decides (the checkpoint to resume from, the prepared data to load) and tells the others
(`from_rank_0`), which then wait until their copy shows it (`wait_until_visible`); each rank's view is collected
where the decision needs all of them (`from_every_rank`: the files of a checkpoint, which checkpoints each sees).

`PeerWatch`: a rank whose node is lost leaves the others blocked in a collective (NCCL waits for its 30-minute
timeout; gloo notices a closed connection, not a frozen or unreachable node). Each rank bumps a counter in the
rendezvous store every few seconds; when a peer's stops, or the store stops answering, the others exit 1 within
`lost_after_s` (DPO_PEER_TIMEOUT_S). Not a recovery code: SkyPilot recovers a preempted node by itself (the cluster
is no longer UP), and recovers without limit when any node's exit code is in `recover_on_exit_codes`, so a crash on
one node must not make the others report one.

One process (no process group): every function here is the identity, and no watch starts.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from entrypoint.errors import EXIT_BUG, ConfigError

log = logging.getLogger("entrypoint.peers")

VISIBLE_WITHIN_S = 600.0  # how long a rank waits for what rank 0 wrote to reach its copy of the bucket


def _group() -> Any:
    """torch.distributed when a process group is up (several processes), else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def from_rank_0(value: Any) -> Any:
    """Rank 0's `value` on every rank (a picklable object)."""
    dist = _group()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Every rank reaches this point before any goes on."""
    dist = _group()
    if dist is not None:
        dist.barrier()


def from_every_rank(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    dist = _group()
    if dist is None:
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def any_rank(flag: bool, device: Any = "cpu") -> bool:
    """True on every rank when it is true on any: one all-reduce of one number (on `device`, the rank's GPU under
    NCCL)."""
    dist = _group()
    if dist is None:
        return flag
    import torch

    tensor = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def wait_until_visible(what: str, ready: Callable[[], bool], within_s: float = VISIBLE_WITHIN_S,
                       every_s: float = 0.5) -> None:
    """Wait until `ready()` (what rank 0 wrote has reached this rank's copy of the bucket), or stop with a message."""
    started = time.monotonic()
    logged = False
    while not ready():
        waited = time.monotonic() - started
        if waited > within_s:
            raise ConfigError(f"{what} was written by rank 0 but has not reached this node within {within_s:.0f} s; "
                              "the bucket mount does not sync between nodes (SkyPilot: MOUNT_CACHED or MOUNT)")
        if not logged and waited > 5 * every_s:
            log.info("waiting for %s to reach this node's copy of the bucket", what)
            logged = True
        time.sleep(every_s)


class PeerWatch:
    """A thread that ends this process (exit 1) when another rank stops answering: see the module's docstring.

    Rank r sets `dpo/alive/<r>` to a growing counter every `every_s`; a peer whose counter has not changed for
    `lost_after_s` (measured here: no clock is shared between nodes) is lost, unless it set `dpo/done/<r>` (it
    finished its part, e.g. every rank but 0 once evaluation is done)."""

    PREFIX = "dpo/peers/"

    def __init__(self, rank: int, world: int, store: Any, every_s: float = 2.0, lost_after_s: float = 30.0,
                 on_lost: Callable[[str], None] | None = None):
        self.rank, self.world, self.store = rank, world, store
        self.every_s, self.lost_after_s = every_s, lost_after_s
        self.on_lost = on_lost or _exit_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peer-watch", daemon=True)

    @classmethod
    def start_for_this_process(cls, lost_after_s: float) -> PeerWatch | None:
        """The watch for a rank started by torchrun / accelerate (their rendezvous store at MASTER_ADDR:MASTER_PORT);
        None for one process."""
        if _group() is None or "MASTER_ADDR" not in os.environ:
            return None
        import torch.distributed as dist

        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=timedelta(seconds=10), wait_for_workers=False)
        watch = cls(dist.get_rank(), dist.get_world_size(), store, every_s=min(2.0, lost_after_s / 5),
                    lost_after_s=lost_after_s)
        watch.start()
        return watch

    def _key(self, kind: str, rank: int) -> str:
        return f"{self.PREFIX}{kind}/{rank}"

    def start(self) -> None:
        self.store.set(self._key("alive", self.rank), "0")
        self._thread.start()

    def stop(self, done: bool = True) -> None:
        """Stop watching; `done`: this rank finished its part, and the others stop watching it. Waits for the thread:
        a process that exits while it is inside a store call aborts ("terminate called without an active
        exception", exit -6 instead of the job's code)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.every_s + 15)  # a store call times out after 10 s
        if not done:
            return
        try:
            self.store.set(self._key("done", self.rank), "1")
        except Exception:  # noqa: BLE001 - the store's host may have finished first
            pass

    def _counter(self, rank: int) -> bytes:
        key = self._key("alive", rank)
        return self.store.get(key) if self.store.check([key]) else b""  # not started yet: counts as unchanged

    def _run(self) -> None:
        beat, seen, store_failing_since = 0, {}, None
        peers = [r for r in range(self.world) if r != self.rank]
        while not self._stop.wait(self.every_s):
            now = time.monotonic()
            try:
                beat += 1
                self.store.set(self._key("alive", self.rank), str(beat))
                alive = [self._counter(r) for r in peers]
                done = {r for r in peers if self.store.check([self._key("done", r)])}
                store_failing_since = None
            except Exception as exc:  # noqa: BLE001 - the store lives on the main node's launcher
                store_failing_since = store_failing_since or now
                if now - store_failing_since > self.lost_after_s:
                    self.on_lost(f"the main node's rendezvous store has not answered for {self.lost_after_s:g} s "
                                 f"({type(exc).__name__}): the main node was lost")
                    return
                continue
            for peer, counter in zip(peers, alive, strict=True):
                if peer in done:
                    continue
                if seen.get(peer, (None,))[0] != counter:
                    seen[peer] = (counter, now)
                elif now - seen[peer][1] > self.lost_after_s:
                    self.on_lost(f"rank {peer} has not answered for {self.lost_after_s:g} s: its node was lost "
                                 "or hangs")
                    return


@contextmanager
def watched(lost_after_s: float) -> Iterator[None]:
    """A PeerWatch on this rank while the block runs (nothing for one process). Leaving it normally tells the others
    this rank is done; leaving it by an exception does not (this rank is about to go: they notice)."""
    watch = PeerWatch.start_for_this_process(lost_after_s)
    try:
        yield
    except BaseException:
        if watch is not None:
            watch.stop(done=False)
        raise
    if watch is not None:
        watch.stop()


def _exit_lost(reason: str) -> None:
    """Stop this process now: the main thread may be blocked in a collective that would wait for its timeout."""
    print(f"error: {reason}; stopping this rank (exit {EXIT_BUG}) so the job ends instead of waiting for the "
          "collective's timeout. A restart resumes from the newest complete checkpoint.", file=sys.stderr, flush=True)
    os._exit(EXIT_BUG)
