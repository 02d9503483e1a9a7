"""Several nodes on one bucket mount, on loopback: each "node" is a launcher with its own HOME, cache and copy of the
checkpoint dir (tests/bucket_mount.py: what one node writes reaches the others seconds later), as SkyPilot starts
them (SKYPILOT_NUM_NODES, SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS); and what the ranks agree on (run/peers.py): the
checkpoint to resume from, the files of a checkpoint, a SIGTERM that reached one rank, a rank that stops answering.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bucket_mount import LaggingMount

from conftest import ROOT, job_env
from entrypoint.errors import EXIT_PREEMPTED
from entrypoint.run import checkpoints
from entrypoint.run.outputs import sha256_file
from entrypoint.run.peers import PeerWatch

LAUNCH = [sys.executable, "-m", "entrypoint.launch"]
RUN = dict(model="tiny:llava-next", dataset="sample:rlaif-v", max_samples="40", per_device_train_batch_size="2",
           gradient_accumulation_steps="1", eval_fraction="0.2", eval_generations="0", learning_rate="5e-3",
           max_steps="40", save_steps="5", save_total_limit="1", logging_steps="5", allow_cpu="true")
LAG_S = 2.0


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


class Node:
    """One node's launcher, in its own process group (kill -9 takes the launcher and its workers, as losing the
    machine would); its log in a file."""

    def __init__(self, root: Path, rank: int, nodes: int, gpus: int, port: str, cache: Path, output: Path,
                 checkpoint_view: Path, **settings: str):
        home, node_cache = root / f"node{rank}" / "home", root / f"node{rank}" / "cache"
        home.mkdir(parents=True, exist_ok=True)
        if not node_cache.exists():
            shutil.copytree(cache, node_cache, symlinks=True)  # the tiny models, built once per session
        self.env = {**job_env(node_cache, output, **{**RUN, "checkpoint_dir": str(checkpoint_view), **settings}),
                    "HOME": str(home), "MASTER_PORT": port, "SKYPILOT_NUM_NODES": str(nodes),
                    "SKYPILOT_NODE_RANK": str(rank), "SKYPILOT_NODE_IPS": "127.0.0.1\n" * nodes,
                    "SKYPILOT_NUM_GPUS_PER_NODE": str(gpus)}
        self.log_path = root / f"node{rank}-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Node:
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(LAUNCH, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self

    def wait(self, timeout: float = 300) -> int:
        return self.process.wait(timeout=timeout)

    def signal(self, signum: int) -> None:
        """The launcher and its workers (torchrun starts each worker in a session of its own)."""
        for pid in [*_children(self.process.pid), self.process.pid]:
            os.kill(pid, signum)

    def lose(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait()

    @property
    def log(self) -> str:
        return self.log_path.read_text()


def _adapter(output: Path) -> str:
    return sha256_file(output / "adapter" / "adapter_model.safetensors")


def _wait(condition, node: Node, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert node.process.poll() is None, f"ended before {what}:\n{node.log[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_mount_shows_a_write_to_the_other_node_late(tmp_path):
    bucket, views = tmp_path / "bucket", [tmp_path / "a", tmp_path / "b"]
    (bucket / "old").mkdir(parents=True)
    (bucket / "old" / "x").write_text("there before")
    with LaggingMount(bucket, views, lag_s=0.5) as mount:
        assert (views[1] / "old" / "x").read_text() == "there before"  # a fresh mount lists the bucket at once
        (views[0] / "new").write_text("1")
        time.sleep(0.3)
        assert not (views[1] / "new").exists() and not (bucket / "new").exists()
        shutil.rmtree(views[0] / "old")
        mount.settle()
        assert (views[1] / "new").read_text() == "1" and not (views[1] / "old").exists()


@pytest.mark.slow
def test_two_nodes_on_a_lagging_bucket_train_as_one_node_and_a_lost_node_resumes_exactly(tmp_path, cache_dir):
    """1 node x 2 processes, then 2 nodes x 1 on a bucket each node sees 2 s late; node 1 lost (kill -9) mid-run,
    node 0 ends by itself; both restarted on fresh copies of the bucket: the same adapter, bit for bit."""
    reference = tmp_path / "one-node"
    one = Node(tmp_path / "one", 0, 1, 2, _free_port(), cache_dir, reference, reference / "checkpoints").start()
    assert one.wait() == 0, one.log[-4000:]

    bucket, output = tmp_path / "bucket", tmp_path / "two-nodes"
    views = [tmp_path / "view0", tmp_path / "view1"]
    port = _free_port()
    with LaggingMount(bucket, views, lag_s=LAG_S):
        nodes = [Node(tmp_path, rank, 2, 1, port, cache_dir, output, views[rank]).start() for rank in (0, 1)]
        marker = bucket / "checkpoint-10" / checkpoints.COMPLETE_MARKER  # reached the bucket: a restart resumes
        _wait(lambda: marker.exists() or (bucket / "checkpoint-15").is_dir(), nodes[0], "checkpoint 10 in the bucket")
        assert nodes[0].process.poll() is None, "finished before a node could be lost"
        nodes[1].lose()
        lost_at = time.monotonic()
        code = nodes[0].wait(timeout=90)
        ended_after = time.monotonic() - lost_at
    assert code not in (0, EXIT_PREEMPTED), nodes[0].log[-3000:]  # a lost node is not a preemption (run/peers.py)
    assert ended_after < 60, f"node 0 ended {ended_after:.0f} s after node 1 was lost"
    assert not (output / "manifest.json").exists()

    shutil.rmtree(views[0]), shutil.rmtree(views[1])  # new machines: their caches start from the bucket
    with LaggingMount(bucket, views, lag_s=LAG_S):
        nodes = [Node(tmp_path, rank, 2, 1, port, cache_dir, output, views[rank]).start() for rank in (0, 1)]
        codes = [node.wait() for node in nodes]
    assert codes == [0, 0], nodes[0].log[-3000:] + nodes[1].log[-3000:]
    assert "resuming from" in nodes[0].log and "rank 0 prepared it" in nodes[1].log
    assert _adapter(output) == _adapter(reference)
    assert _history(output) == _history(reference)  # every loss and evaluation on the way, resumed ones too


def _history(output: Path) -> list[dict]:
    """Each logged point's losses, rewards, log-probs and the like; not its timings, nor what the libraries count
    within one attempt only: TRL's tokens trained on, transformers' run-wide `train_loss` (the resumed attempt's
    losses over every step)."""
    timing = ("runtime", "per_second", "preparation_time", "num_tokens", "total_flos", "train_loss")
    return [{k: v for k, v in entry.items() if not any(word in k for word in timing)}
            for entry in json.loads((output / "metrics.json").read_text())["history"]]


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains_on_both_their_batches(tmp_path, cache_dir):
    """DDP averages the two ranks' gradients: 2 processes x 2 pairs a step train what 1 process x 4 pairs does (the
    same pairs: each rank takes every other batch of the same order), up to the order of float additions. Before
    the job wrapped the model itself (training/trainer.py, wrap_for_ranks), its evaluation at step 0 left DDP
    unwrapped and each rank trained alone: the adapter was rank 0's, from half the pairs."""
    from safetensors.torch import load_file

    settings = dict(max_steps="8", save_steps="100", lora_dropout="0", eval_fraction="0.2")
    two, one = tmp_path / "two", tmp_path / "one"
    node = Node(tmp_path / "n2", 0, 1, 2, _free_port(), cache_dir, two, two / "checkpoints", **settings).start()
    assert node.wait() == 0, node.log[-3000:]
    alone = Node(tmp_path / "n1", 0, 1, 1, _free_port(), cache_dir, one, one / "checkpoints",
                 per_device_train_batch_size="4", **settings).start()
    assert alone.wait() == 0, alone.log[-3000:]
    a, b = (load_file(output / "adapter" / "adapter_model.safetensors") for output in (two, one))
    init = 0.0  # lora_B starts at zero: its values are the updates themselves
    for name in a:
        if "lora_B" in name:
            scale = b[name].abs().max().item()
            assert scale > init and (a[name] - b[name]).abs().max().item() <= 1e-3 * scale, name


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, cache_dir):
    """The notice reaches one worker only: both save the same step and exit 75, and so does the launcher."""
    output = tmp_path / "run"
    node = Node(tmp_path, 0, 1, 2, _free_port(), cache_dir, output, output / "checkpoints",
                max_steps="100000", save_steps="100000", logging_steps="1").start()
    _wait(lambda: " step 3/" in node.log, node, "training")
    [worker] = [pid for pid in _children(node.process.pid) if _environ(pid).get("RANK") == "1"]
    os.kill(worker, signal.SIGTERM)
    assert node.wait(timeout=120) == EXIT_PREEMPTED, node.log[-4000:]
    saved = checkpoints.checkpoint_dirs(output / "checkpoints")
    assert len(saved) == 1 and checkpoints.is_complete(saved[0])
    assert "rng_state_1.pth" in checkpoints.files(saved[0])  # both ranks saved that step
    assert "SIGTERM reached another rank" in node.log


