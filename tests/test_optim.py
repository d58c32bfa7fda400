"""Optimizer updates and step-size schedules against their closed forms."""

import numpy as np
import pytest

from gpumlp.backends import get_backend
from gpumlp.backends.base import Backend
from gpumlp.optim import SGD, Adam, Schedule, make_optimizer

BACKENDS = [get_backend("numpy"), Backend(np)]


@pytest.mark.parametrize("backend", BACKENDS, ids=["numpy-fast", "generic"])
def test_adam_two_steps_closed_form(backend):
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=7)
    g1, g2 = rng.normal(size=7), rng.normal(size=7)
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    params = p0.copy()
    opt = Adam(backend, params, lr, b1, b2, eps)
    opt.step(params, g1)
    opt.step(params, g2)
    expected = p0.copy()
    m = v = 0
    for t, g in enumerate([g1, g2], start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        expected -= lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
    np.testing.assert_allclose(params, expected, rtol=1e-12)
    assert opt.t == 2


@pytest.mark.parametrize("backend", BACKENDS, ids=["numpy-fast", "generic"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_closed_form(backend, nesterov):
    rng = np.random.default_rng(1)
    p0, grads = rng.normal(size=5), rng.normal(size=(3, 5))
    lr, mu = 0.1, 0.9
    params = p0.copy()
    opt = SGD(backend, params, learning_rate_init=lr, momentum=mu, nesterov=nesterov)
    expected, velocity = p0.copy(), np.zeros(5)
    for g in grads:
        opt.step(params, g)
        velocity = mu * velocity - lr * g
        expected += mu * velocity - lr * g if nesterov else velocity
    np.testing.assert_allclose(params, expected, rtol=1e-12)


def test_plain_sgd_is_gradient_descent():
    params = np.array([1.0, -2.0])
    SGD(BACKENDS[0], params, learning_rate_init=0.5, momentum=0.0).step(params,
                                                                       np.array([2.0, 4.0]))
    np.testing.assert_allclose(params, [0.0, -4.0])


def test_float32_updates_stay_float32():
    params = np.ones(4, dtype=np.float32)
    opt = Adam(BACKENDS[0], params)
    opt.step(params, np.ones(4, dtype=np.float32))
    assert params.dtype == np.float32 and opt.m.dtype == np.float32


def test_invscaling_schedule():
    opt = SGD(BACKENDS[0], np.zeros(1), learning_rate_init=0.2, schedule="invscaling",
              power_t=0.5)
    opt.epoch_end(samples_seen=99)
    assert opt.learning_rate == pytest.approx(0.2 / 100**0.5)
    opt.epoch_end(samples_seen=399)
    assert opt.learning_rate == pytest.approx(0.2 / 400**0.5)


def test_constant_schedule_keeps_rate():
    opt = SGD(BACKENDS[0], np.zeros(1), learning_rate_init=0.3)
    opt.epoch_end(1000)
    assert opt.learning_rate == 0.3
    assert opt.on_plateau() is True  # a plateau ends training


def test_adaptive_schedule_divides_by_five_until_tiny():
    opt = SGD(BACKENDS[0], np.zeros(1), learning_rate_init=1e-4, schedule="adaptive")
    rates = []
    while not opt.on_plateau():
        rates.append(opt.learning_rate)
    np.testing.assert_allclose(rates, [2e-5, 4e-6, 8e-7])
    assert opt.learning_rate <= 1e-6


def test_adam_ignores_plateaus_and_schedules():
    opt = Adam(BACKENDS[0], np.zeros(1), learning_rate_init=0.01)
    opt.epoch_end(10**6)
    assert opt.learning_rate == 0.01 and opt.on_plateau() is True


def test_make_optimizer_rejects_unknown_solver():
    with pytest.raises(ValueError, match="solver='lbfgs'"):
        make_optimizer("lbfgs", BACKENDS[0], np.zeros(1), 0.1)
    with pytest.raises(ValueError, match="learning_rate='cosine'"):
        SGD(BACKENDS[0], np.zeros(1), schedule="cosine")


def test_cosine_schedule_anneals_to_zero_for_any_solver():
    for solver in ("sgd", "adam"):
        opt = make_optimizer(solver, BACKENDS[0], np.zeros(1), 0.01, schedule="cosine",
                             total_epochs=4)
        rates = []
        for epoch in range(1, 5):
            opt.epoch_end(samples_seen=epoch * 100, epoch=epoch)
            rates.append(opt.learning_rate)
        np.testing.assert_allclose(rates, [0.01 * (1 + np.cos(np.pi * e / 4)) / 2
                                           for e in range(1, 5)], atol=1e-15)
    with pytest.raises(ValueError, match="cosine"):
        Schedule("cosine", 0.01)
