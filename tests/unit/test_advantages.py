import pytest
import torch

from entropy_rl.ops.advantages import available_advantages, compute_advantages


def test_grpo_hand_worked():
    # group 1: rewards (1, 0): mean 0.5, unbiased std sqrt(0.5) = 0.70711 -> A = +-0.5/0.70711 = +-0.70711
    # group 2: (0, 0): no variance -> A = 0
    adv = compute_advantages("grpo", torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=2)
    torch.testing.assert_close(adv, torch.tensor([0.70711, -0.70711, 0.0, 0.0]), atol=1e-4, rtol=0)


def test_dr_grpo_drops_std():
    # (1, 0, 0, 1) mean 0.5 -> A = R - 0.5
    adv = compute_advantages(
        "grpo", torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4, scale_by_std=False
    )
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    torch.testing.assert_close(
        compute_advantages("dr_grpo", torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4), adv
    )


def test_rloo_hand_worked():
    # (3, 1, 2): A_1 = 3 - (1+2)/2 = 1.5, A_2 = 1 - 2.5 = -1.5, A_3 = 2 - 2 = 0
    adv = compute_advantages("rloo", torch.tensor([3.0, 1.0, 2.0]), group_size=3)
    torch.testing.assert_close(adv, torch.tensor([1.5, -1.5, 0.0]))


def _loop_grpo(rewards: list[float], g: int, scale: bool) -> list[float]:
    out = []
    for k in range(0, len(rewards), g):
        grp = rewards[k : k + g]
        mean = sum(grp) / g
        std = (sum((x - mean) ** 2 for x in grp) / (g - 1)) ** 0.5
        out += [(x - mean) / (std + 1e-6) if scale else x - mean for x in grp]
    return out


@pytest.mark.parametrize("scale", [True, False])
def test_grpo_loop_vs_vectorised(scale):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 3, (24,), generator=gen).float()
    got = compute_advantages("grpo", rewards, group_size=6, scale_by_std=scale)
    want = torch.tensor(_loop_grpo(rewards.tolist(), 6, scale))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_rloo_loop_vs_vectorised():
    rewards = torch.tensor([0.0, 1.0, 1.0, 0.5, 2.0, 0.0, 0.0, 1.0])
    want = []
    for k in range(0, 8, 4):
        grp = rewards[k : k + 4].tolist()
        want += [x - (sum(grp) - x) / 3 for x in grp]
    torch.testing.assert_close(
        compute_advantages("rloo", rewards, group_size=4), torch.tensor(want)
    )


def test_reinforce_pp_whitened():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    adv = compute_advantages("reinforce_pp_baseline", rewards, group_size=3)
    assert abs(adv.mean().item()) < 1e-6
    assert abs(adv.std().item() - 1.0) < 1e-4
    # order within the batch is preserved: group-centred values (1/3, -2/3, 1/3, 2/3, -1/3, -1/3)
    centred = torch.tensor([1 / 3, -2 / 3, 1 / 3, 2 / 3, -1 / 3, -1 / 3])
    torch.testing.assert_close(adv, (centred - centred.mean()) / (centred.std() + 1e-6))


def test_gae_hand_worked():
    # one sequence, 3 valid tokens + 1 pad, reward 1 at the last valid token, V = (0.5, 0.5, 0.5)
    # gamma 1, lambda 1: A_t = R - V_t = 0.5 each (Monte Carlo return minus value)
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.5, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv = compute_advantages("gae", rewards, values=values, mask=mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5, 0.5, 0.0]]))
    # lambda 0: A_t = r_t + V_{t+1} - V_t -> (0, 0, 0.5)
    adv0 = compute_advantages("gae", rewards, values=values, mask=mask, gamma=1.0, lam=0.0)
    torch.testing.assert_close(adv0, torch.tensor([[0.0, 0.0, 0.5, 0.0]]))
    # gamma 0.5, lambda 1: returns (0.25, 0.5, 1) -> A = (-0.25, 0, 0.5)
    adv1 = compute_advantages("gae", rewards, values=values, mask=mask, gamma=0.5, lam=1.0)
    torch.testing.assert_close(adv1, torch.tensor([[-0.25, 0.0, 0.5, 0.0]]))


def test_errors():
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'nope'.*grpo"):
        compute_advantages("nope", torch.zeros(4), group_size=2)
    with pytest.raises(ValueError, match="not a whole number of groups"):
        compute_advantages("grpo", torch.zeros(5), group_size=2)
    with pytest.raises(ValueError, match=r"group_size >= 2"):
        compute_advantages("rloo", torch.zeros(3), group_size=1)
    with pytest.raises(ValueError, match="gamma"):
        compute_advantages(
            "gae", torch.zeros(1, 2), values=torch.zeros(1, 2), mask=torch.ones(1, 2), gamma=2.0
        )
    assert {"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "gae"} <= set(
        available_advantages()
    )


def test_w_reinforce_hand_worked() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.75, 0.0])  # two groups of 3
    # u = 2R - 1 = [1, -1, 0, 1, 0.5, -1]; A = 0.1 * u where u > 0, else u; no group baseline
    adv = compute_advantages("w_reinforce", rewards, group_size=3)
    assert adv.tolist() == pytest.approx([0.1, -1.0, 0.0, 0.1, 0.05, -1.0], abs=1e-7)
    one = compute_advantages("w_reinforce", rewards, group_size=3, pos_weight=1.0)
    assert one.tolist() == [1.0, -1.0, 0.0, 1.0, 0.5, -1.0]  # REINFORCE on the +-1 reward
    nsr = compute_advantages("w_reinforce", rewards, group_size=3, pos_weight=0.0)
    assert nsr.tolist() == [0.0, -1.0, 0.0, 0.0, 0.0, -1.0]  # negative samples only
    # an all-wrong group still gets A = -1 each (GRPO would give 0)
    assert compute_advantages("w_reinforce", torch.zeros(2), group_size=2).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="pos_weight"):
        compute_advantages("w_reinforce", rewards, group_size=3, pos_weight=-0.1)
    with pytest.raises(ValueError, match="whole number of groups"):
        compute_advantages("w_reinforce", rewards, group_size=4)
