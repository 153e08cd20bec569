"""Few-step generation on Gaussian data, where every quantity is known in closed form.

Data x0 ~ N(mu, s^2 I), noise eps ~ N(0, I), x_t = alpha_t x0 + sigma_t eps. The marginal is
x_t ~ N(alpha mu, m^2 I) with m^2 = alpha^2 s^2 + sigma^2, the posterior mean is
E[x0 | x_t] = mu + alpha s^2 / m^2 (x_t - alpha mu) and E[eps | x_t] = sigma / m^2 (x_t - alpha mu).
The probability-flow ODE keeps u = (x_t - alpha mu) / m fixed, so it maps noise eps = u to data mu + s u.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from latentgen.generative.objective import Objective
from latentgen.generative.parameterization import Parameterization
from latentgen.generative.predictions import EpsPrediction, VelocityPrediction
from latentgen.generative.progressive_distillation import ddim_step, progressive_target
from latentgen.generative.samplers import EulerSampler
from latentgen.generative.schedules import CosinePath, RectifiedFlowPath, ScaledLinearSchedule
from latentgen.generative.straightness import ode_trajectory, path_straightness
from latentgen.generative.time_samplers import UniformTime

MU = torch.tensor([1.0, -0.5])
S = 0.3  # data std: far from the noise's 1, so the 1-rectified flow is visibly curved


def posterior(x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[x0 | x_t], E[eps | x_t]) for the Gaussian data; alpha, sigma broadcast against x_t (B, D)."""
    m2 = alpha**2 * S**2 + sigma**2
    centred = x_t - alpha * MU
    return MU + alpha * S**2 / m2 * centred, sigma / m2 * centred


def rf_teacher(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact 1-rectified-flow velocity E[eps - x0 | x_t] (Liu et al. 2023, Eq. 1) for the Gaussian data."""
    t = t.reshape(-1, 1)
    x0, eps = posterior(x, 1 - t, t)
    return eps - x0


def reflowed_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact 2-rectified flow: the couplings (u, mu + s u) are straight and do not cross, so the velocity
    is their constant direction u - (mu + s u) with u solved from x = (1 - t)(mu + s u) + t u."""
    t = t.reshape(-1, 1)
    u = (x - (1 - t) * MU) / ((1 - t) * S + t)
    return u - (MU + S * u)


RF = Parameterization(RectifiedFlowPath(), VelocityPrediction(), False)


def test_the_rectified_flow_ode_maps_noise_to_its_closed_form_sample():
    u = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    sample = EulerSampler(steps=400)(rf_teacher, RF, u)
    # first order: the error shrinks like 1/steps (the last step returns the posterior mean at t = 1/400)
    torch.testing.assert_close(sample, MU + S * u, atol=1e-2, rtol=0)
    coarse = EulerSampler(steps=40)(rf_teacher, RF, u)
    assert (coarse - (MU + S * u)).abs().max() > 5 * (sample - (MU + S * u)).abs().max()


def test_the_closed_form_1_rectified_flow_is_curved_and_the_2_rectified_flow_is_straight():
    u = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    teacher = path_straightness(ode_trajectory(rf_teacher, RF, u, steps=200))
    reflowed = path_straightness(ode_trajectory(reflowed_velocity, RF, u, steps=200))
    assert teacher.mean() > 1.1  # the Gaussian's 1-rectified flow turns
    torch.testing.assert_close(reflowed, torch.ones_like(reflowed), atol=1e-6, rtol=0)
    # one Euler step of the 2-rectified flow is the teacher's sample exactly
    torch.testing.assert_close(EulerSampler(steps=1)(reflowed_velocity, RF, u), MU + S * u, atol=1e-5, rtol=0)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t.reshape(-1, 1)], dim=1))


