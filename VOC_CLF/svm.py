"""Per-class linear SVMs on frozen, L2-normalised features (the VOC07 SVM protocol of self-supervised benchmarks).

For each class, images where the class is difficult-only are left out; the cost C is chosen by k-fold
cross-validated AP on trainval, then an SVM with that C is fit on all of trainval and scores the test images.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from VOC_CLF.voc import average_precision

DEFAULT_COSTS = (0.01, 0.1, 1.0, 10.0)


def _svm(cost: float):
    from sklearn.svm import LinearSVC
    return LinearSVC(C=cost, class_weight={1: 2, -1: 1}, loss="squared_hinge", penalty="l2", dual=True,
                     max_iter=2000, tol=1e-4, random_state=0)


def _cv_ap(x: np.ndarray, y: np.ndarray, cost: float, folds: int) -> float:
    from sklearn.model_selection import StratifiedKFold
    aps = []
    for train, val in StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y):
        clf = _svm(cost).fit(x[train], y[train])
        aps.append(average_precision(clf.decision_function(x[val]), y[val]))
    return float(np.nanmean(aps))


def svm_scores(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray,
               costs: Sequence[float] = DEFAULT_COSTS, folds: int = 3,
               log: Callable[[str], None] = print, class_names: Sequence[str] | None = None
               ) -> tuple[np.ndarray, list[float]]:
    """(test scores n_test x C, chosen cost per class). Labels in {1, 0 (ignored), -1}."""
    n_classes = train_labels.shape[1]
    scores = np.zeros((test_x.shape[0], n_classes), dtype=np.float64)
    chosen: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on tiny or separable sets
        for c in range(n_classes):
            keep = train_labels[:, c] != 0
            x, y = train_x[keep], train_labels[keep, c].astype(np.int64)
            positives, negatives = int((y == 1).sum()), int((y == -1).sum())
            if positives == 0 or negatives == 0:
                chosen.append(float("nan"))
                log(f"  {class_names[c] if class_names else c}: no {'positives' if not positives else 'negatives'}"
                    f" in trainval, skipped")
                continue
            k = min(folds, positives, negatives)
            if k >= 2 and len(costs) > 1:
                cv = {cost: _cv_ap(x, y, cost, k) for cost in costs}
                best = max(cv, key=lambda cost: (np.nan_to_num(cv[cost], nan=-1.0), -cost))
            else:
                best = costs[len(costs) // 2]
            chosen.append(best)
            scores[:, c] = _svm(best).fit(x, y).decision_function(test_x)
    return scores, chosen
