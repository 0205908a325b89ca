"""Linear probes per layer: is a label (e.g. harmfulness) linearly decodable, and does it transfer?

One probe per layer: standardisation followed by L2-regularised logistic regression. Cross-validated
accuracy and AUROC say how decodable the label is in one model; a probe fit on the base and scored on
the fine-tuned model's activations (transfer) says whether the *same* linear read-out still works.
"""

from __future__ import annotations

import numpy as np

from .directions import as_layers, check_binary

# scikit-learn is imported where probes are fit or scored, not with the package: a run whose analysis
# comes from the cache never needs it (a second of start-up).


class LayerProbes:
    """Per-layer logistic-regression probes.

    Learned state: ``probes_`` (one fitted pipeline per layer), ``cv_accuracy_`` and ``cv_auroc_``
    ``[layer]`` (out-of-fold, ``n_splits``-fold stratified), ``n_layers_``.
    """

    def __init__(self, C: float = 1.0, n_splits: int = 5, seed: int = 0, max_iter: int = 2000):
        self.C = C
        self.n_splits = n_splits
        self.seed = seed
        self.max_iter = max_iter

    def _pipeline(self):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter))

    def fit(self, X, y) -> LayerProbes:
        from sklearn.metrics import accuracy_score, roc_auc_score
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        X = as_layers(X)
        y = check_binary(y, X.shape[0])
        folds = min(self.n_splits, int(np.bincount(y).min()))
        cv = StratifiedKFold(n_splits=max(folds, 2), shuffle=True, random_state=self.seed)
        self.probes_, accuracy, auroc = [], [], []
        for layer in range(X.shape[1]):
            scores = cross_val_predict(self._pipeline(), X[:, layer], y, cv=cv, method="predict_proba")[:, 1]
            accuracy.append(accuracy_score(y, scores > 0.5))
            auroc.append(roc_auc_score(y, scores))
            self.probes_.append(self._pipeline().fit(X[:, layer], y))
        self.cv_accuracy_, self.cv_auroc_ = np.array(accuracy), np.array(auroc)
        self.n_layers_ = X.shape[1]
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Probability of class 1 per sample and layer: ``[sample, layer]``."""
        X = as_layers(X)
        return np.stack([p.predict_proba(X[:, l])[:, 1] for l, p in enumerate(self.probes_)], axis=1)

    def score_layers(self, X, y) -> dict[str, np.ndarray]:
        """Accuracy and AUROC per layer of the fitted probes on new activations (e.g. transfer)."""
        from sklearn.metrics import accuracy_score, roc_auc_score

        y = check_binary(y, as_layers(X).shape[0])
        proba = self.predict_proba(X)
        return {
            "accuracy": np.array([accuracy_score(y, proba[:, l] > 0.5) for l in range(self.n_layers_)]),
            "auroc": np.array([roc_auc_score(y, proba[:, l]) for l in range(self.n_layers_)]),
        }
