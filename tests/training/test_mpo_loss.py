"""The MPO loss on fixed logits: every term and the weighted sum equal the official formula (values), BCO-pair's
running mean included; TRL's own ``dpo_loss`` (the version the official InternVL MPO pins) is a dev-only oracle."""

from __future__ import annotations

import ast
import importlib.util
import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mini_internvl_adapt.training.mpo import (
    RunningMoments,
    bco_batch_reward,
    mpo_loss,
    sequence_logps,
    sft_loss,
)
from mini_internvl_adapt.training.mpo_config import MPOSection

IGNORE = -100
SETTINGS = MPOSection()  # the official defaults


def _batch(seed: int, pairs: int = 3, length: int = 9, vocab: int = 13) -> tuple[torch.Tensor, ...]:
    """Policy and reference logits of 2 x pairs rows (chosen, then rejected) and their labels."""
    g = torch.Generator().manual_seed(seed)
    policy = torch.randn(2 * pairs, length, vocab, generator=g, dtype=torch.float64).float() * 2
    ref = torch.randn(2 * pairs, length, vocab, generator=g, dtype=torch.float64).float() * 2
    labels = torch.randint(0, vocab, (2 * pairs, length), generator=g)
    for row in range(2 * pairs):  # a prompt of 2..4 ignored tokens, then the answer, then right padding
        start, end = 2 + row % 3, length - row % 2
        labels[row, :start] = IGNORE
        labels[row, end:] = IGNORE
    return policy, ref, labels


def _logp_sum(logits: torch.Tensor, labels: torch.Tensor, row: int) -> float:
    """Sum over answer tokens of log p(label t+1 | logits t), one token at a time in float64."""
    total = 0.0
    for t in range(labels.shape[1] - 1):
        target = int(labels[row, t + 1])
        if target == IGNORE:
            continue
        values = [float(v) for v in logits[row, t]]
        top = max(values)
        total += values[target] - top - math.log(sum(math.exp(v - top) for v in values))
    return total


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def test_sequence_logps_sums_the_answer_tokens_log_probs() -> None:
    policy, _, labels = _batch(0)
    logps, counts = sequence_logps(policy, labels)
    for row in range(labels.shape[0]):
        assert logps[row].item() == pytest.approx(_logp_sum(policy, labels, row), abs=1e-4)
        assert int(counts[row]) == int((labels[row, 1:] != IGNORE).sum())


def test_every_term_and_the_weighted_sum_equal_the_official_formula() -> None:
    running = RunningMoments()
    rewards_so_far: list[float] = []
    beta = SETTINGS.beta
    for seed in range(4):  # four micro-batches: delta moves with them
        policy, ref, labels = _batch(seed)
        pairs = labels.shape[0] // 2
        pl, pt = sequence_logps(policy, labels)
        rl, _ = sequence_logps(ref, labels)
        pc, pr, rc, rr = pl[:pairs], pl[pairs:], rl[:pairs], rl[pairs:]
        running.update(bco_batch_reward(pc, pr, rc, rr, beta))
        terms = mpo_loss(pc, pr, rc, rr, sft_loss(pc, pt[:pairs]), running.mean, SETTINGS)

        # The official formula, written out in float64 from per-token log-probs.
        c = [_logp_sum(policy, labels, i) for i in range(pairs)]
        r = [_logp_sum(policy, labels, pairs + i) for i in range(pairs)]
        c0 = [_logp_sum(ref, labels, i) for i in range(pairs)]
        r0 = [_logp_sum(ref, labels, pairs + i) for i in range(pairs)]
        rewards_so_far.append(sum(beta * (a - b) for a, b in zip(c + r, c0 + r0)) / (2 * pairs))
        delta = sum(rewards_so_far) / len(rewards_so_far)  # the running mean, this batch included
        assert running.mean == pytest.approx(delta, abs=1e-5)
        sigmoid = [-_log_sigmoid(beta * ((c[i] - r[i]) - (c0[i] - r0[i]))) for i in range(pairs)]
        bco = [
            -_log_sigmoid(beta * (c[i] - c0[i]) - delta) - _log_sigmoid(-(beta * (r[i] - r0[i]) - delta))
            for i in range(pairs)
        ]
        chosen_tokens = sum(int((labels[i, 1:] != IGNORE).sum()) for i in range(pairs))
        nll = -sum(c) / chosen_tokens
        total = sum(0.8 * s + 0.2 * b for s, b in zip(sigmoid, bco)) / pairs + 1.0 * nll

        assert terms.sigmoid.tolist() == pytest.approx(sigmoid, abs=1e-5)
        assert terms.bco_pair.tolist() == pytest.approx(bco, abs=1e-5)
        assert terms.sft.item() == pytest.approx(nll, abs=1e-5)
        assert terms.loss.item() == pytest.approx(total, abs=1e-5)
        assert terms.chosen_rewards.tolist() == pytest.approx(
            [beta * (a - b) for a, b in zip(c, c0)], abs=1e-5
        )


def test_weights_and_beta_come_from_the_settings() -> None:
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -2.5])
    sft = torch.tensor(1.25)
    only_sft = mpo_loss(
        pc, pr, rc, rr, sft, 0.0, MPOSection(sigmoid_weight=0, bco_pair_weight=0, sft_weight=2)
    )
    assert only_sft.loss.item() == pytest.approx(2.5)
    only_dpo = mpo_loss(pc, pr, rc, rr, sft, 0.0, MPOSection(beta=0.5, bco_pair_weight=0, sft_weight=0))
    logits = (pc - pr) - (rc - rr)
    assert only_dpo.loss.item() == pytest.approx(float((-F.logsigmoid(0.5 * logits) * 0.8).mean()))