def test_one_reflow_round_on_teacher_pairs_straightens_the_flow():
    """Reflow as the stage does it: pairs (noise, teacher ODE sample) from the teacher's Euler solver, then
    the rectified-flow loss with the pair's noise; the student's paths are measurably straighter."""
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(2048, 2, generator=g)
    sample = EulerSampler(steps=100)(rf_teacher, RF, noise)
    # The student's regression target is the closed-form coupling direction noise - sample.
    torch.testing.assert_close(sample, MU + S * noise, atol=3e-2, rtol=0)
    objective = Objective(RectifiedFlowPath(), VelocityPrediction(), UniformTime())
    torch.manual_seed(0)
    student = MLP()
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    for _ in range(600):
        idx = torch.randint(0, noise.shape[0], (256,), generator=g)
        loss, _ = objective.loss(student, sample[idx], noise=noise[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    u = torch.randn(256, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = path_straightness(ode_trajectory(rf_teacher, RF, u, steps=100)).mean()
        after = path_straightness(ode_trajectory(student, RF, u, steps=100)).mean()
        one_step = EulerSampler(steps=1)(student, RF, u)
    assert after < 1.0 + 0.5 * (before - 1.0), (before, after)
    assert (one_step - (MU + S * u)).norm(dim=1).mean() < 0.15


def vp_teacher_x0(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    s = CosinePath()(t.double())
    return posterior(x.double(), s.alpha_t.reshape(-1, 1), s.sigma_t.reshape(-1, 1))[0].float()


@pytest.mark.parametrize("t,t_mid,t_next", [(0.9, 0.7, 0.5), (0.5, 0.3, 0.1), (0.25, 0.125, 0.0)])
def test_progressive_target_matches_the_closed_form_two_step_teacher(t, t_mid, t_next):
    """With the exact posterior mean every DDIM step keeps x on the line alpha mu + c u, so two teacher steps
    and the student target are scalars times u (Salimans & Ho, Alg. 2)."""
    u = torch.randn(16, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def ab(time: float) -> tuple[float, float]:
        return math.cos(math.pi * time / 2), math.sin(math.pi * time / 2)

    (a0, s0), (a1, s1), (a2, s2) = ab(t), ab(t_mid), ab(t_next)
    # x = alpha mu + c u: the data prediction is mu + alpha s^2 c / m^2 u, the noise prediction sigma c / m^2 u
    c0 = math.sqrt(a0**2 * S**2 + s0**2)  # start on the marginal: x_t = alpha mu + m u

    def step(c: float, a: float, s: float, a_n: float, s_n: float) -> float:
        m2 = a**2 * S**2 + s**2
        return a_n * a * S**2 * c / m2 + s_n * s * c / m2

    c2 = step(step(c0, a0, s0, a1, s1), a1, s1, a2, s2)
    r = s2 / s0
    expected = (a2 - r * a0) * MU.double() / (a2 - r * a0) + (c2 - r * c0) / (a2 - r * a0) * u

    x_t = (a0 * MU.double() + c0 * u).float()
    times = [torch.full((16,), v) for v in (t, t_mid, t_next)]
    target = progressive_target(vp_teacher_x0, CosinePath(), x_t, *times)
    torch.testing.assert_close(target.double(), expected, atol=1e-5, rtol=0)
    # the defining property: one student DDIM step with the target lands on the teacher's two steps
    sched = CosinePath()
    s_from = sched(times[0].double()).reshape_like(x_t)
    s_to = sched(times[2].double()).reshape_like(x_t)
    one = ddim_step(target.double(), x_t.double(), s_from, s_to)
    torch.testing.assert_close(one, a2 * MU.double() + c2 * u, atol=1e-5, rtol=0)


def test_progressive_target_to_the_data_is_the_teachers_last_prediction():
    """Ending at sigma = 0 the target is the teacher's two-step sample itself, and in eps space it is the
    closed-form noise the student must predict."""
    u = torch.randn(8, 2, generator=torch.Generator().manual_seed(5))
    t, t_mid = torch.full((8,), 0.6), torch.full((8,), 0.3)
    s = CosinePath()(t.double())
    x_t = (s.alpha_t.reshape(-1, 1) * MU + torch.sqrt(s.alpha_t**2 * S**2 + s.sigma_t**2).reshape(-1, 1) * u).float()
    target = progressive_target(vp_teacher_x0, CosinePath(), x_t, t, t_mid, torch.zeros(8))
    sm = CosinePath()(t_mid.double()).reshape_like(x_t)
    x_mid = ddim_step(vp_teacher_x0(x_t, t).double(), x_t.double(), CosinePath()(t.double()).reshape_like(x_t), sm)
    torch.testing.assert_close(target, vp_teacher_x0(x_mid.float(), t_mid), atol=1e-5, rtol=0)
    eps_target = EpsPrediction().target(
        target,
        (x_t - s.alpha_t.reshape(-1, 1).float() * target) / s.sigma_t.reshape(-1, 1).float(),
        CosinePath()(t).reshape_like(x_t),
    )
    assert torch.isfinite(eps_target).all()


def test_progressive_target_lands_on_the_data_at_t_0_on_a_discrete_schedule():
    """The samplers' last step returns x0_hat (t = 0 is the data): on a discrete schedule too, the two-step
    target ending there is the teacher's prediction at the midpoint, as the student will sample."""
    schedule = ScaledLinearSchedule()

    def teacher_x0(x, t):
        return 0.5 * x + t.reshape(-1, 1)

    x_t = torch.randn(4, 2, generator=torch.Generator().manual_seed(6))
    t, t_mid = torch.full((4,), 0.5), torch.full((4,), 0.25)
    target = progressive_target(teacher_x0, schedule, x_t, t, t_mid, torch.zeros(4))
    s, sm = schedule(t.double()).reshape_like(x_t), schedule(t_mid.double()).reshape_like(x_t)
    x_mid = ddim_step(teacher_x0(x_t, t).double(), x_t.double(), s, sm).float()
    torch.testing.assert_close(target, teacher_x0(x_mid, t_mid), atol=1e-5, rtol=0)
