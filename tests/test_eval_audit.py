"""Pairing evaluation audits: accuracy per position of the true tile and the letters answered, the shuffled
candidate order, pass@k from sampled completions; by hand and end to end through `geor1 eval pairing`."""

from __future__ import annotations

import csv
import itertools
import json
import math
import random
from types import SimpleNamespace

import pytest
import torch

from geor1 import Geor1Error
from geor1.data.sample import ChatSample, Prompt
from geor1.metrics.audit import letter_audit, paired_difference
from geor1.metrics.intervals import wilson_interval
from geor1.metrics.passk import mean_pass_at_k, pass_at_k, pass_at_k_ks
from geor1.tasks import get_task
from geor1.tasks.base import TargetError
from geor1.tasks.pairing import PairingTarget, PairingTask, shuffle_candidates


def _row(key: str, target: PairingTarget, letter: str | None, tokens: int = 5) -> dict:
    answer = "" if letter is None else letter
    return {"key": key, "text": f"<think>x</think><answer>{answer}</answer>", "tokens": tokens, "target": target}


def test_always_a_model_over_balanced_episodes():
    """K=4, every position true in 5 episodes; the model always answers A."""
    rows = [_row(f"e{i}", PairingTarget(4, i % 4), "A") for i in range(20)]
    metrics, preds = PairingTask().score(rows)
    assert metrics["pairing_acc"] == pytest.approx(0.25)
    pos = metrics["position_acc"]
    assert list(pos) == ["A", "B", "C", "D"]
    assert [pos[x]["acc"] for x in "ABCD"] == [1.0, 0.0, 0.0, 0.0]
    assert [pos[x]["n"] for x in "ABCD"] == [5, 5, 5, 5]
    assert (pos["A"]["ci95_low"], pos["A"]["ci95_high"]) == pytest.approx(wilson_interval(5, 5))
    assert (pos["B"]["ci95_low"], pos["B"]["ci95_high"]) == pytest.approx(wilson_interval(0, 5))
    letters = metrics["answer_letters"]
    assert letters["A"] == {"count": 20, "share": 1.0}
    assert all(letters[x] == {"count": 0, "share": 0.0} for x in "BCD")
    assert letters["unparseable"] == {"count": 0, "share": 0.0}
    assert metrics["max_letter"] == "A" and metrics["max_letter_share"] == 1.0
    for key in ("pairing_acc", "ci95_low", "ci95_high", "format_rate", "parse_rate", "mean_completion_tokens"):
        assert key in metrics  # the keys the demo and other tests read stay
    assert len(preds) == 20


def test_letter_audit_with_unparseable_and_off_candidate_answers():
    truths = ["A", "B", "B", "C", "A", "B"]
    answers = ["A", "B", None, "A", "", "C"]
    a = letter_audit(truths, answers)
    assert {x: p["correct"] for x, p in a["position_acc"].items()} == {"A": 1, "B": 1, "C": 0}
    assert sum(p["n"] for p in a["position_acc"].values()) == len(truths)
    counts = {x: v["count"] for x, v in a["answer_letters"].items()}
    assert counts == {"A": 2, "B": 1, "C": 1, "unparseable": 2}
    assert sum(v["share"] for v in a["answer_letters"].values()) == pytest.approx(1.0)
    assert a["max_letter"] == "A" and a["max_letter_share"] == pytest.approx(2 / 4)  # among the 4 read answers
    assert letter_audit([], [])["max_letter_share"] == 0.0
    with pytest.raises(ValueError, match="2 truths but 1 answers"):
        letter_audit(["A", "B"], ["A"])


def test_score_counts_a_letter_outside_the_candidates_as_unparseable():
    t = PairingTarget(2, 1)
    metrics, _ = PairingTask().score([_row("a", t, "B"), _row("b", t, "D"), _row("c", t, None)])
    assert metrics["answer_letters"]["unparseable"]["count"] == 2  # "D" is no candidate of K=2
    assert metrics["parse_rate"] == pytest.approx(1 / 3)
    assert metrics["position_acc"]["B"] == {
        "n": 3,
        "correct": 1,
        "acc": pytest.approx(1 / 3),
        "ci95_low": pytest.approx(wilson_interval(1, 3)[0]),
        "ci95_high": pytest.approx(wilson_interval(1, 3)[1]),
    }


