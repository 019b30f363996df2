"""Two machines launched with torchrun train exactly what one machine with two processes trains.

Both runs are ``python -m lit_lora fit --config configs/tiny.yaml --config
configs/strategies/ddp.yaml`` (DDP on gloo): two torchrun "nodes" of one process each
on 127.0.0.1, started together as the README's command starts them on two machines,
against Lightning's own launch of two processes on one node. Ranks, data and the
gradient all-reduce are the same in both, with dropout off, float32 and one thread
per process (the thread count changes a CPU kernel's summation order), so the
adapters after 2 optimizer steps must be bit-identical. Each "machine" has its own
model cache, as two machines would: the second one's random base is written by a
process that is rank 1.

``python -m lit_lora`` restarts itself with glibc heap settings (lit_lora.training.heap);
the restart keeps its process id, which torchrun watches, so it stays on here as it
would be on a cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.helpers.tiny import REPO, assert_same_adapter, tiny_args

TORCHRUN = Path(sys.executable).with_name("torchrun")
SHORT_RUN = (
    *("--config", "configs/strategies/ddp.yaml"),
    *("--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--model.lora.dropout", "0.0"),
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_torchrun_nodes_train_what_one_node_with_two_processes_trains(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    one_node = subprocess.run(
        [sys.executable, "-m", "lit_lora", *tiny_args("fit", tmp_path / "one", *SHORT_RUN)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one_node.returncode == 0, one_node.stderr[-6000:]

    port = str(free_port())
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    nodes = []
    try:
        for rank, log in enumerate(logs):
            command = [
                *(str(TORCHRUN), "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1"),
                *("--master_addr", "127.0.0.1", "--master_port", port, "-m", "lit_lora"),
                *tiny_args("fit", tmp_path / "two", *SHORT_RUN, "--trainer.num_nodes", "2", "--trainer.devices", "1"),
            ]
            node_env = {**env, "LIT_LORA_CACHE": str(tmp_path / f"cache{rank}")}
            with log.open("w") as output:
                nodes.append(subprocess.Popen(command, cwd=REPO, env=node_env, stdout=output, stderr=subprocess.STDOUT))
        statuses = [node.wait(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert statuses == [0, 0], logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1].read_text()
    assert_same_adapter(tmp_path / "two", tmp_path / "one")