def test_gradients_flow_to_the_policy_only() -> None:
    policy, ref, labels = _batch(7)
    policy.requires_grad_(True)
    pairs = labels.shape[0] // 2
    pl, pt = sequence_logps(policy, labels)
    with torch.no_grad():
        rl, _ = sequence_logps(ref, labels)
    terms = mpo_loss(
        pl[:pairs], pl[pairs:], rl[:pairs], rl[pairs:], sft_loss(pl[:pairs], pt[:pairs]), 0.1, SETTINGS
    )
    terms.loss.backward()
    assert policy.grad is not None and torch.isfinite(policy.grad).all() and policy.grad.abs().sum() > 0
    # Positions whose next label is ignored get no gradient.
    ignored = torch.cat([labels[:, 1:] == IGNORE, torch.ones(labels.shape[0], 1, dtype=torch.bool)], dim=1)
    assert policy.grad[ignored].abs().sum() == 0


def test_running_moments_state_round_trips() -> None:
    a, b = RunningMoments(), RunningMoments()
    for value in (0.3, -0.1, 0.7):
        a.update(torch.tensor(value))
    b.load_state_dict(a.state_dict())
    a.update(torch.tensor(0.2))
    b.update(torch.tensor(0.2))
    assert a.state_dict() == b.state_dict()


# -- TRL as an oracle (dev only) ----------------------------------------------------------------------------


def _trl_functions() -> tuple[types.FunctionType, type]:
    """TRL's ``DPOTrainer.dpo_loss`` and ``RunningMoments``, compiled from its installed sources.

    Only the two definitions are taken (trl itself does not import next to transformers 5); skips when TRL
    is not installed or its DPO loss has no BCO running mean (TRL >= 0.22 dropped it; the official InternVL
    MPO pins trl==0.21.0).
    """
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("trl is not installed (pip install trl==0.21.0 for this oracle)")
    root = Path(next(iter(spec.submodule_search_locations)))
    sources = {
        name: (root / "trainer" / f"{name}.py").read_text(encoding="utf-8")
        for name in ("dpo_trainer", "utils", "dpo_config")
    }
    if "self.running.update(rewards)" not in sources["dpo_trainer"]:
        pytest.skip("this trl's bco_pair has no running mean (the official MPO uses trl 0.21)")
    namespace: dict = {"torch": torch, "F": F}
    exec(
        "from dataclasses import dataclass\nfrom enum import Enum\nimport math\nAccelerator = object",
        namespace,
    )
    wanted = [
        ("dpo_config", "FDivergenceType"), ("dpo_config", "FDivergenceConstants"), ("utils", "cap_exp"),
        ("dpo_trainer", "dpo_loss"), ("utils", "RunningMoments"),
    ]  # fmt: skip
    pieces = []
    for module, name in wanted:
        for node in ast.walk(ast.parse(sources[module])):
            if not (isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name):
                continue
            node.decorator_list = [d for d in node.decorator_list if "no_grad" not in ast.unparse(d)]
            if name == "RunningMoments":
                node.decorator_list = [ast.Name("dataclass", ast.Load())]
            pieces.append(ast.unparse(node))
            break
    if len(pieces) != len(wanted):
        pytest.skip("this trl does not define dpo_loss / RunningMoments where 0.21 does")
    exec("\n\n".join(pieces), namespace)
    return namespace["dpo_loss"], namespace["RunningMoments"]


def test_trl_dpo_loss_is_an_oracle_for_sigmoid_bco_pair_and_sft() -> None:
    dpo_loss, trl_running_class = _trl_functions()
    accelerator = types.SimpleNamespace(use_distributed=False, device=torch.device("cpu"))
    trainer = types.SimpleNamespace(
        accelerator=accelerator, reference_free=False, f_divergence_type="reverse_kl", f_divergence_params={},
        beta=SETTINGS.beta, label_smoothing=0.0, running=trl_running_class(accelerator),
    )  # fmt: skip
    ours = RunningMoments()
    for seed in range(5):
        policy, ref, labels = _batch(100 + seed)
        pairs = labels.shape[0] // 2
        pl, pt = sequence_logps(policy, labels)
        rl, _ = sequence_logps(ref, labels)
        pc, pr, rc, rr = pl[:pairs], pl[pairs:], rl[:pairs], rl[pairs:]
        nll = sft_loss(pc, pt[:pairs])
        ours.update(bco_batch_reward(pc, pr, rc, rr, SETTINGS.beta))
        terms = mpo_loss(pc, pr, rc, rr, nll, ours.mean, SETTINGS)
        expected = 0
        for loss_type, weight in (("sigmoid", 0.8), ("bco_pair", 0.2), ("sft", 1.0)):
            losses, _, _ = dpo_loss(trainer, pc, pr, rc, rr, loss_type, {"nll_loss": nll})
            expected = expected + losses * weight
            part = {"sigmoid": terms.sigmoid, "bco_pair": terms.bco_pair, "sft": nll.expand(pairs)}[loss_type]
            torch.testing.assert_close(part, losses, atol=1e-6, rtol=1e-6)
        assert ours.mean == pytest.approx(trainer.running.mean, abs=1e-7)
        assert ours.state_dict() == pytest.approx(
            {k: getattr(trainer.running, k) for k in ("mean", "std", "var", "count")}, abs=1e-7
        )
        torch.testing.assert_close(terms.loss, expected.mean(), atol=1e-6, rtol=1e-6)
