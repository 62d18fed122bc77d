"""Two real nodes: each runs the entry script with 2 CPU processes in its own network namespace, joined to the other
by a veth pair (tests/netns_support.py), so gloo talks over that link only, as between two machines.

One module-scoped run set is shared by the assertions (the 4-process reference on one node, the 2021-style command
preempted on node 1 and resumed, torchrun --nnodes 2, lincls.py on one and two nodes). Equality with the
reference is exact: gloo reduces in the same order for the same world size and ranks whatever the transport, and
CLSA_TRACE_DIR with tests/trace_hooks on PYTHONPATH (its sitecustomize.py wraps library functions in every process)
records what every process computed.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import signal
import time

import pytest
import torch
from conftest import REPO, free_port, read_until, run_script, write_image_folder
from netns_support import TwoNodes, unavailable_reason

SMALL = ["--arch", "resnet18", "--nmb_crops", "1", "1", "--size_crops", "32", "16", "--min_scale_crops", "0.2",
         "0.086", "--max_scale_crops", "1.0", "0.429", "--pick_strong", "1", "--pick_weak", "0", "--print_freq", "1",
         "--moco_k", "16", "--workers", "0", "--seed", "3"]
N = 2  # images per process: --batch_size 8 on one node of 4 processes, --batch_size 4 per node on two nodes
LINCLS = ["lincls.py", "-a", "resnet18", "-j", "0", "--train-crop", "32", "--val-resize", "32", "--val-crop", "32",
          "-p", "1", "--lr", "0.1", "--epochs", "1", "--seed", "3"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
TRACE_HOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trace_hooks")
LOST = "error: lost contact with a peer process"
_ports = itertools.count(29610)


@pytest.fixture(scope="module")
def nodes():
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"two-node tests skipped: {reason}")
    harness = TwoNodes()
    try:
        harness.open()
    except OSError as err:
        pytest.skip(f"two-node tests skipped: cannot make network namespaces here ({err})")
    try:
        yield harness
    finally:
        harness.close()
    assert harness.leftovers() == [], "namespaces, links or processes left behind"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("two_nodes_data"))
    write_image_folder(root, classes=2, per_class=16, size=(32, 32))  # 32 images: 4 iterations of 8
    write_image_folder(root, classes=2, per_class=7, size=(32, 32), split="val", seed=1)  # 14: shards of 4,4,3,3
    return root


def _start(nodes: TwoNodes, argv_of, env: dict) -> list:
    """Start argv_of(node) on both nodes."""
    return [nodes.popen(node, argv_of(node), env, REPO) for node in (0, 1)]


def _node_command(nodes: TwoNodes, node: int, port: int, *flags: str) -> list[str]:
    """The 2021 two-node command: --world_size 2 (nodes) --rank <node>, 2 CPU processes per node."""
    return ["main_clsa.py", *flags, "--batch_size", "4", "--cpu_procs", "2", "--world_size", "2", "--rank",
            str(node), "--dist_url", f"tcp://{nodes.addresses[0]}:{port}"]


def _finish(procs, timeout: float = 240, seen: str = "") -> tuple[list[int], list[str]]:
    """Wait for both nodes: (exit codes, outputs); `seen`: node 0's output read so far."""
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [p.returncode for p in procs], [seen + outs[0], outs[1]]


def _traces(folder: str) -> dict[int, list[dict]]:
    out = {}
    for path in glob.glob(os.path.join(folder, "rank*.jsonl")):
        with open(path) as f:
            out[int(re.search(r"rank(\d+)", path).group(1))] = [json.loads(line) for line in f]
    return out


