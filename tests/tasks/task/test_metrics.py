"""TaskMetrics against hand computations on tiny batches, one test per task kind.

The oracles below are the textbook formulas in plain Python (no torchmetrics, no scipy), applied to
the counted positions only; positions that do not count carry predictions and labels that would
change every metric if they were read.
"""

from __future__ import annotations

import math

import pytest
import torch

from tasks.task.metrics import TaskMetrics

IGNORE = -100


# ------------------------------------------------------------------------------------------ oracles
def softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    return [e / sum(exps) for e in exps]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def accuracy(target: list[int], pred: list[int]) -> float:
    return sum(t == p for t, p in zip(target, pred)) / len(target)


def f1(target: list[int], pred: list[int], positive: int) -> float:
    tp = sum(t == positive and p == positive for t, p in zip(target, pred))
    fp = sum(t != positive and p == positive for t, p in zip(target, pred))
    fn = sum(t == positive and p != positive for t, p in zip(target, pred))
    return 2 * tp / (2 * tp + fp + fn)


def macro_f1(target: list[int], pred: list[int], classes: int) -> float:
    return sum(f1(target, pred, k) for k in range(classes)) / classes


def mcc(target: list[int], pred: list[int], classes: int) -> float:
    """Gorodkin's multiclass MCC; for two classes it is (TP*TN - FP*FN) / sqrt(...)."""
    s, c = len(target), sum(t == p for t, p in zip(target, pred))
    t_k = [target.count(k) for k in range(classes)]
    p_k = [pred.count(k) for k in range(classes)]
    cov = c * s - sum(t * p for t, p in zip(t_k, p_k))
    return cov / math.sqrt((s * s - sum(p * p for p in p_k)) * (s * s - sum(t * t for t in t_k)))


