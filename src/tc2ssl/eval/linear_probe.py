"""Linear probe of frozen features: the ssl-transfer protocol (Ericsson et al. 2021, "How Well Do Self-Supervised
Models Transfer?", CVPR; github.com/linusericsson/ssl-transfer, ``linear.py``).

1. Hold out a stratified ``val_fraction`` of the training features as a validation split.
2. For every C in the grid, fit an L2-regularised multinomial logistic regression (scikit-learn, L-BFGS) on the
   rest and score it on the validation split.
3. Refit on the full training set with the best C and report the test accuracy.

Features are standardised with a ``StandardScaler`` fitted on whatever the classifier is fitted on (the
fitting part in step 2, the full training set in step 3); ssl-transfer feeds raw features, the standardisation
makes one C grid fit backbones of any feature scale. Ties between C values go to the larger C, as in
ssl-transfer's search (which visits C from large to small and keeps the first strictly better one).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

ArrayLike = torch.Tensor | np.ndarray


def _as_numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _validated(train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, test_y: ArrayLike
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    train_x, test_x = _as_numpy(train_x).astype(np.float64), _as_numpy(test_x).astype(np.float64)
    train_y, test_y = _as_numpy(train_y), _as_numpy(test_y)
    for name, x in (("train_x", train_x), ("test_x", test_x)):
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty array [N, D], got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf (a diverged encoder?)")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x has {train_x.shape[1]} feature dimensions but test_x has {test_x.shape[1]}")
    for name, y, x in (("train_y", train_y, train_x), ("test_y", test_y, test_x)):
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{name} must be integer labels of shape ({x.shape[0]},), got {y.dtype} "
                             f"with shape {y.shape}")
    if np.unique(train_y).size < 2:
        raise ValueError(f"a linear probe needs at least 2 classes in the training set, got only class "
                         f"{train_y[0]}")
    return train_x, train_y, test_x, test_y


def stratified_validation_split(labels: np.ndarray, val_fraction: float, seed: int = 0
                                ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, val) holding out about ``val_fraction`` of every class, at least one image of every class
    with two or more. A class with a single image stays in the fitting part (it is then missing from the
    validation split); every class keeps at least one image in the fitting part."""
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = 0
        if members.size >= 2:
            n_val = min(members.size - 1, max(1, math.floor(val_fraction * members.size + 0.5)))
        val.append(members[:n_val])
        fit.append(members[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int) -> Pipeline:
    # lbfgs fits the multinomial (softmax) model for more than two classes in every scikit-learn >= 1.3
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # as ssl-transfer: max_iter bounds the cost
        model.fit(x, y)
    return model


def linear_probe(train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, test_y: ArrayLike,
                 cs: list[float] | tuple[float, ...], val_fraction: float = 0.2, max_iter: int = 1000,
                 seed: int = 0, return_predictions: bool = False, return_probabilities: bool = False) -> dict:
    """Test accuracy of a logistic regression on frozen features, C chosen on a validation split.

    Args:
        train_x, test_x: features [N, D] and [M, D] (torch tensors or numpy arrays).
        train_y, test_y: integer class labels [N] and [M].
        cs: the grid of inverse regularisation strengths C (positive).
        val_fraction: share of each training class held out to choose C.
        max_iter: L-BFGS iteration limit per fit.
        seed: seed of the validation split.
        return_predictions: also return the test predictions (int64 numpy array [M]) under "predictions".
        return_probabilities: also return the test class probabilities (float64 [M, C]) under "probabilities"
            and their column classes under "classes" (for GeSSL's σ_task, the probe's test cross-entropy).

    Returns:
        {"accuracy": test accuracy in [0, 1], "best_c": the chosen C, "val_accuracy": {C: validation accuracy}
        (empty when the training set is too small to hold out a validation split; C is then the grid value
        closest to 1 in log scale), "n_train", "n_test"}, all plain Python numbers.
    """
    train_x, train_y, test_x, test_y = _validated(train_x, train_y, test_x, test_y)
    grid = sorted({float(c) for c in cs})
    if not grid or grid[0] <= 0:
        raise ValueError(f"cs must be a non-empty list of positive numbers, got {list(cs)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")

    fit_idx, val_idx = stratified_validation_split(train_y, val_fraction, seed)
    val_accuracy: dict[float, float] = {}
    if val_idx.size:
        for c in grid:
            model = _fit(train_x[fit_idx], train_y[fit_idx], c, max_iter)
            val_accuracy[c] = float(model.score(train_x[val_idx], train_y[val_idx]))
        best_c = max(reversed(grid), key=lambda c: val_accuracy[c])  # first maximum from the largest C down
    else:
        best_c = min(reversed(grid), key=lambda c: abs(math.log(c)))

    model = _fit(train_x, train_y, best_c, max_iter)
    predictions = model.predict(test_x)
    result = {
        "accuracy": float(np.mean(predictions == test_y)),
        "best_c": best_c,
        "val_accuracy": val_accuracy,
        "n_train": int(train_x.shape[0]),
        "n_test": int(test_x.shape[0]),
    }
    if return_predictions:
        result["predictions"] = predictions.astype(np.int64)
    if return_probabilities:
        result["probabilities"] = model.predict_proba(test_x)
        result["classes"] = model.classes_
    return result
