"""Which images the pages of mistakes show, from every image's prediction (pure numpy).

A confusion cell (true t, predicted p) shows its images: for a mistake (t != p) the most confident
first; for a correct cell (t == p) the least confident first. A class page shows the images of
that class with the highest and the lowest probability for it. Ties go to the earlier image in
dataset order. Each gallery holds at most `cap` images and says how many it left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reportgen.report import Predictions


@dataclass
class Gallery:
    images: list[int]  # dataset indices, in the order shown
    total: int  # images before the cap

    @property
    def cut(self) -> int:
        return self.total - len(self.images)


@dataclass
class Galleries:
    cells: dict[tuple[int, int], Gallery] = field(default_factory=dict)  # (true, predicted) -> images
    most: dict[int, Gallery] = field(default_factory=dict)  # class -> its most confidently recognised images
    least: dict[int, Gallery] = field(default_factory=dict)  # class -> its least
    errors_total: int = 0

    def shown(self) -> set[int]:
        out: set[int] = set()
        for group in (self.cells, self.most, self.least):
            for gallery in group.values():
                out.update(gallery.images)
        return out


def _ranked(indices: np.ndarray, keys: np.ndarray, descending: bool, cap: int) -> Gallery:
    order = np.lexsort((indices, -keys if descending else keys))  # by key, then dataset order
    return Gallery([int(i) for i in indices[order][:cap]], int(len(indices)))


def select_galleries(predictions: Predictions, classes: int, cap: int, per_class: int = 16) -> Galleries:
    read = predictions.read & (predictions.labels >= 0)
    index = np.nonzero(read)[0]
    labels, predicted = predictions.labels[index], predictions.predicted[index]
    confidence, true_score = predictions.confidence[index], predictions.true_score[index]
    out = Galleries(errors_total=int((labels != predicted).sum()))
    for t in range(classes):
        mine = labels == t
        for p in range(classes):
            cell = mine & (predicted == p)
            if cell.any():
                out.cells[(t, p)] = _ranked(index[cell], confidence[cell], descending=t != p, cap=cap)
        if mine.any():
            out.most[t] = _ranked(index[mine], true_score[mine], descending=True, cap=per_class)
            out.least[t] = _ranked(index[mine], true_score[mine], descending=False, cap=per_class)
    return out
