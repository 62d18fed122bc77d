"""The CLSA module: momentum update, queue, and shuffle-BN / global labels in a real 2-process gloo group."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import free_port

from clsa.builder import CLSA, build_encoder
from clsa.losses import clsa_loss


def tiny_model(**kw) -> CLSA:
    torch.manual_seed(0)
    return CLSA("resnet18", dim=16, K=kw.pop("K", 12), m=kw.pop("m", 0.9), **kw)


def test_encoder_head_names_and_queue_normalised():
    enc = build_encoder("resnet18", 16, mlp=True)
    names = set(enc.state_dict())
    assert {"fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"} <= names
    model = tiny_model()
    assert model.queue.shape == (16, 12)
    torch.testing.assert_close(model.queue.norm(dim=0), torch.ones(12))
    assert model.queue_ptr.dtype == torch.long and int(model.queue_ptr) == 0
    assert not any(p.requires_grad for p in model.encoder_k.parameters())


def test_momentum_update_params_only():
    model = tiny_model(m=0.9)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
        model.encoder_q.bn1.running_mean.add_(5.0)
    k_before = [p.clone() for p in model.encoder_k.parameters()]
    q_now = list(model.encoder_q.parameters())
    model.momentum_update()
    for pk, pk0, pq in zip(model.encoder_k.parameters(), k_before, q_now, strict=True):
        torch.testing.assert_close(pk, 0.9 * pk0 + 0.1 * pq)
    assert model.encoder_k.bn1.running_mean.abs().max() < 1.0  # buffers are not averaged


def test_queue_wraps_around():
    model = tiny_model(K=12)
    keys = [F.normalize(torch.randn(8, 16), dim=1) for _ in range(2)]
    model.dequeue_and_enqueue(keys[0])
    assert int(model.queue_ptr) == 8
    model.dequeue_and_enqueue(keys[1])
    assert int(model.queue_ptr) == 4  # (8 + 8) mod 12
    torch.testing.assert_close(model.queue[:, :4], keys[1][4:].t())  # wrapped part
    torch.testing.assert_close(model.queue[:, 8:], keys[1][:4].t())
    torch.testing.assert_close(model.queue[:, 4:8], keys[0][4:].t())


def _labels_worker(rank: int, world: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        model = tiny_model(m=0.0)  # same init on every rank; encoder_k == encoder_q
        model.eval()  # running-stat BN: a key does not depend on which samples share its batch
        torch.manual_seed(100 + rank)  # different images and a rank-0 permutation
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            keys = model.encode_keys(x)
            q = model.encode_query(x)
            _, stats = clsa_loss([q], [], keys, model.queue, rank * 3, 0.2, 0.2, 1.0)
            _, wrong = clsa_loss([q], [], keys, model.queue, 0, 0.2, 0.2, 1.0)
        gathered = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(gathered, x)
        results[rank] = {
            "own_rows": torch.allclose(keys[rank * 3:(rank + 1) * 3], q, atol=1e-5),
            "acc1": stats["acc1"], "wrong_acc1": wrong["acc1"], "n_keys": keys.shape[0],
        }
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_shuffle_bn_round_trip_and_global_rank_labels():
    world = 2
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_labels_worker, args=(world, free_port(), results), nprocs=world, join=True)
        results = dict(results)
    for rank in range(world):
        r = results[rank]
        assert r["n_keys"] == 6
        assert r["own_rows"], f"rank {rank}: unshuffled keys are not in global-rank order"
        assert r["acc1"] == 100.0
    assert results[1]["wrong_acc1"] < 100.0  # the 2021 local-index offset points at rank 0's keys


def test_sym_forward_is_both_passes_and_returns_the_second_keys():
    """--sym 1: loss = L(weak | f_k(key)) + L(weak[1:] + f_q(key) | f_k(weak 0)); the keys to enqueue are the
    second ones. Dropping the second pass, or returning f_k(key), fails here."""
    model = tiny_model(sym=True)
    torch.manual_seed(3)
    key, weak = torch.randn(4, 3, 32, 32), [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16)]
    strong = [torch.randn(4, 3, 16, 16)]
    loss, stats, keys = model(key, weak, strong)
    assert stats["n_infonce"] == 4 and stats["n_ddm"] == 4
    with torch.no_grad():  # train-mode BN: the same inputs give the same embeddings again
        k1, k2 = model.encode_keys(key), model.encode_keys(weak[0])
        q, s, kq = [model.encode_query(v) for v in weak], [model.encode_query(v) for v in strong], \
            model.encode_query(key)
        ref = (clsa_loss(q, s, k1, model.queue, 0, 0.2, 0.2, 1.0)[0]
               + clsa_loss(q[1:] + [kq], s, k2, model.queue, 0, 0.2, 0.2, 1.0)[0])
    torch.testing.assert_close(keys, k2)
    assert not torch.allclose(keys, k1)
    assert loss.requires_grad and loss.item() == pytest.approx(ref.item(), rel=1e-5)
