"""kNN evaluation: the weighted vote, sharded extraction in a real 2-process gloo group, the pretraining monitor,
and `lincls.py --knn` (mp.spawn, 2 CPU processes)."""

from __future__ import annotations

import glob
import json
import math
import re

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from conftest import free_port, run_script
from evaluation_support import CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, eval_folder, pretrained_checkpoint, shared_base
from torch.utils.data import TensorDataset

from clsa.builder import CLSA, backbone
from clsa.evaluation import eval_transform, extract_features, gather_shards, shard_indices
from clsa.knn import KNNMonitor, knn_accuracy, knn_predict
from clsa.pretrained import load_encoder_weights
from data_processing.datasets import labelled_splits


def clustered(n_per_class: int, classes: int, dim: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points around `classes` fixed unit centres (the same for every call), noise drawn from `seed`."""
    centres = F.normalize(torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234)), dim=1)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[labels] + noise * torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed))
    return F.normalize(x, dim=1), labels


def test_knn_predict_hand_computed():
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.0]])
    scores = knn_predict(q, bank, labels, num_classes=2, k=2, t=0.5)
    # neighbours: bank 0 (s = 1) and bank 2 (s = 1/sqrt 2); bank 1 (s = 0) is not among the 2 nearest.
    expected = torch.tensor([[math.exp(1 / 0.5), math.exp((1 / math.sqrt(2)) / 0.5)]])
    torch.testing.assert_close(scores, expected)
    all_scores = knn_predict(q, bank, labels, num_classes=2, k=99, t=0.5)  # k capped at the bank size
    torch.testing.assert_close(all_scores[0, 1], expected[0, 1] + 1.0)


def test_separable_toy_set_is_perfect():
    bank, bank_y = clustered(50, 5, 32, 0.05, seed=0)
    q, q_y = clustered(20, 5, 32, 0.05, seed=1)
    top1, top5 = knn_accuracy(q, q_y, bank, bank_y, 5, k=20, t=0.1)
    assert top1 == 100.0 and top5 == 100.0


def test_shuffled_labels_give_chance_level():
    bank, bank_y = clustered(300, 10, 32, 0.1, seed=0)
    q, q_y = clustered(200, 10, 32, 0.1, seed=1)
    assert knn_accuracy(q, q_y, bank, bank_y, 10, k=50, t=0.1)[0] > 95.0
    # Labels shuffled against features without cluster structure: the neighbours' votes carry no information.
    g = torch.Generator().manual_seed(2)
    bank, q = F.normalize(torch.randn(3000, 32, generator=g), dim=1), F.normalize(torch.randn(2000, 32, generator=g))
    shuffled = bank_y[torch.randperm(len(bank_y), generator=g)]
    top1, top5 = knn_accuracy(q, q_y, bank, shuffled, 10, k=50, t=0.1)
    assert 7.0 < top1 < 13.0, top1  # chance 10 %; 2000 queries: std ~0.7 %
    assert 45.0 < top5 < 55.0, top5  # chance 50 %; std ~1.1 %


def test_shards_cover_every_index_once():
    for n, world in ((9, 2), (10, 3), (2, 4), (1, 1)):
        shards = [shard_indices(n, r, world) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))
    x = torch.arange(7.0)[:, None]
    assert torch.equal(gather_shards(x, 7), x)  # no process group: identity


class TinyEncoder(nn.Module):
    """A seeded conv net with an fc head, like the torchvision ResNets (fc is swapped for Identity)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 1).flatten(1))


def toy_images(n: int = 11) -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 3)


def _extract_worker(rank: int, world: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        feats, labels = extract_features(TinyEncoder(), toy_images(), batch_size=4)
        queue.put((rank, feats.tolist(), labels.tolist()))  # plain data: the sender exits first
    finally:
        dist.destroy_process_group()


def test_extraction_two_processes_equals_one_process():
    reference, ref_labels = extract_features(TinyEncoder(), toy_images(), batch_size=4)
    assert reference.shape == (11, 8)
    torch.testing.assert_close(reference.norm(dim=1), torch.ones(11))
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_extract_worker, args=(2, free_port(), queue), nprocs=2, join=True, start_method="spawn")
    results = [queue.get() for _ in range(2)]
    assert sorted(r for r, _, _ in results) == [0, 1]
    for _rank, feats, labels in results:  # every rank holds all 11 rows, in dataset order
        torch.testing.assert_close(torch.tensor(feats), reference, rtol=1e-5, atol=1e-6)
        assert labels == ref_labels.tolist()


def test_monitor_restores_modes_and_head(tmp_path_factory):
    data = eval_folder(shared_base(tmp_path_factory))
    model = CLSA("resnet18", dim=16, K=16, m=0.9)
    messages: list[str] = []
    monitor = KNNMonitor(*labelled_splits("ImageNet", data, eval_transform(32)), k=5, t=0.1, workers=0,
                         log=messages.append)
    head = model.encoder_q.fc
    model.train()
    model.encoder_k.eval()  # a mixed state must come back as it was
    top1 = monitor(model)
    assert 0.0 <= top1 <= 100.0 and monitor.last["bank"] == CLASSES * TRAIN_PER_CLASS
    assert monitor.last["queries"] == CLASSES * VAL_PER_CLASS
    assert model.encoder_q.fc is head and model.training and model.encoder_q.training
    assert not model.encoder_k.training and all(not m.training for m in model.encoder_k.modules())
    assert re.match(r"kNN \(k=5, t=0\.1\): Acc@1 \d+\.\d\d Acc@5 100\.00 on 9 queries, bank 36", messages[0])
    model.eval()
    monitor(model)
    assert not model.training and not model.encoder_q.training


def test_lincls_knn_two_spawned_processes(tmp_path_factory, tmp_path):
    """The CLI over 2 spawned processes gives the single-process in-process result (each image used once)."""
    base = shared_base(tmp_path_factory)
    data, ckpt = eval_folder(base), pretrained_checkpoint(base)
    two = run_script(["lincls.py", "--knn", "--data", data, "--pretrained", ckpt, "-a", "resnet18", "-b", "8", "-j",
                      "0", "--val-resize", "32", "--val-crop", "32", "--knn-k", "10", "--cpu-procs", "2",
                      "--dist-url", f"tcp://127.0.0.1:{free_port()}", "--log_path", str(tmp_path / "two")])
    assert two.returncode == 0, two.stdout + two.stderr
    assert "2 process(es) on cpu" in two.stdout
    encoder = backbone("resnet18")
    load_encoder_weights(encoder, ckpt)
    res = KNNMonitor(*labelled_splits("ImageNet", data, eval_transform(32, 32)), k=10, t=0.1).evaluate(encoder)
    line = re.compile(r"^ \* Acc@1 (\d+\.\d+) Acc@5 (\d+\.\d+)$", re.M)
    assert line.findall(two.stdout) == [(f"{res['top1']:.3f}", f"{res['top5']:.3f}")]
    (result_file,) = glob.glob(str(tmp_path / "two" / "kNN_log" / "*" / "knn.json"))
    result = json.load(open(result_file))
    assert result["bank"] == 36 and result["queries"] == 9 and result["k"] == 10 and result["mode"] == "knn"
