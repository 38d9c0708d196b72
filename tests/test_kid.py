"""KID against a direct O(N²) computation and against the exact MMD² of two Gaussians."""
import numpy as np
import pytest

from sosvae_core import kid


def direct_mmd2(x, y):
    """The unbiased MMD², one kernel evaluation at a time."""
    def k(a, b):
        return (float(np.dot(a, b)) / len(a) + 1.0) ** 3
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_the_estimate_equals_the_direct_sum():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(17, 9)), rng.normal(0.3, 1.2, size=(23, 9))
    assert kid.mmd2_unbiased(x, y) == pytest.approx(direct_mmd2(x, y), rel=1e-12)


def test_two_gaussians_give_the_exact_mmd():
    """In one dimension k(x, y) = (xy + 1)³ = x³y³ + 3x²y² + 3xy + 1, so the population MMD² is
    (m₃(X) − m₃(Y))² + 3(m₂(X) − m₂(Y))² + 3(m₁(X) − m₁(Y))², with m_j the raw moments;
    for N(a, 1): m₁ = a, m₂ = 1 + a², m₃ = a³ + 3a."""
    def moments(a):
        return np.array([a, 1 + a * a, a ** 3 + 3 * a])
    a, b = 0.0, 0.5
    exact = float(np.dot([3, 3, 1], (moments(a) - moments(b)) ** 2))
    rng = np.random.default_rng(1)
    estimates = [kid.mmd2_unbiased(rng.normal(a, 1, (400, 1)), rng.normal(b, 1, (400, 1))) for _ in range(40)]
    se = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - exact) < 4 * se, (np.mean(estimates), exact, se)
    same = [kid.mmd2_unbiased(rng.normal(a, 1, (400, 1)), rng.normal(a, 1, (400, 1))) for _ in range(40)]
    assert abs(np.mean(same)) < 4 * np.std(same) / np.sqrt(len(same))  # unbiased: 0 for equal distributions


def test_kid_over_subsets_reports_mean_and_spread():
    rng = np.random.default_rng(2)
    gen, ref = rng.normal(1.0, 1, (120, 16)), rng.normal(0, 1, (100, 16))
    out = kid.kernel_inception_distance(gen, ref, n_subsets=20, seed=0)
    assert out["subset_size"] == 50 and out["n_subsets"] == 20
    assert out["kid"] > 0 and out["kid_std"] > 0
    assert out == kid.kernel_inception_distance(gen, ref, n_subsets=20, seed=0)  # seeded
    full = kid.kernel_inception_distance(gen[:100], ref, n_subsets=1, subset_size=100)
    assert full["kid"] == pytest.approx(kid.SCALE * kid.mmd2_unbiased(gen[:100], ref), rel=1e-12)


def test_bad_sizes_say_what_to_give():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match="subset_size"):
        kid.kernel_inception_distance(x, x, subset_size=5)
    with pytest.raises(ValueError, match="at least 2 images"):
        kid.mmd2_unbiased(x[:1], x)