def test_paired_difference():
    same = paired_difference([1, 0, 1, 1, 0, 1], [1, 0, 1, 1, 0, 1])
    assert same["diff"] == 0.0 and same["ci95_low"] < 0 < same["ci95_high"] and same["discordant"] == 0
    # no correlation (phi = 0): Newcombe's paired interval is the unpaired hybrid score interval
    first, second = [1, 1, 0, 0], [1, 0, 1, 0]
    d = paired_difference(first, second)
    p1 = p2 = 0.5
    l1, u1 = wilson_interval(2, 4)
    l2, u2 = wilson_interval(2, 4)
    assert d["diff"] == 0.0 and d["discordant"] == 2
    assert d["ci95_low"] == pytest.approx(-math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2))
    assert d["ci95_high"] == pytest.approx(math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2))
    # positive correlation narrows it against independent samples of the same accuracies
    corr = paired_difference([1] * 10 + [0] * 10, [1] * 9 + [0] * 10 + [1])
    indep = paired_difference([1] * 10 + [0] * 10, [1] * 5 + [0] * 5 + [1] * 5 + [0] * 5)
    assert corr["ci95_high"] - corr["ci95_low"] < indep["ci95_high"] - indep["ci95_low"]
    # all wrong before, all right after: a difference of 1, its interval inside [-1, 1] and above 0
    up = paired_difference([0] * 12, [1] * 12)
    assert up["diff"] == 1.0 and 0 < up["ci95_low"] < 1 and up["ci95_high"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="0 or 1"):
        paired_difference([2], [1])
    with pytest.raises(ValueError, match="2 outcomes against 1"):
        paired_difference([1, 0], [1])


def test_pass_at_k_matches_enumeration_of_all_k_subsets():
    for n in range(1, 7):
        for c in range(n + 1):
            outcomes = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)
    assert mean_pass_at_k([0, 1, 4], 4, [1, 2]) == pytest.approx({1: (0 + 0.25 + 1) / 3, 2: (0 + 0.5 + 1) / 3})
    assert pass_at_k_ks(1) == [1] and pass_at_k_ks(4) == [1, 2, 4] and pass_at_k_ks(5) == [1, 2, 4, 5]
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def _episode(key: str, k: int, answer: int, custom: str | None = None) -> ChatSample:
    """Images are distinct strings naming the tile: the test follows them through the shuffle."""
    task = PairingTask()
    target = PairingTarget(k, answer)
    images = ["ground", *(f"tile{i}" for i in range(k))]
    meta = {
        **task.target_to_meta(target),
        "candidates": [{"key": f"tile{i}"} for i in range(k)],
        "source_key": key,
    }
    return ChatSample(key, Prompt(custom or task.prompt(target), images, system="sys"), target, None, meta)


def test_shuffle_candidates_moves_the_answer_with_the_true_tile():
    seen = set()
    for seed in range(40):
        s = _episode("ep", 4, 2)
        t = shuffle_candidates(s, random.Random(seed))
        assert t.key == s.key and t.prompt.system == "sys" and t.prompt.images[0] == "ground"
        assert t.prompt.images[1 + t.target.answer] == "tile2"  # the true tile's image follows the answer index
        assert sorted(t.prompt.images[1:]) == sorted(s.prompt.images[1:])
        order = t.meta["candidate_order"]
        assert [t.prompt.images[1 + i] for i in range(4)] == [f"tile{j}" for j in order]
        assert [c["key"] for c in t.meta["candidates"]] == [f"tile{j}" for j in order]
        assert t.meta["answer"] == t.target.answer and t.meta["answer_letter"] == t.target.letter
        assert t.prompt.text == PairingTask().prompt(t.target)
        assert PairingTask().is_correct(f"<answer>{t.target.letter}</answer>", t.target)
        assert s.target == PairingTarget(4, 2) and s.prompt.images[3] == "tile2"  # the original is untouched
        seen.add(t.target.answer)
    assert seen == {0, 1, 2, 3}  # the true tile reaches every position
    custom = shuffle_candidates(_episode("ep", 2, 0, custom="Pick: <image> <image> <image>"), random.Random(0))
    assert custom.prompt.text == "Pick: <image> <image> <image>"  # a shard's own prompt is not the task's to rebuild


def test_shuffle_candidates_rejects_what_it_cannot_shuffle():
    geo = get_task("geolocate")
    target = geo.target_from_meta("g", {"lat": 1.0, "lon": 2.0})
    with pytest.raises(TargetError, match="needs a pairing target"):
        shuffle_candidates(ChatSample("g", Prompt("<image>", ["x"]), target), random.Random(0))
    s = _episode("ep", 3, 0)
    s.prompt.images.pop()
    with pytest.raises(TargetError, match="1 \\+ k = 4 images, got 3"):
        shuffle_candidates(s, random.Random(0))