@pytest.mark.slow
def test_a_node_that_hangs_ends_the_other_within_the_peer_timeout(tmp_path, cache_dir):
    """A frozen node keeps its connections open: nothing fails, the collectives just wait (on NCCL, 30 minutes).
    The other node's watch ends it after DPO_PEER_TIMEOUT_S."""
    port, output = _free_port(), tmp_path / "run"
    nodes = [Node(tmp_path, rank, 2, 1, port, cache_dir, output, output / "checkpoints", max_steps="100000",
                  save_steps="100000", logging_steps="1", peer_timeout_s="5").start() for rank in (0, 1)]
    try:
        _wait(lambda: " step 3/" in nodes[0].log, nodes[0], "training")
        nodes[1].signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        code = nodes[0].wait(timeout=60)
        assert code == 1 and time.monotonic() - frozen_at < 30, nodes[0].log[-3000:]
        assert "rank 1 has not answered for 5 s" in nodes[0].log
    finally:
        for node in nodes:
            if node.process.poll() is None:
                node.lose()


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


class _Store:
    """The rendezvous store's interface, in memory."""

    def __init__(self):
        self.values: dict[str, bytes] = {}
        self.failing = False

    def set(self, key, value):
        if self.failing:
            raise ConnectionError("store gone")
        self.values[key] = value.encode()

    def get(self, key):
        return self.values[key]

    def check(self, keys):
        if self.failing:
            raise ConnectionError("store gone")
        return all(key in self.values for key in keys)