def _load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(nodes, data, tmp_path_factory):
    """Every run the equality tests compare, once."""
    root = str(tmp_path_factory.mktemp("two_nodes_runs"))
    common = ["--data", data, *SMALL, "--epochs", "1"]

    def env(name: str) -> dict:
        return dict(ENV, **trace_env(name))

    def trace_env(name: str) -> dict:  # for run_script, which adds os.environ itself
        return {"CLSA_TRACE_DIR": os.path.join(root, name), "PYTHONPATH": TRACE_HOOKS}

    # Reference: one node, 4 processes, the same seed and data.
    ref = run_script(["main_clsa.py", *common, "--batch_size", "8", "--cpu_procs", "4", "--run_dir",
                      f"{root}/ref", "--dist_url", f"tcp://127.0.0.1:{free_port()}"], env=trace_env("ref_trace"))
    assert ref.returncode == 0, ref.stdout + ref.stderr

    # The 2021 command on two nodes, preempted: SIGTERM reaches node 1 only (all its processes, as SLURM signals a
    # job step), then resumed. Stopped + resumed must compute what the one-node run did (no separate uninterrupted
    # two-node run: each process start costs seconds of imports, and these two cover every iteration).
    port = next(_ports)
    flags = [*common, "--resume", "auto", "--run_dir", f"{root}/pre"]
    procs = _start(nodes, lambda n: _node_command(nodes, n, port, *flags), env("pre_trace"))
    seen = read_until(procs[0], r"Epoch: \[0\]\[\s*0/4\]", timeout=180)
    nodes.kill(1, signal.SIGTERM)
    stopped = _finish(procs, seen=seen)
    files_at_stop = sorted(os.listdir(f"{root}/pre"))
    partial = _load(f"{root}/pre/checkpoint_last.pth.tar")
    port = next(_ports)
    procs = _start(nodes, lambda n: _node_command(nodes, n, port, *flags), env("pre_resumed_trace"))
    resumed = _finish(procs)

    # torchrun --nnodes 2 with the c10d rendezvous at node 0. Node 0's address is on a secondary interface, so
    # is_host says which agent hosts the store and --local_addr which address to advertise.
    port = next(_ports)
    procs = _start(nodes, lambda n: [
        "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "2", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", f"{nodes.addresses[0]}:{port}", "--rdzv_id", "clsa2n", "--rdzv_conf",
        f"is_host={int(n == 0)}", "--local_addr", nodes.addresses[n], "main_clsa.py", "--dist_url", "env://",
        *common, "--batch_size", "4", "--run_dir", f"{root}/torchrun"], env("torchrun_trace"))
    torchrun = _finish(procs)

    # lincls.py on the reference's encoder: one node of 4 processes, then two nodes of 2.
    lin = [*LINCLS, "--data", data, "--pretrained", f"{root}/ref/checkpoint_last.pth.tar"]
    lin_ref = run_script([*lin, "-b", "8", "--cpu-procs", "4", "--dist-url", f"tcp://127.0.0.1:{free_port()}",
                          "--save_path", f"{root}/lin_ref"], env=trace_env("lin_ref_trace"))
    assert lin_ref.returncode == 0, lin_ref.stdout + lin_ref.stderr
    port = next(_ports)
    procs = _start(nodes, lambda n: [*lin, "-b", "4", "--cpu-procs", "2", "--world-size", "2", "--rank", str(n),
                                     "--dist-url", f"tcp://{nodes.addresses[0]}:{port}", "--save_path",
                                     f"{root}/lin_two"], env("lin_two_trace"))
    lin_two = _finish(procs)
    return {"root": root, "ref": ref, "stopped": stopped, "files_at_stop": files_at_stop,
            "partial": partial, "resumed": resumed, "torchrun": torchrun, "lin_ref": lin_ref, "lin_two": lin_two}


def _steps(trace: list[dict]) -> list[dict]:
    return [r for r in trace if r["kind"] == "step"]


def test_2021_command_on_two_nodes_equals_one_node(runs):
    """Every process's losses, shuffle-BN permutations, gathered inputs and positives, then the weights, BN
    statistics, queue and momentum buffers: bit for bit those of one node with 4 processes (the two-node run is
    the preempted one below, its records before the stop followed by those after the resume)."""
    root = runs["root"]
    stop_outs, (codes, outs) = runs["stopped"][1], runs["resumed"]
    assert codes == [0, 0], outs
    for out in (stop_outs, outs):
        assert "4 process(es) on cpu, batch 2 per process (global 8)" in out[0] and "process(es)" not in out[1]
    assert "finished in" in outs[0] and "finished in" not in outs[1]  # node 0 alone prints
    got, ref = _two_node_traces(root), _traces(f"{root}/ref_trace")
    assert sorted(got) == [0, 1, 2, 3] and len(_steps(ref[0])) == 4
    for rank in range(4):
        assert got[rank] == ref[rank], f"rank {rank} differs from the one-node run"
    _assert_same_state(f"{root}/ref/checkpoint_last.pth.tar", f"{root}/pre/checkpoint_last.pth.tar")


def _two_node_traces(root: str) -> dict[int, list[dict]]:
    """Per rank: the preempted two-node run's records, then its resumed run's."""
    before, after = _traces(f"{root}/pre_trace"), _traces(f"{root}/pre_resumed_trace")
    return {rank: before[rank] + after.get(rank, []) for rank in before}


