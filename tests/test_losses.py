"""clsa.losses against values computed by hand and against a per-pair reference loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from clsa.losses import candidate_logits, clsa_loss, strong_infonce_loss
from clsa.metrics import topk_accuracy


def infonce(logits: torch.Tensor, labels: torch.Tensor, T: float) -> torch.Tensor:
    """Reference InfoNCE term: mean cross-entropy of c(q)/T against the positive's index."""
    return F.cross_entropy(logits / T, labels)


def ddm(target_logits: torch.Tensor, pred_logits: torch.Tensor, T2: float) -> torch.Tensor:
    """Reference DDM term: -mean_i sum_j softmax(t/T2) log_softmax(s/T2), no gradient through the target."""
    p = F.softmax(target_logits.detach() / T2, dim=-1)
    return -(p * F.log_softmax(pred_logits / T2, dim=-1)).sum(-1).mean()


def test_infonce_and_ddm_by_hand():
    # One query, candidates: 1 key + 1 queue column, d = 2.
    q = torch.tensor([[1.0, 0.0]])
    s = torch.tensor([[0.0, 1.0]])
    keys = torch.tensor([[1.0, 0.0]])  # positive, similarity 1
    queue = torch.tensor([[0.0], [1.0]])  # negative e_2: similarity 0 to q, 1 to s
    T, T2, alpha = 0.5, 1.0, 2.0
    # InfoNCE = -log(e^{1/T} / (e^{1/T} + e^0)) = log(1 + e^{-2})
    info = math.log(1 + math.exp(-2))
    # target p = softmax([1, 0]) ; prediction log_softmax([0, 1])
    p1 = math.exp(1) / (math.exp(1) + 1)
    p2 = 1 - p1
    logq1 = -math.log(1 + math.e)  # log softmax([0,1])[0]
    logq2 = 1 - math.log(1 + math.e)
    d = -(p1 * logq1 + p2 * logq2)
    loss, stats = clsa_loss([q], [s], keys, queue, 0, T, T2, alpha)
    assert loss.item() == pytest.approx(info + alpha * d, rel=1e-6)
    assert stats["infonce"] == pytest.approx(info, rel=1e-6)
    assert stats["ddm"] == pytest.approx(d, rel=1e-6)
    assert stats["acc1"] == 100.0


def _reference(weak, strong, keys, queue, offset, T, T2, alpha):
    """Straightforward per-pair loop of the formula in clsa/losses.py's docstring."""
    labels = torch.arange(weak[0].shape[0]) + offset
    total_info = sum(infonce(candidate_logits(q, keys, queue), labels, T) for q in weak)
    total_ddm = sum(ddm(candidate_logits(q, keys, queue), candidate_logits(s, keys, queue), T2)
                    for q in weak for s in strong)
    return total_info + alpha * total_ddm, total_info, total_ddm


@pytest.mark.parametrize("n_weak,n_strong,offset", [(1, 1, 0), (5, 5, 4), (2, 3, 8)])
def test_matches_per_pair_loop_and_gradients(n_weak, n_strong, offset):
    torch.manual_seed(0)
    n, d, world, K = 4, 8, 3, 16
    weak = [F.normalize(torch.randn(n, d), dim=1).requires_grad_() for _ in range(n_weak)]
    strong = [F.normalize(torch.randn(n, d), dim=1).requires_grad_() for _ in range(n_strong)]
    keys = F.normalize(torch.randn(n * world, d), dim=1)
    queue = F.normalize(torch.randn(d, K), dim=0)
    loss, stats = clsa_loss(weak, strong, keys, queue, offset, 0.2, 0.1, 0.7)
    ref, ref_info, ref_ddm = _reference(weak, strong, keys, queue, offset, 0.2, 0.1, 0.7)
    _assert_matches(loss, stats, (ref, ref_info, ref_ddm), weak + strong)
    assert stats["n_infonce"] == n_weak and stats["n_ddm"] == n_weak * n_strong


