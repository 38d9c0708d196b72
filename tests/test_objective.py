import torch
from torch.distributions import Normal, kl_divergence

from sosvae_core.objective import ConstraintConfig, Multipliers, lagrangian, standard_normal_kl


def test_kl_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    q = Normal(torch.randn(3, 5, generator=g), torch.rand(3, 5, generator=g) + 0.1)
    want = 0.5 * (q.scale ** 2 + q.loc ** 2 - 1 - 2 * q.scale.log()).sum(-1)
    torch.testing.assert_close(standard_normal_kl(q), want)
    # torch's kl_divergence bit for bit (the trainer's is written out so that torch.compile traces it)
    assert torch.equal(standard_normal_kl(q), kl_divergence(q, Normal(0.0, 1.0)).sum(-1))


def test_gradient_is_the_mdmm_update():
    # network gradient: ∇NLL + Σ (λ + c·(g − ξ))·∇g, with batch sums as in the paper's code
    theta = torch.tensor([0.3, -0.2], requires_grad=True)
    B = 4
    nll = (theta[0] ** 2) * torch.ones(B)
    kl = (theta[1] ** 2 + 10.0) * torch.ones(B)
    ent = (theta[0] * theta[1]) * torch.ones(B)
    m = Multipliers()
    with torch.no_grad():
        m.kl.fill_(2.0)
        m.entropy.fill_(0.5)
    cfg = ConstraintConfig(target_kl=9.0, target_entropy=1.0, damping=10.0)
    loss, viol = lagrangian(nll, kl, ent, m, cfg)
    loss.backward()
    v_kl = B * (theta[1] ** 2 + 10.0 - 9.0)
    v_h = B * (theta[0] * theta[1] - 1.0)
    t0, t1 = theta.detach()
    want = torch.stack([
        B * 2 * t0 + (0.5 + 10 * v_h) * B * t1,
        (2.0 + 10 * v_kl) * B * 2 * t1 + (0.5 + 10 * v_h) * B * t0,
    ]).detach()
    torch.testing.assert_close(theta.grad, want)
    torch.testing.assert_close(viol["kl"], v_kl.detach())
    torch.testing.assert_close(viol["entropy"], v_h.detach())


def test_multipliers_ascend_and_stay_non_negative():
    m = Multipliers()
    m.ascend({"kl": torch.tensor(3.0), "entropy": torch.tensor(-5.0)}, lr=1.0)
    assert m.kl.item() == 3.0 and m.entropy.item() == 0.0
    m.ascend({"kl": torch.tensor(-1.0)}, lr=0.5)
    assert m.kl.item() == 2.5


def test_no_targets_is_the_plain_elbo():
    nll, kl = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.25])
    loss, viol = lagrangian(nll, kl, torch.zeros(2), Multipliers(), ConstraintConfig(None, None))
    assert float(loss) == 3.75 and viol == {}
    loss, viol = lagrangian(nll, None, torch.zeros(2), Multipliers(), ConstraintConfig(45.0, None))
    assert float(loss) == 3.0 and viol == {}


def test_reduce_uses_the_global_violation():
    m = Multipliers()
    nll = torch.zeros(2)
    kl = torch.tensor([1.0, 1.0], requires_grad=True)
    cfg = ConstraintConfig(target_kl=0.0, target_entropy=None, damping=1.0)
    loss, viol = lagrangian(nll, kl, torch.zeros(2), m, cfg, reduce=lambda t: t * 3)
    loss.backward()
    assert float(viol["kl"]) == 6.0
    torch.testing.assert_close(kl.grad, torch.full((2,), 6.0))


def test_one_sided_damping_leaves_a_satisfied_bound_alone():
    kl = torch.tensor([1.0, 1.0], requires_grad=True)  # g = 2 < ξ = 10: satisfied
    for one_sided, want in ((False, 10.0 * (2.0 - 10.0)), (True, 0.0)):
        kl.grad = None
        cfg = ConstraintConfig(target_kl=5.0, target_entropy=None, damping=10.0, one_sided_damping=one_sided)
        loss, _ = lagrangian(torch.zeros(2), kl, torch.zeros(2), Multipliers(), cfg)
        loss.backward()
        torch.testing.assert_close(kl.grad, torch.full((2,), want))