def test_sigterm_on_node_1_stops_all_four_once_and_resume_auto_continues(runs):
    """SIGTERM on node 1 only: the four processes agree on one iteration, rank 0 writes one checkpoint, both nodes
    exit 75; --resume auto on both continues at that iteration and computes, bit for bit, what the uninterrupted
    one-node run computed: losses, images, permutations and positives, then the final weights, queue and momentum.

    Fails without clsa.distributed.wrap_ddp's fixed gradient buckets (checked): DDP re-buckets after each process's
    first iteration, so the resumed run summed its first gradients in another order and the final state differed.
    """
    root = runs["root"]
    codes, outs = runs["stopped"]
    assert codes == [75, 75], outs
    # rank 0 (node 0) was not signalled itself: it stops because node 1 asked, and says so
    assert outs[0].count("stop signal on another process: saved") == 1 and "saved" not in outs[1], outs
    assert [f for f in runs["files_at_stop"] if ".pth" in f] == ["checkpoint_last.pth.tar"], runs["files_at_stop"]
    stop = (int(runs["partial"]["epoch"]), int(runs["partial"]["iteration"]))
    assert stop[0] == 0 and 1 <= stop[1] < 4, stop
    before, ref = _traces(f"{root}/pre_trace"), _traces(f"{root}/ref_trace")
    assert sorted(before) == [0, 1, 2, 3]
    for rank in range(4):  # every process stopped after the same iteration, and equals the one-node run so far
        assert [(r["epoch"], r["iteration"]) for r in _steps(before[rank])] == [(0, i) for i in range(stop[1])]
        assert before[rank] == ref[rank][:len(before[rank])]

    codes, outs = runs["resumed"]
    assert codes == [0, 0], outs
    assert f"at epoch 0 iteration {stop[1]}" in outs[0]
    after = _traces(f"{root}/pre_resumed_trace")
    for rank in range(4):
        tail = ref[rank][len(before[rank]):]
        assert [(r["epoch"], r["iteration"]) for r in _steps(after[rank])] == [(0, i) for i in range(stop[1], 4)]
        assert [r for r in after[rank] if r["kind"] == "keys"] == [r for r in tail if r["kind"] == "keys"]
        assert [r["positives"] for r in _steps(after[rank])] == [r["positives"] for r in _steps(tail)]
        assert [r["loss"] for r in _steps(after[rank])] == [r["loss"] for r in _steps(tail)], f"rank {rank}"
    final = _load(f"{root}/pre/checkpoint_last.pth.tar")
    assert final["epoch"] == 1 and int(final["state_dict"]["module.queue_ptr"]) == 0  # 4 x 8 keys into K = 16
    _assert_same_state(f"{root}/ref/checkpoint_last.pth.tar", f"{root}/pre/checkpoint_last.pth.tar")


def test_torchrun_two_nodes_equals_one_node(runs):
    root = runs["root"]
    codes, outs = runs["torchrun"]
    assert codes == [0, 0], outs
    assert sum("4 process(es) on cpu, batch 2 per process (global 8)" in out for out in outs) == 1, outs
    got, ref = _traces(f"{root}/torchrun_trace"), _traces(f"{root}/ref_trace")
    assert sorted(got) == [0, 1, 2, 3] and all(got[rank] == ref[rank] for rank in range(4))
    _assert_same_state(f"{root}/ref/checkpoint_last.pth.tar", f"{root}/torchrun/checkpoint_last.pth.tar")


def _assert_same_state(a_path: str, b_path: str) -> None:
    a, b = _load(a_path), _load(b_path)
    assert a["epoch"] == b["epoch"] == 1 and a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:  # weights of both encoders, BN statistics, queue, queue_ptr
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for index, state in a["optimizer"]["state"].items():  # SGD momentum buffers
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"])