def _assert_matches(loss, stats, reference, inputs) -> None:
    """loss, stats['infonce'], stats['ddm'] and the gradients wrt `inputs` equal the reference loop's."""
    ref, ref_info, ref_second = reference
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert stats["infonce"] == pytest.approx(ref_info.item(), rel=1e-5)
    assert stats["ddm"] == pytest.approx(ref_second.item(), rel=1e-5)
    for a, b in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(ref, inputs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_ddm_gradient_flows_only_into_strong():
    torch.manual_seed(1)
    q = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    s = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    keys, queue = F.normalize(torch.randn(3, 4), dim=1), F.normalize(torch.randn(4, 5), dim=0)
    loss_a1, _ = clsa_loss([q], [s], keys, queue, 0, 0.2, 0.2, 1.0)
    loss_a0, _ = clsa_loss([q], [s], keys, queue, 0, 0.2, 0.2, 0.0)
    gq1, gs1 = torch.autograd.grad(loss_a1, [q, s])
    gq0 = torch.autograd.grad(loss_a0, [q])[0]
    torch.testing.assert_close(gq1, gq0)  # the DDM target is detached
    assert gs1.abs().sum() > 0


def test_label_offset_selects_the_positive():
    keys = torch.eye(4)
    q = torch.eye(4)[2:]  # local rows are global samples 2 and 3
    _, right = clsa_loss([q], [], keys, torch.zeros(4, 2), 2, 0.1, 0.1, 1.0)
    _, wrong = clsa_loss([q], [], keys, torch.zeros(4, 2), 0, 0.1, 0.1, 1.0)
    assert right["acc1"] == 100.0 and wrong["acc1"] == 0.0
    assert right["infonce"] < wrong["infonce"]


def test_low_temperature_and_bf16_inputs_stay_finite():
    torch.manual_seed(2)
    q = F.normalize(torch.randn(4, 8), dim=1).bfloat16()
    s = F.normalize(torch.randn(4, 8), dim=1).bfloat16()
    keys, queue = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(8, 64), dim=0)
    loss, stats = clsa_loss([q], [s], keys, queue, 0, 0.01, 0.005, 1.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert math.isfinite(stats["ddm"])


def test_topk_caps_k_at_candidates():
    logits = torch.tensor([[0.1, 0.9, 0.0]])
    assert topk_accuracy(logits, torch.tensor([0]), (1, 5)) == [0.0, 100.0]


def _reference_strong_infonce(weak, strong, keys, queue, offset, T, alpha):
    """Per-view loop of --strong_loss infonce: every weak and every strong view is an InfoNCE query."""
    labels = torch.arange(weak[0].shape[0]) + offset
    total_info = sum(infonce(candidate_logits(q, keys, queue), labels, T) for q in weak)
    total_strong = sum(infonce(candidate_logits(s, keys, queue), labels, T) for s in strong)
    return total_info + alpha * total_strong, total_info, total_strong


@pytest.mark.parametrize("n_weak,n_strong,offset", [(1, 1, 0), (2, 3, 8)])
def test_strong_infonce_matches_per_view_loop_and_gradients(n_weak, n_strong, offset):
    """Mutations that fail here (each tried): dropping alpha, giving the strong views the wrong positives,
    detaching the strong views' logits (values or gradients)."""
    torch.manual_seed(3)
    n, d, world, K = 4, 8, 3, 16
    weak = [F.normalize(torch.randn(n, d), dim=1).requires_grad_() for _ in range(n_weak)]
    strong = [F.normalize(torch.randn(n, d), dim=1).requires_grad_() for _ in range(n_strong)]
    keys = F.normalize(torch.randn(n * world, d), dim=1)
    queue = F.normalize(torch.randn(d, K), dim=0)
    loss, stats = strong_infonce_loss(weak, strong, keys, queue, offset, 0.2, 0.7)
    _assert_matches(loss, stats, _reference_strong_infonce(weak, strong, keys, queue, offset, 0.2, 0.7), weak + strong)
    assert stats["n_infonce"] == n_weak and stats["n_ddm"] == n_strong


def test_strong_infonce_differs_from_ddm_and_shares_the_weak_part():
    torch.manual_seed(4)
    weak = [F.normalize(torch.randn(4, 8), dim=1)]
    strong = [F.normalize(torch.randn(4, 8), dim=1)]
    keys, queue = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(8, 16), dim=0)
    l_ddm, s_ddm = clsa_loss(weak, strong, keys, queue, 0, 0.2, 0.2, 1.0)
    l_nce, s_nce = strong_infonce_loss(weak, strong, keys, queue, 0, 0.2, 1.0)
    assert s_ddm["infonce"] == s_nce["infonce"]
    assert abs(l_ddm.item() - l_nce.item()) > 1e-3
    l0, _ = strong_infonce_loss(weak, strong, keys, queue, 0, 0.2, 0.0)  # alpha 0: InfoNCE of the weak views only
    assert l0.item() == pytest.approx(s_nce["infonce"].item(), rel=1e-6)
