"""slerp (eq. 8, Appendix D) against the formula, and its degenerate cases."""
import torch

from sosvae_core.slerp import slerp


def test_slerp_matches_eq8_and_endpoints():
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(2, 25, generator=g, dtype=torch.float64)
    theta = torch.arccos(a @ b / (a.norm() * b.norm()))
    for t in (0.0, 0.25, 0.5, 1.0):
        want = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
        torch.testing.assert_close(slerp(a, b, t), want)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    # a vector of t gives a path
    path = slerp(a, b, torch.linspace(0, 1, 5, dtype=torch.float64))
    assert path.shape == (5, 25)
    torch.testing.assert_close(path[2], slerp(a, b, 0.5))


def test_slerp_degenerate_cases():
    a = torch.tensor([3.0, 4.0], dtype=torch.float64)
    # a ≈ b: the formula's limit, linear interpolation, and no NaN
    torch.testing.assert_close(slerp(a, a * (1 + 1e-12), 0.3), a * (1 + 0.3e-12))
    torch.testing.assert_close(slerp(a, 2 * a, 0.5), 1.5 * a)
    # a ≈ −b: a half-turn through a vector orthogonal to a, norm preserved
    mid = slerp(a, -a, 0.5)
    assert torch.isfinite(mid).all()
    assert abs(float(mid @ a)) < 1e-9 and abs(float(mid.norm()) - 5.0) < 1e-9
    torch.testing.assert_close(slerp(a, -a, 1.0), -a)
    torch.testing.assert_close(slerp(a, -a, 0.0), a)
    quarter = slerp(a, -a, 0.25)
    assert abs(float(quarter.norm()) - 5.0) < 1e-9