def _watch(store: _Store, rank: int, lost: list[str]) -> PeerWatch:
    return PeerWatch(rank, 2, store, every_s=0.05, lost_after_s=0.5, on_lost=lost.append)


def test_a_peer_whose_counter_stops_is_lost_and_one_that_is_done_is_not():
    store, lost = _Store(), []
    watch, peer = _watch(store, 0, lost), _watch(store, 1, [])
    watch.start(), peer.start()
    time.sleep(1.0)
    assert lost == []  # both beat
    peer.stop()  # rank 1 finished its part
    time.sleep(1.0)
    assert lost == []
    watch.stop()

    store, lost = _Store(), []
    watch = _watch(store, 0, lost)
    store.set(watch._key("alive", 1), "7")  # rank 1 beat once, then nothing
    watch.start()
    time.sleep(1.5)
    assert lost == ["rank 1 has not answered for 0.5 s: its node was lost or hangs"]


def test_a_store_that_stops_answering_means_the_main_node_was_lost():
    store, lost = _Store(), []
    watch, peer = _watch(store, 1, lost), _watch(store, 0, [])
    watch.start(), peer.start()
    time.sleep(0.3)
    store.failing = True
    time.sleep(1.5)
    assert len(lost) == 1 and "the main node was lost" in lost[0]


@pytest.mark.slow
def test_two_processes_share_a_rounds_sampling_and_draw_what_one_process_draws(tmp_path, cache_dir):
    """On-policy rounds on 2 ranks: each samples every other prompt, and rank 0 keeps them all; each prompt's own
    seed makes its samples those 1 process draws. Both ranks train each round on the kept pairs and agree at every
    collective (sampling, judging on rank 0, the held-out score), or this hangs."""
    settings = dict(rounds="2", max_steps="2", save_steps="100", max_samples="12", samples_per_prompt="2",
                    sample_max_new_tokens="4", mix_dataset_pairs="true", eval_generations="0", eval_fraction="0.2",
                    dataset="sample:vqa-rad")
    two, one = tmp_path / "two", tmp_path / "one"
    node = Node(tmp_path / "n2", 0, 1, 2, _free_port(), cache_dir, two, two / "checkpoints", **settings).start()
    assert node.wait() == 0, node.log[-3000:]
    alone = Node(tmp_path / "n1", 0, 1, 1, _free_port(), cache_dir, one, one / "checkpoints",
                 **{**settings, "rounds": "1"}).start()
    assert alone.wait() == 0, alone.log[-3000:]
    drawn = [(output / "checkpoints" / "rounds" / "1" / "drawn.jsonl").read_text() for output in (two, one)]
    assert drawn[0] == drawn[1] and len(drawn[0].splitlines()) == 10
    assert [r["round"] for r in json.loads((two / "metrics.json").read_text())["rounds"]] == [1, 2]
