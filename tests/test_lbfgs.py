"""The batched L-BFGS solver and the probe objective it minimizes (probing.probes.lbfgs, torch_probe)."""

from __future__ import annotations

import pytest
import torch

from probing.probes import torch_probe
from probing.probes.lbfgs import minimize


def _quadratics(n_problems: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Matrices ``[B, P, P]`` (positive definite, condition number 10^(i/2) for problem i) and vectors."""
    g = torch.Generator().manual_seed(seed)
    mats = []
    for i in range(n_problems):
        q, _ = torch.linalg.qr(torch.randn(size, size, generator=g, dtype=torch.float64))
        eig = torch.logspace(0, i / 2, size, dtype=torch.float64)  # problem 0 is the identity's spectrum
        mats.append(q @ torch.diag(eig) @ q.T)
    return torch.stack(mats), torch.randn(n_problems, size, generator=g, dtype=torch.float64)


def test_each_problem_converges_to_its_own_minimum_at_its_own_pace() -> None:
    a, b = _quadratics(4, 30)
    seen: list[int] = []

    def objective(theta: torch.Tensor, problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(len(problems))
        ax = torch.einsum("bij,bj->bi", a[problems], theta)
        return 0.5 * (theta * ax).sum(1) - (b[problems] * theta).sum(1), ax - b[problems]

    result = minimize(objective, torch.zeros(4, 30, dtype=torch.float64), max_iter=300, tol_grad=1e-7, tol_change=0.0)
    expected = torch.linalg.solve(a, b)
    assert torch.allclose(result.theta, expected, atol=1e-6)
    assert result.converged.all()
    its = result.iterations.tolist()
    assert its[0] < its[-1]  # the well-conditioned problem stops early ...
    assert min(seen) < 4  # ... and leaves the batch: later evaluations run fewer problems


def test_a_problem_that_runs_out_of_iterations_is_reported_unconverged() -> None:
    a, b = _quadratics(2, 30)

    def objective(theta: torch.Tensor, problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ax = torch.einsum("bij,bj->bi", a[problems], theta)
        return 0.5 * (theta * ax).sum(1) - (b[problems] * theta).sum(1), ax - b[problems]

    result = minimize(objective, torch.zeros(2, 30, dtype=torch.float64), max_iter=3, tol_grad=1e-10)
    assert result.iterations[1] == 3 and not result.converged[1]


@pytest.mark.parametrize("n_classes", [2, 5])
def test_probe_loss_and_its_written_out_gradient_match_autograd(n_classes: int) -> None:
    """Value and gradient of `_Loss`, chunked and on a subset of layers, against autograd of the formula."""
    g = torch.Generator().manual_seed(1)
    n_layers, n, d = 3, 50, 8
    x = torch.randn(n_layers, n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, n_classes, (n,), generator=g)
    lambdas = torch.tensor([0.1, 0.01, 1.0], dtype=torch.float64)
    n_out = 1 if n_classes == 2 else n_classes
    loss = torch_probe._Loss(x, y, n_out, lambdas, chunk_rows=7)  # several chunks, a ragged last one
    problems = torch.tensor([0, 2])
    theta = torch.randn(2, n_out * d + n_out, generator=g, dtype=torch.float64, requires_grad=True)

    value, grad = loss(theta.detach(), problems)

    w, bias = theta[:, : n_out * d].view(2, n_out, d), theta[:, n_out * d :]
    z = x[problems] @ w.transpose(1, 2) + bias[:, None, :]
    if n_out == 1:
        ce = torch.nn.functional.binary_cross_entropy_with_logits(
            z[..., 0], y.to(z.dtype).expand(2, n), reduction="none"
        ).mean(1)
    else:
        ce = torch.stack([torch.nn.functional.cross_entropy(z[i], y) for i in range(2)])
    expected = ce + 0.5 * lambdas[problems] * (w * w).sum(dim=(1, 2))
    expected.sum().backward()
    assert torch.allclose(value, expected.detach(), atol=1e-10)
    assert theta.grad is not None and torch.allclose(grad, theta.grad, atol=1e-10)


def test_batched_probe_training_reaches_the_same_optimum_as_torch_lbfgs_per_layer() -> None:
    g = torch.Generator().manual_seed(2)
    n_layers, n, d, k = 3, 400, 10, 4
    x = torch.randn(n_layers, n, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    x[1] *= 3.0  # layers of different scale converge at different paces
    lambdas = torch.full((n_layers,), 1e-2)
    w, b = torch_probe._train(x, y, k, lambdas, max_iter=500)
    loss = torch_probe._Loss(x, y, k, lambdas, chunk_rows=n)
    ours, _ = loss(torch.cat([w.flatten(1), b], dim=1), torch.arange(n_layers))
    for i in range(n_layers):
        theta = torch.zeros(1, k * d + k, requires_grad=True)
        opt = torch.optim.LBFGS([theta], max_iter=500, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

        def closure(i: int = i, theta: torch.Tensor = theta) -> torch.Tensor:
            value, grad = loss(theta.detach(), torch.tensor([i]))
            theta.grad = grad
            return value.sum()

        opt.step(closure)
        reference, _ = loss(theta.detach(), torch.tensor([i]))
        assert ours[i].item() == pytest.approx(reference.item(), abs=1e-5)