def test_shuffled_samples_are_seeded_per_episode():
    from geor1.eval.runners import shuffled_samples

    eps = [_episode(f"e{i}", 4, i % 4) for i in range(6)]
    a = shuffled_samples(eps, seed=3)
    b = shuffled_samples(eps[2:], seed=3)  # another subset (--limit): the same orders for the same episodes
    assert [x.meta["candidate_order"] for x in a[2:]] == [x.meta["candidate_order"] for x in b]
    c = shuffled_samples(eps, seed=4)
    assert [x.meta["candidate_order"] for x in a] != [x.meta["candidate_order"] for x in c]


def test_compare_orders_flags_a_position_biased_model():
    from geor1.eval.runners import compare_orders

    task = PairingTask()
    # original order: the true tile always at A and the model always answers A (acc 1); shuffled: half at B
    orig = [_row(f"e{i}", PairingTarget(2, 0), "A") for i in range(20)]
    shuf = [_row(f"e{i}", PairingTarget(2, i % 2), "A") for i in range(20)]
    m, p = task.score(orig)
    sm, sp = task.score(shuf)
    out = compare_orders(m, p, sm, sp, seed=7)
    assert out["shuffled_pairing_acc"] == 0.5 and out["order_invariant"] is False
    assert out["order_diff"] == -0.5 and out["order_diff_ci95_high"] < 0 and out["order_discordant"] == 10
    assert out["shuffle_seed"] == 7 and out["shuffled"] is sm
    same = compare_orders(m, p, m, p, seed=0)
    assert same["order_invariant"] is True and same["order_diff"] == 0.0
    with pytest.raises(Geor1Error, match="same episodes"):
        compare_orders(m, p, sm, sp[::-1], seed=0)