def test_positives_are_global_rank_rows_and_shuffle_bn_crosses_nodes(runs):
    """Recorded by every process of the two-node run: its positives are rows global_rank x N + i of the gathered
    keys, and those rows are its own images; one permutation, drawn on rank 0, sends images of each node to the
    other node's key encoders."""
    root = runs["root"]
    traces = _two_node_traces(root)
    crossed = 0
    for records in zip(*(traces[rank] for rank in range(4)), strict=True):
        kinds = {r["kind"] for r in records}
        if kinds == {"keys"}:
            perm = records[0]["perm"]
            assert all(r["perm"] == perm for r in records) and sorted(perm) == list(range(4 * N))
            assert all(r["gathered"] == records[0]["gathered"] for r in records)
            node0_encodes = set(perm[:2 * N])  # ranks 0 and 1 encode these rows of the gathered batch
            crossed += bool(node0_encodes & set(range(2 * N, 4 * N)))
            keys = records
            continue
        assert kinds == {"step"}
        for rank, step in enumerate(records):
            assert step["positives"] == [rank * N + i for i in range(N)], (rank, step)
            assert [keys[rank]["gathered"][row] for row in step["positives"]] == keys[rank]["own"], rank
    assert crossed >= 1


def test_lincls_on_two_nodes_counts_every_val_image_once(runs):
    root = runs["root"]
    codes, outs = runs["lin_two"]
    assert codes == [0, 0], outs
    ref = runs["lin_ref"].stdout
    acc = re.findall(r" \* Acc@1 \S+ Acc@5 \S+", ref)
    assert acc and re.findall(r" \* Acc@1 \S+ Acc@5 \S+", outs[0]) == acc and " * Acc@1" not in outs[1]
    results = [json.load(open(p)) for p in (glob.glob(f"{root}/lin_ref/**/linear.json", recursive=True)
                                            + glob.glob(f"{root}/lin_two/**/linear.json", recursive=True))]
    assert len(results) == 2 and results[0]["images"] == results[1]["images"] == 14
    assert (results[0]["top1"], results[0]["top5"]) == (results[1]["top1"], results[1]["top5"])
    seen = {rank: [x for r in rows if r["kind"] == "val" for x in r["images"]]
            for rank, rows in _traces(f"{root}/lin_two_trace").items()}
    assert sorted(len(v) for v in seen.values()) == [3, 3, 4, 4]
    every = [x for v in seen.values() for x in v]
    assert len(set(every)) == 14  # each of the 14 images once, none twice
    ref_seen = [x for rows in _traces(f"{root}/lin_ref_trace").values() for r in rows if r["kind"] == "val"
                for x in r["images"]]
    assert sorted(every) == sorted(ref_seen)


def _lost_line(out: str) -> str:
    lines = [line for line in out.splitlines() if LOST in line]
    assert len(lines) == 1 and "Traceback" not in out, out
    return lines[0]


def test_link_down_then_node_killed_end_with_one_line_and_resume(nodes, data, tmp_path):
    """The wire cut mid-epoch: both nodes stop within a bound (--dist_timeout 0.2 min = 12 s per collective) with
    one line each and exit 69; the checkpoint of the last epoch loads weights-only. With the link back the same
    command resumes; node 1 killed (SIGKILL of all its processes) ends node 0 the same way, naming node 1's
    address, and the checkpoint is intact."""
    run_dir = str(tmp_path / "faults")
    port = next(_ports)
    flags = ["--data", data, *SMALL, "--epochs", "2", "--dist_timeout", "0.2", "--resume", "auto", "--run_dir", run_dir]
    procs = _start(nodes, lambda n: _node_command(nodes, n, port, *flags), ENV)
    seen = read_until(procs[0], r"saved .*checkpoint_last", timeout=180)
    seen += read_until(procs[0], r"Epoch: \[1\]\[\s*0/4\]", timeout=180)
    nodes.link(False)
    start = time.time()
    try:
        codes, outs = _finish(procs, timeout=120, seen=seen)
    finally:
        nodes.link(True)
    assert codes == [69, 69] and time.time() - start < 60, (codes, outs)
    last = os.path.join(run_dir, "checkpoint_last.pth.tar")
    for node, out in enumerate(outs):
        line = _lost_line(out)
        assert f"on node {node}" in line and f"the last checkpoint {last} is intact" in line, line
        assert "rerun the same command" in line, line
    assert _load(last)["epoch"] == 1

    procs = _start(nodes, lambda n: _node_command(nodes, n, port, *flags), ENV)  # the same command
    seen = read_until(procs[0], r"resumed .* at epoch 1 iteration 0", timeout=180)
    seen += read_until(procs[0], r"Epoch: \[1\]\[\s*1/4\]", timeout=180)
    nodes.kill(1)
    start = time.time()
    out = seen + procs[0].communicate(timeout=120)[0]
    assert procs[0].returncode == 69 and time.time() - start < 60, out
    line = _lost_line(out)
    assert nodes.addresses[1] in line and "on node 0" in line, line
    assert _load(last)["epoch"] == 1
