import math

import pytest
import torch
import torch.nn.functional as F

from lossguided.engine.loss import create_criterion, torch_smoothing
from lossguided.engine.optim import cosine_lr, create_optimizer, create_scheduler


def test_smoothing_targets_match_equation_1():
    k, eps = 10, 0.2
    crit = create_criterion(num_classes=k, smoothing=eps)
    logits = torch.randn(4, k, dtype=torch.float64)
    y = torch.tensor([0, 3, 9, 5])
    q = torch.full((4, k), eps / (k - 1), dtype=torch.float64)
    q[torch.arange(4), y] = 1 - eps
    expected = -(q * F.log_softmax(logits, 1)).sum(1)
    torch.testing.assert_close(crit(logits, y), expected)
    assert torch_smoothing(eps, k) == pytest.approx(eps * k / (k - 1))


def test_smoothing_off_is_plain_cross_entropy():
    logits, y = torch.randn(5, 7), torch.randint(0, 7, (5,))
    torch.testing.assert_close(create_criterion(num_classes=7)(logits, y), F.cross_entropy(logits, y, reduction="none"))


@pytest.mark.parametrize("eps", [-0.1, 1.0])
def test_smoothing_rejects_bad_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        torch_smoothing(eps, 10)


def test_lr_follows_equation_2_and_ends_at_a_tenth():
    model = torch.nn.Linear(3, 2)
    opt = create_optimizer(model, lr=1e-4)
    total = 50
    sched = create_scheduler(opt, total_steps=total, lr_min_ratio=0.1)
    seen = []
    for t in range(total + 1):
        sched.step_update(t)
        seen.append(opt.param_groups[0]["lr"])
        assert seen[-1] == pytest.approx(cosine_lr(t, total=total, lr0=1e-4, lr_min=1e-5), rel=1e-9)
    assert seen[0] == pytest.approx(1e-4)
    assert seen[-1] == pytest.approx(1e-5)
    assert seen[total // 2] == pytest.approx(0.5 * (1e-4 + 1e-5))
    assert all(a >= b for a, b in zip(seen, seen[1:], strict=False))


def test_optimizer_is_ranger():
    opt = create_optimizer(torch.nn.Linear(3, 2))
    assert type(opt).__name__ == "Lookahead"
    assert type(opt._base_optimizer).__name__ == "RAdam"
    assert math.isclose(opt.param_groups[0]["lr"], 1e-4)


@pytest.mark.parametrize("sched", ["step", "multistep", "tanh", "poly"])
def test_timms_other_schedules_step_per_batch_from_lr_to_the_floor(sched):
    from lossguided.engine.optim import create_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = create_scheduler(opt, total_steps=300, lr_min_ratio=0.1, sched=sched, steps_per_epoch=10)
    lrs = []
    for t in range(0, 300, 10):
        s.step_update(t)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1.0) and lrs[-1] < lrs[0]
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:], strict=False))  # never rises
    with pytest.raises(ValueError, match="not one of"):
        create_scheduler(opt, total_steps=10, sched="plateau")
