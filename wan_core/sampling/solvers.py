"""Flow-matching ODE solvers as pure functions over a :class:`Schedule`.

Each solver is ``solver(denoise, x, schedule, callback=None, checkpoint=None, resume=None) -> x0``
where ``denoise(x, t)`` returns the flow ``v = noise - x0`` at model time ``t``, ``callback(i, x,
x0_pred)`` runs after every step (progress, previews, cancellation), ``checkpoint(state)`` receives
the solver's whole :class:`SolverState` after every step, ``resume`` continues from one, and ``project(x, sigma)``
puts fixed parts of the latent back after each update. The
multistep solvers follow the official Wan ``FlowUniPCMultistepScheduler`` (UniPC, B(h) = e^h - 1,
order 2, corrector from the second step) and ``FlowDPMSolverMultistepScheduler`` (DPM-Solver++ 2M,
midpoint), including their lower-order first and final steps. Coefficients are computed in float32
as the official code does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .schedules import Schedule

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]

ORDER = 2
"""Both multistep solvers use two model evaluations (the official solver_order)."""


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    """Half log-SNR of the flow path: log((1 - sigma) / sigma) (float32; +-inf at the ends)."""
    return torch.log(1 - sigma) - torch.log(sigma)


@dataclass(frozen=True)
class SolverState:
    """Everything a solver needs to go on after ``step`` finished steps: the current ``x`` and its history.

    ``history`` holds the tensors of earlier steps the multistep rules use (UniPC: the last data
    predictions and the uncorrected x; DPM++: the previous data prediction); ``order`` is UniPC's
    last order. Saved after a step and handed back as ``resume``, it continues bit-identically.
    """

    step: int
    x: torch.Tensor
    history: dict[str, torch.Tensor] = field(default_factory=dict)
    order: int = 1


Checkpoint = Callable[[SolverState], None]
Project = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``project(x, sigma) -> x`` after every step's update (``sigma``: the noise level x is at now): fixed parts of the
latent put back (Wan2.2 TI2V's image frame; an extension's leading frames, noised to ``sigma``),
before the next evaluation and before the state is checkpointed (a UniPC corrector recomputes from its own
previous x, as the official scheduler does with its ``last_sample``)."""


def _projected(x: torch.Tensor, project: Project | None, sigma: torch.Tensor) -> torch.Tensor:
    return x if project is None else project(x, sigma)


def _start(x: torch.Tensor, resume: SolverState | None, schedule: Schedule) -> tuple[int, torch.Tensor, dict]:
    if resume is None:
        return 0, x, {}
    if not 0 < resume.step <= schedule.steps or resume.x.shape != x.shape:
        raise ValueError(f"cannot resume at step {resume.step} of {schedule.steps} with x {tuple(resume.x.shape)}")
    return resume.step, resume.x.to(device=x.device, dtype=x.dtype), dict(resume.history)


def euler(denoise: Denoise, x: torch.Tensor, schedule: Schedule, callback: StepCallback | None = None,
          checkpoint: Checkpoint | None = None, resume: SolverState | None = None,
          project: Project | None = None) -> torch.Tensor:
    """First-order steps ``x += (sigma_next - sigma) v``; exact when the flow is constant along the path."""
    sigmas = schedule.sigmas
    first, x, _ = _start(x, resume, schedule)
    for i in range(first, schedule.steps):
        v = denoise(x, schedule.timesteps[i])
        x0 = x - sigmas[i] * v
        x = _projected(x + (sigmas[i + 1] - sigmas[i]) * v, project, sigmas[i + 1])
        if checkpoint:
            checkpoint(SolverState(i + 1, x, {"x0": x0}))  # the prediction: what a render stopped here hands out
        if callback:
            callback(i, x, x0)
    return x


def dpmpp_2m(denoise: Denoise, x: torch.Tensor, schedule: Schedule, callback: StepCallback | None = None,
             checkpoint: Checkpoint | None = None, resume: SolverState | None = None,
             project: Project | None = None) -> torch.Tensor:
    """DPM-Solver++ (2M, midpoint) on data predictions ``x0 = x - sigma v``.

    First order on the first step and on the last (the schedule ends at sigma 0); on the
    second-to-last too when there are fewer than 15 steps.
    """
    sigmas = schedule.sigmas
    n = schedule.steps
    first, x, history = _start(x, resume, schedule)
    prev_x0 = history.get("prev_x0")
    for i in range(first, n):
        x0 = x - sigmas[i] * denoise(x, schedule.timesteps[i])
        s, s_next = sigmas[i], sigmas[i + 1]
        h = _lambda(s_next) - _lambda(s)
        decay = torch.exp(-h) - 1.0
        first_order = prev_x0 is None or i == n - 1  # the first step, also of a start without history
        x_next = (s_next / s) * x - (1 - s_next) * decay * x0
        if not first_order:
            r = (_lambda(s) - _lambda(sigmas[i - 1])) / h
            x_next = x_next - 0.5 * (1 - s_next) * decay * ((1.0 / r) * (x0 - prev_x0))
        x, prev_x0 = _projected(x_next, project, sigmas[i + 1]), x0
        if checkpoint:
            checkpoint(SolverState(i + 1, x, {"prev_x0": prev_x0}))
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


def unipc(denoise: Denoise, x: torch.Tensor, schedule: Schedule, callback: StepCallback | None = None,
          checkpoint: Checkpoint | None = None, resume: SolverState | None = None,
          project: Project | None = None) -> torch.Tensor:
    """UniPC (predictor UniP-2 + corrector UniC, bh2) on data predictions ``x0 = x - sigma v``.

    Step i evaluates the model at x_i, first corrects x_i with that evaluation (UniC, from the
    second step on), then predicts x_{i+1} (UniP). Orders warm up from 1 and drop to 1 on the last
    step.
    """
    sigmas = schedule.sigmas
    lam = _lambda(sigmas)
    n = schedule.steps
    first, x, history = _start(x, resume, schedule)
    x0s = [history[k] for k in ("x0_older", "x0_last") if k in history]  # the last ORDER data predictions
    last_x = history.get("last_x")
    last_order = resume.order if resume is not None else 1
    for i in range(first, n):
        x0 = x - sigmas[i] * denoise(x, schedule.timesteps[i])
        if last_x is not None:  # from the second step on (a start at step k without history: its second step)
            x = _unic(last_x, x0, x0s, sigmas, lam, i, last_order)
        x0s = (x0s + [x0])[-ORDER:]
        order = min(ORDER, n - i, len(x0s))
        last_x, last_order = x, order
        d1 = 0
        if order == 2:
            rk = (lam[i - 1] - lam[i]) / (lam[i + 1] - lam[i])
            d1 = 0.5 * (x0s[-2] - x0s[-1]) / rk
        x = _projected(_unipc_update(x, sigmas[i], sigmas[i + 1], x0, d1), project, sigmas[i + 1])
        if checkpoint:
            saved = {"last_x": last_x, "x0_last": x0s[-1], **({"x0_older": x0s[0]} if len(x0s) > 1 else {})}
            checkpoint(SolverState(i + 1, x, saved, last_order))
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