def test_score_pass_at_k_groups_samples_by_episode():
    from geor1.eval.runners import score_pass_at_k

    t = PairingTarget(2, 0)
    answers = [["A", "B", "B", "B"], ["B", "B", "B", "B"], ["A", "A", "A", "A"]]  # c = 1, 0, 4 of n = 4
    rows = [
        {**_row(f"e{e}", t, letter), "episode": e, "sample": j}
        for e, group in enumerate(answers)
        for j, letter in enumerate(group)
    ]
    out = score_pass_at_k(PairingTask(), rows, 4)
    assert out["samples"] == 4 and out["sampled_acc"] == pytest.approx(5 / 12)
    assert out["pass@1"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert out["pass@2"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert out["pass@4"] == pytest.approx((1 + 0 + 1) / 3)
    assert "pass@3" not in out
    lo, hi = wilson_interval(2, 3)  # pass@4 = 2/3 over 3 episodes
    assert (out["pass@4_ci95_low"], out["pass@4_ci95_high"]) == pytest.approx((lo, hi))
    with pytest.raises(Geor1Error, match="has 3 samples, not 4"):
        score_pass_at_k(PairingTask(), rows[1:], 4)


class _FakePolicy:
    """Answers the letter given by the prompt's position in a call, and records the calls' arguments."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def generate(self, prompts, group_size=1, max_new_tokens=256, do_sample=True, temperature=1.0):
        self.calls.append(dict(n=len(prompts), group_size=group_size, do_sample=do_sample, temperature=temperature))
        texts = [f"<answer>{'AB'[j % 2]}</answer>" for _ in prompts for j in range(group_size)]
        return SimpleNamespace(texts=texts, lengths=torch.full((len(texts),), 3))


def test_sample_policy_rows_follow_their_episode():
    from geor1.eval.runners import run_policy, sample_policy

    eps = [_episode(f"e{i}", 2, 0) for i in range(5)]
    policy = _FakePolicy()
    rows = sample_policy(policy, eps, num_samples=3, temperature=0.7, batch_size=6)
    assert [c["n"] for c in policy.calls] == [2, 2, 1]  # batch_size // samples prompts a call
    assert all(c["group_size"] == 3 and c["do_sample"] and c["temperature"] == 0.7 for c in policy.calls)
    assert [(r["key"], r["episode"], r["sample"]) for r in rows] == [
        (f"e{e}", e, j) for e in range(5) for j in range(3)
    ]
    greedy = _FakePolicy()
    assert [r["key"] for r in run_policy(greedy, eps, batch_size=2)] == [f"e{i}" for i in range(5)]
    assert all(c["do_sample"] is False and c["group_size"] == 1 for c in greedy.calls)
    with pytest.raises(Geor1Error, match="temperature"):
        sample_policy(policy, eps, num_samples=2, temperature=0.0)


def test_write_results_renders_the_letter_tables(tmp_path):
    from geor1.eval.runners import compare_orders, write_results

    rows = [_row(f"e{i}", PairingTarget(2, i % 2), "A" if i < 6 else None) for i in range(8)]
    m, p = PairingTask().score(rows)
    m.update(compare_orders(m, p, dict(m), p, seed=0))
    write_results(tmp_path, m, p, "pairing evaluation")
    md = (tmp_path / "metrics.md").read_text()
    assert "| max_letter_share | 1.0000 |" in md and "| order_invariant | True |" in md
    assert "| A | 4 | 0.750 [" in md and "| B | 4 | 0.000 [" in md  # 3 of the 4 A episodes answered A
    assert "| unparseable | 0 | - | 2 | 0.250 |" in md
    assert "## Candidates shuffled" in md
    assert "{" not in md  # nested values are tables, not dict reprs
    assert json.loads((tmp_path / "metrics.json").read_text())["position_acc"]["A"]["n"] == 4


@pytest.fixture(scope="module")
def test_episodes(tmp_path_factory):
    from conftest import random_episodes

    from geor1.data.geoworld import build_geoworld
    from geor1.model.tiny import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("audit")
    world = build_geoworld(root / "gw", num_train=2, num_val=2, num_test=6, seed=3)
    return random_episodes(world, root / "ep", splits=("test",)), save_tiny_checkpoint(root / "model")


def test_eval_pairing_cli_reports_the_audits(test_episodes, tmp_path):
    from geor1.cli import main

    episodes, model = test_episodes
    out = tmp_path / "out"
    args = ["eval", "pairing", "--model", str(model), "--episodes", str(episodes), "--out", str(out)]
    args += ["--max-new-tokens", "4", "--max-pixels", "12544", "--batch-size", "4"]
    main([*args, "--shuffle-candidates", "--shuffle-seed", "5", "--samples", "3", "--temperature", "1.5"])
    m = json.loads((out / "metrics.json").read_text())
    n = m["n"]
    assert n == 6
    for key in ("pairing_acc", "ci95_low", "ci95_high", "format_rate", "parse_rate", "mean_completion_tokens"):
        assert key in m
    assert sum(p["n"] for p in m["position_acc"].values()) == n
    assert sum(p["correct"] for p in m["position_acc"].values()) == round(m["pairing_acc"] * n)
    assert sum(v["count"] for v in m["answer_letters"].values()) == n
    assert m["answer_letters"]["unparseable"]["count"] == round((1 - m["parse_rate"]) * n)
    assert 0.0 <= m["max_letter_share"] <= 1.0
    sh = m["shuffled"]
    assert sh["n"] == n and m["shuffled_pairing_acc"] == sh["pairing_acc"] and m["shuffle_seed"] == 5
    assert m["order_invariant"] == (m["ci95_low"] <= sh["pairing_acc"] <= m["ci95_high"])
    assert m["order_diff"] == pytest.approx(sh["pairing_acc"] - m["pairing_acc"])
    assert m["order_diff_ci95_low"] <= m["order_diff"] <= m["order_diff_ci95_high"]
    assert m["samples"] == 3 and m["temperature"] == 1.5
    assert {k for k in m if k.startswith("pass@") and "ci95" not in k} == {"pass@1", "pass@2", "pass@3"}
    assert all(m[f"pass@{k}_ci95_low"] <= m[f"pass@{k}"] <= m[f"pass@{k}_ci95_high"] for k in (1, 2, 3))
    assert 0.0 <= m["pass@1"] <= m["pass@2"] <= m["pass@3"] <= 1.0
    assert m["pass@1"] == pytest.approx(m["sampled_acc"])
    with open(out / "predictions.csv") as f, open(out / "predictions_shuffled.csv") as g:
        assert [r["key"] for r in csv.DictReader(f)] == [r["id"] for r in csv.DictReader(g)]
    md = (out / "metrics.md").read_text()
    assert "## Position of the true tile and letters answered" in md and "| pass@2 |" in md


def test_eval_pairing_cli_without_the_audit_flags_keeps_greedy_only(test_episodes, tmp_path, capsys):
    from geor1.cli import main

    episodes, model = test_episodes
    out = tmp_path / "out"
    args = ["eval", "pairing", "--model", str(model), "--episodes", str(episodes), "--out", str(out)]
    main([*args, "--max-new-tokens", "2", "--max-pixels", "12544", "--limit", "2"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 2 and "position_acc" in m and "shuffled" not in m and "pass@1" not in m
    assert not (out / "predictions_shuffled.csv").exists()
    for extra, needle in ((["--temperature", "0.5"], "give --samples N"), (["--samples", "0"], "at least 1")):
        with pytest.raises(SystemExit) as done:
            main([*args, *extra])
        assert done.value.code == 2 and needle in capsys.readouterr().err
