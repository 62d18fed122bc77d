"""The step without host synchronisation: the guarded update (clsa.step_checks.guarded_step and the queue's only_if),
StepFlags' one-iteration lag and DeviceMeans (clsa/step_checks.py).

Mutations these catch (each tried): dropping the restore of the momentum buffers in guarded_step (momentum test),
restoring a buffer the step created to its new value instead of zeros (fresh-buffer test), advancing queue_ptr
when only_if is false (queue test), counting skipped iterations in DeviceMeans (means test), pop() with lag 1
returning the newest instead of the oldest iteration (flags test)."""

import copy

import torch
import torch.nn.functional as F

from clsa.builder import CLSA
from clsa.step_checks import DeviceMeans, StepFlags, guarded_step


def _net_and_opt(steps: int) -> tuple[torch.nn.Module, torch.optim.SGD]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for s in range(steps):
        _backward(net, s)
        opt.step()
    return net, opt


def _backward(net: torch.nn.Module, seed: int, scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    net.zero_grad()
    (scale * F.cross_entropy(net(torch.randn(4, 6, generator=g)), torch.tensor([0, 1, 2, 0]))).backward()


def _state(net: torch.nn.Module, opt: torch.optim.SGD) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()] + [
        opt.state[p]["momentum_buffer"].clone() for p in net.parameters() if p in opt.state]


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_guarded_step_true_is_the_plain_step_false_undoes_weights_and_momentum():
    net, opt = _net_and_opt(2)
    twin = copy.deepcopy(net)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # (load_state_dict would share the buffers)
    before = _state(net, opt)

    _backward(net, 7, scale=float("nan"))  # a non-finite step: gradients are NaN
    guarded_step(opt, torch.tensor(False))
    assert _equal(_state(net, opt), before)

    _backward(net, 8)
    guarded_step(opt, torch.tensor(True))
    _backward(twin, 8)
    twin_opt.step()
    assert _equal(_state(net, opt), _state(twin, twin_opt))


def test_guarded_step_undoes_a_fresh_momentum_buffer_to_what_a_first_step_makes_of_it():
    net, opt = _net_and_opt(0)
    twin, twin_opt = _net_and_opt(0)
    _backward(net, 3, scale=float("inf"))
    guarded_step(opt, torch.tensor(False))  # first step, skipped: creates the buffers, then zeroes them
    _backward(net, 4)
    guarded_step(opt, torch.tensor(True))
    _backward(twin, 4)  # the twin's first step is this one
    twin_opt.step()
    assert _equal(_state(net, opt), _state(twin, twin_opt))


def test_enqueue_only_if_false_leaves_queue_and_pointer():
    torch.manual_seed(0)
    model = CLSA("resnet18", dim=16, K=12, m=0.9)
    model.dequeue_and_enqueue(F.normalize(torch.randn(8, 16), dim=1))
    queue, ptr = model.queue.clone(), model.queue_ptr.clone()
    model.dequeue_and_enqueue(F.normalize(torch.randn(8, 16), dim=1), only_if=torch.tensor(False))
    assert torch.equal(model.queue, queue) and torch.equal(model.queue_ptr, ptr)
    keys = F.normalize(torch.randn(8, 16), dim=1)
    model.dequeue_and_enqueue(keys, only_if=torch.tensor(True))
    assert int(model.queue_ptr) == 4 and torch.equal(model.queue[:, 8:], keys[:4].t())


def test_step_flags_lag_one_reports_each_iteration_once_one_late():
    flags = StepFlags(lag=1)
    finite = flags.push(0, False, torch.tensor(1.0))
    assert bool(finite) and flags.pop() is None
    assert not bool(flags.push(1, True, torch.tensor(float("nan"))))
    first = flags.pop()
    assert (first.iteration, first.stop, first.finite) == (0, False, True)
    flags.push(2, False, torch.tensor(2.0))
    second = flags.pop()
    assert (second.iteration, second.stop, second.finite) == (1, True, False)
    assert [a.iteration for a in flags.flush()] == [2] and flags.flush() == []

    now = StepFlags(lag=0)
    now.push(5, False, torch.tensor(float("inf")))
    report = now.pop()
    assert (report.iteration, report.finite) == (5, False)


def test_device_means_weigh_by_images_and_drop_skipped_iterations():
    means = DeviceMeans(["loss", "acc1"])
    means.update([torch.tensor(2.0), torch.tensor(50.0)], 4)
    means.update([torch.tensor(float("nan")), torch.tensor(0.0)], 4, keep=torch.tensor(False))
    means.update([torch.tensor(5.0), torch.tensor(100.0)], 2, keep=torch.tensor(True))
    last, avg = means.read()
    assert last == {"loss": 5.0, "acc1": 100.0}
    assert avg == {"loss": (2.0 * 4 + 5.0 * 2) / 6, "acc1": (50.0 * 4 + 100.0 * 2) / 6}
