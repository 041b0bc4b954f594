"""Flow-matching ODE solvers as pure functions over a :class:`Schedule`.

Each solver is ``solver(denoise, x, schedule, callback=None) -> x0`` where ``denoise(x, t)``
returns the flow ``v = noise - x0`` at model time ``t`` and ``callback(i, x, x0_pred)`` runs after
every step (progress, previews, cancellation). The multistep solvers follow the official Wan
``FlowUniPCMultistepScheduler`` (UniPC, B(h) = e^h - 1, order 2, corrector from the second step)
and ``FlowDPMSolverMultistepScheduler`` (DPM-Solver++ 2M, midpoint), including their lower-order
first and final steps. Coefficients are computed in float32 as the official code does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .schedules import Schedule

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]

ORDER = 2
"""Both multistep solvers use two model evaluations (the official solver_order)."""


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    """Half log-SNR of the flow path: log((1 - sigma) / sigma) (float32; +-inf at the ends)."""
    return torch.log(1 - sigma) - torch.log(sigma)


def euler(denoise: Denoise, x: torch.Tensor, schedule: Schedule, callback: StepCallback | None = None) -> torch.Tensor:
    """First-order steps ``x += (sigma_next - sigma) v``; exact when the flow is constant along the path."""
    sigmas = schedule.sigmas
    for i, t in enumerate(schedule.timesteps):
        v = denoise(x, t)
        x0 = x - sigmas[i] * v
        x = x + (sigmas[i + 1] - sigmas[i]) * v
        if callback:
            callback(i, x, x0)
    return x


def dpmpp_2m(denoise: Denoise, x: torch.Tensor, schedule: Schedule,
             callback: StepCallback | None = None) -> torch.Tensor:
    """DPM-Solver++ (2M, midpoint) on data predictions ``x0 = x - sigma v``.

    First order on the first step and on the last (the schedule ends at sigma 0); on the
    second-to-last too when there are fewer than 15 steps.
    """
    sigmas = schedule.sigmas
    n = schedule.steps
    prev_x0 = None
    for i, t in enumerate(schedule.timesteps):
        x0 = x - sigmas[i] * denoise(x, t)
        s, s_next = sigmas[i], sigmas[i + 1]
        h = _lambda(s_next) - _lambda(s)
        decay = torch.exp(-h) - 1.0
        first_order = i == 0 or i == n - 1
        x_next = (s_next / s) * x - (1 - s_next) * decay * x0
        if not first_order:
            r = (_lambda(s) - _lambda(sigmas[i - 1])) / h
            x_next = x_next - 0.5 * (1 - s_next) * decay * ((1.0 / r) * (x0 - prev_x0))
        x, prev_x0 = x_next, x0
        if callback:
            callback(i, x, x0)
    return x


def _phi_coefficients(h: torch.Tensor, order: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """UniPC's (h phi_1, B(h), b): ``b_k = k! phi_{k+1}(-h) / B(h)`` for k < order, with B(h) = e^-h - 1."""
    hh = -h
    h_phi_1 = torch.expm1(hh)
    b_h = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    b = []
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, torch.stack(b)


def _unipc_update(x: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor, m0: torch.Tensor,
                  correction: torch.Tensor | int) -> torch.Tensor:
    """``x`` at ``s`` -> ``s_next`` from data prediction ``m0`` plus a higher-order ``correction`` term."""
    h = _lambda(s_next) - _lambda(s)
    h_phi_1, b_h, _ = _phi_coefficients(h, 1)
    return (s_next / s) * x - (1 - s_next) * h_phi_1 * m0 - (1 - s_next) * b_h * correction


def unipc(denoise: Denoise, x: torch.Tensor, schedule: Schedule, callback: StepCallback | None = None) -> torch.Tensor:
    """UniPC (predictor UniP-2 + corrector UniC, bh2) on data predictions ``x0 = x - sigma v``.

    Step i evaluates the model at x_i, first corrects x_i with that evaluation (UniC, from the
    second step on), then predicts x_{i+1} (UniP). Orders warm up from 1 and drop to 1 on the last
    step.
    """
    sigmas = schedule.sigmas
    lam = _lambda(sigmas)
    n = schedule.steps
    x0s: list[torch.Tensor] = []  # the last ORDER data predictions, newest last
    last_x = None
    last_order = 1
    for i, t in enumerate(schedule.timesteps):
        x0 = x - sigmas[i] * denoise(x, t)
        if i > 0:
            x = _unic(last_x, x0, x0s, sigmas, lam, i, last_order)
        x0s = (x0s + [x0])[-ORDER:]
        order = min(ORDER, n - i, i + 1)
        last_x, last_order = x, order
        d1 = 0
        if order == 2:
            rk = (lam[i - 1] - lam[i]) / (lam[i + 1] - lam[i])
            d1 = 0.5 * (x0s[-2] - x0s[-1]) / rk
        x = _unipc_update(x, sigmas[i], sigmas[i + 1], x0, d1)
        if callback:
            callback(i, x, x0)
    return x


def _unic(last_x: torch.Tensor, x0: torch.Tensor, x0s: list[torch.Tensor], sigmas: torch.Tensor,
          lam: torch.Tensor, i: int, order: int) -> torch.Tensor:
    """Corrected x_i from x_{i-1} (``last_x``), the previous data predictions and the new one ``x0``."""
    m0 = x0s[-1]
    h = lam[i] - lam[i - 1]
    _, _, b = _phi_coefficients(h, order)
    if order == 1:
        rhos = torch.tensor([0.5], dtype=x0.dtype)
        history = 0
    else:
        rk = (lam[i - 2] - lam[i - 1]) / h
        ones = torch.ones((), dtype=rk.dtype)
        rhos = torch.linalg.solve(torch.stack([torch.stack([ones, ones]), torch.stack([rk, ones])]), b)
        history = rhos[0] * (x0s[-2] - m0) / rk
    return _unipc_update(last_x, sigmas[i - 1], sigmas[i], m0, history + rhos[-1] * (x0 - m0))