def auroc(positive: list[bool], score: list[float]) -> float:
    """P(score of a positive > score of a negative), ties counting half (Mann-Whitney)."""
    pos = [s for s, y in zip(score, positive) if y]
    neg = [s for s, y in zip(score, positive) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def pearson(x: list[float], y: list[float]) -> float:
    mx, my = mean(x), mean(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def ranks(x: list[float]) -> list[int]:
    """Rank of each value (the test data has no ties)."""
    order = sorted(range(len(x)), key=x.__getitem__)
    out = [0] * len(x)
    for rank, i in enumerate(order):
        out[i] = rank
    return out


def r2(target: list[float], pred: list[float]) -> float:
    m = mean(target)
    return 1 - sum((t - p) ** 2 for t, p in zip(target, pred)) / sum((t - m) ** 2 for t in target)


def rmse(target: list[float], pred: list[float]) -> float:
    return math.sqrt(mean([(t - p) ** 2 for t, p in zip(target, pred)]))


def logits_with_argmax(pred: list[list[int]], classes: int, seed: int) -> torch.Tensor:
    """Random logits (distinct scores, so AUROC has no ties) whose argmax is `pred`."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(pred), len(pred[0]), classes, generator=g)
    logits += 4 * torch.nn.functional.one_hot(torch.tensor(pred), classes)
    return logits


def check(values: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    assert set(values) == set(expected)
    for name, want in expected.items():
        assert values[name].item() == pytest.approx(want, abs=1e-5), name


# ------------------------------------------------------------------------------------------ tests
def test_residue_classification_counts_labelled_residues_only():
    # Row 0: five labelled residues then </s>; row 1: residue 1 masked (e.g. disordered), </s> at 4;
    # row 2: every residue masked (per_protein_accuracy skips it, flat metrics see nothing of it).
    labels = [[0, 1, 2, 1, 0, IGNORE], [2, IGNORE, 2, 0, IGNORE, IGNORE], [IGNORE] * 6]
    # Where the label does not count the prediction is class 1: reading those positions moves every metric.
    pred = [[0, 2, 2, 1, 1, 1], [2, 1, 0, 0, 1, 1], [1] * 6]
    logits = logits_with_argmax(pred, 3, seed=0)
    label_tensor = torch.tensor(labels)
    batch = {"labels": label_tensor, "label_mask": label_tensor != IGNORE}
    metrics = TaskMetrics("residue_classification", ["q3", "per_protein_accuracy", "mcc", "f1", "auroc"], 3)
    metrics.update(logits[:2], {k: v[:2] for k, v in batch.items()})  # two updates: states accumulate
    metrics.update(logits[2:], {k: v[2:] for k, v in batch.items()})

    counted = [(i, t) for i in range(3) for t in range(6) if labels[i][t] != IGNORE]
    target = [labels[i][t] for i, t in counted]
    flat_pred = [pred[i][t] for i, t in counted]
    probs = [softmax(logits[i, t].tolist()) for i, t in counted]
    assert accuracy(target, flat_pred) == 5 / 8  # the oracle itself, counted by hand
    rows = [[(labels[i][t], pred[i][t]) for t in range(6) if labels[i][t] != IGNORE] for i in range(2)]
    check(
        metrics.compute(),
        {
            "q3": accuracy(target, flat_pred),
            "per_protein_accuracy": mean([mean([float(t == p) for t, p in row]) for row in rows]),  # (3/5 + 2/3) / 2
            "mcc": mcc(target, flat_pred, 3),
            "f1": macro_f1(target, flat_pred, 3),
            "auroc": mean([auroc([t == k for t in target], [p[k] for p in probs]) for k in range(3)]),
        },
    )


def test_binary_sequence_classification():
    target = [1, 0, 1, 1, 0, 0, 1, 0]
    pred = [1, 0, 0, 1, 1, 0, 1, 1]
    logits = logits_with_argmax([pred], 2, seed=1)[0]
    metrics = TaskMetrics("sequence_classification", (), 2)
    metrics.update(logits, {"labels": torch.tensor(target)})
    positive = [softmax(row)[1] for row in logits.tolist()]
    check(
        metrics.compute(),
        {
            "accuracy": accuracy(target, pred),
            "mcc": mcc(target, pred, 2),
            "f1": f1(target, pred, positive=1),  # binary F1 is the positive class's, not a macro average
            "auroc": auroc([t == 1 for t in target], positive),
        },
    )


def test_multilabel_f1_and_auroc_are_macro_over_labels():
    target = [[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]]
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    metrics = TaskMetrics("sequence_multilabel", (), 3)
    metrics.update(logits, {"labels": torch.tensor(target, dtype=torch.float)})
    column = [[row[j] for row in target] for j in range(3)]
    score = [[sigmoid(x) for x in logits[:, j].tolist()] for j in range(3)]
    pred = [[int(s > 0.5) for s in score[j]] for j in range(3)]
    check(
        metrics.compute(),
        {
            "f1": mean([f1(column[j], pred[j], positive=1) for j in range(3)]),
            "auroc": mean([auroc([t == 1 for t in column[j]], score[j]) for j in range(3)]),
        },
    )


def regression_expected(target: list[float], pred: list[float]) -> dict[str, float]:
    return {
        "spearman": pearson(ranks(target), ranks(pred)),
        "pearson": pearson(target, pred),
        "r2": r2(target, pred),
        "rmse": rmse(target, pred),
    }


def test_sequence_regression():
    target = [0.3, -1.2, 2.5, 0.9, 1.4, -0.4, 0.1]
    pred = [0.5, -0.8, 1.9, 1.3, 0.7, -0.9, 0.2]
    metrics = TaskMetrics("sequence_regression")
    metrics.update(torch.tensor(pred), {"labels": torch.tensor(target)})
    check(metrics.compute(), regression_expected(target, pred))


def test_residue_regression_counts_labelled_residues_only():
    label_mask = [[True, True, True, False, True], [True, False, True, False, False]]
    labels = [[0.2, 1.5, -0.3, 0.0, 0.8], [2.1, 0.0, -1.0, 0.0, 0.0]]
    pred = [[0.4, 1.1, 0.1, 50.0, 0.6], [1.7, -50.0, -0.6, 9.0, 9.0]]  # wild where nothing counts
    metrics = TaskMetrics("residue_regression")
    metrics.update(torch.tensor(pred), {"labels": torch.tensor(labels), "label_mask": torch.tensor(label_mask)})
    counted = [(i, t) for i in range(2) for t in range(5) if label_mask[i][t]]
    check(
        metrics.compute(),
        regression_expected([labels[i][t] for i, t in counted], [pred[i][t] for i, t in counted]),
    )


def test_masked_lm_accuracy_and_perplexity_over_masked_tokens_only():
    vocab = 6
    labels = [[4, IGNORE, IGNORE, 2, IGNORE], [IGNORE, 5, 3, IGNORE, IGNORE]]
    logits = torch.randn(2, 5, vocab, generator=torch.Generator().manual_seed(3))
    metrics = TaskMetrics("masked_lm", (), vocab)
    metrics.update(logits, {"labels": torch.tensor(labels)})
    counted = [(i, t) for i in range(2) for t in range(5) if labels[i][t] != IGNORE]
    target = [labels[i][t] for i, t in counted]
    rows = [logits[i, t].tolist() for i, t in counted]
    pred = [row.index(max(row)) for row in rows]
    nll = [-math.log(softmax(row)[y]) for row, y in zip(rows, target)]
    check(metrics.compute(), {"masked_accuracy": accuracy(target, pred), "perplexity": math.exp(mean(nll))})


def test_contact_precision_at_l_fractions_per_protein_by_range():
    """Rows: 30 residues; 34 residues with residue 5 unlabelled (no coordinates); 20 residues (no pair is 24
    apart: long-range skips it, medium counts it). Labels and scores are random; logits off counted pairs
    (close pairs, residue 5, </s>, padding) are the highest of all and would top every ranking if read."""
    g = torch.Generator().manual_seed(2)
    lengths, width = [30, 34, 20], 35
    residue_mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    label_mask = residue_mask.clone()
    label_mask[1, 5] = False
    contact = (torch.rand(3, width, width, generator=g) < 0.15).triu(1)
    labels = (contact | contact.transpose(1, 2)).to(torch.int8)
    scores = torch.rand(3, width, width, generator=g)
    scores = scores + scores.transpose(1, 2)
    logits = torch.full((3, width, width), 10.0)
    names = [f"{r}_p_at_{k}" for r in ("long", "medium", "short") for k in ("l5", "l2", "l")]
    ranges = {"long": (24, 10**6), "medium": (12, 23), "short": (6, 11)}
    expected = {}
    for r, (low, high) in ranges.items():
        for k, divisor in (("l5", 5), ("l2", 2), ("l", 1)):
            per_protein = []
            for b, n in enumerate(lengths):
                pairs = [
                    (i, j)
                    for i in range(n)
                    for j in range(i + low, min(n, i + high + 1))
                    if label_mask[b, i] and label_mask[b, j]
                ]
                if not pairs:
                    continue
                ranked = sorted(pairs, key=lambda p: -scores[b, p[0], p[1]].item())[: max(1, n // divisor)]
                per_protein.append(mean([float(labels[b, i, j] == 1) for i, j in ranked]))
            expected[f"{r}_p_at_{k}"] = mean(per_protein)
    counted = residue_mask[:, :, None] & residue_mask[:, None, :] & label_mask[:, :, None] & label_mask[:, None, :]
    logits[counted] = scores[counted]
    labels = labels.masked_fill(~(residue_mask[:, :, None] & residue_mask[:, None, :]), IGNORE)
    metrics = TaskMetrics("residue_pair_classification", names, 1)
    batch = {"labels": labels, "label_mask": label_mask, "residue_mask": residue_mask}
    metrics.update(logits[:2], {k: v[:2] for k, v in batch.items()})  # two updates: states accumulate
    metrics.update(logits[2:], {k: v[2:] for k, v in batch.items()})
    check(metrics.compute(), expected)
    assert 0 < expected["long_p_at_l5"] < 1 and expected["medium_p_at_l"] > 0
