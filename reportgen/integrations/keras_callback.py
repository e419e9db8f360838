"""A Keras callback that shows units evolve during `model.fit` (as Zeiler and Fergus 2014, Fig. 4).

Every `every` epochs it mines a fixed probe set of the image folder (up to `probe_images` images,
drawn once with `seed`, decoded once and kept in memory) with the model's current weights, keeps a
compact snapshot (every unit's top-K images, dead units per layer, the epoch's logs), and rewrites
the site: the usual pages for the latest epoch, plus `evolution.html` (accuracy and loss per
epoch, per layer how much each epoch's top K overlaps the previous one's, dead units per epoch)
and, in each unit's view, its top images epoch by epoch. The site is swapped in whole each time:
a crash or Ctrl-C during training leaves the last complete one.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reportgen.model.tf import keras

log = logging.getLogger("reportgen")


@dataclass
class Snapshot:
    epoch: int  # 1-based
    logs: dict
    top: dict[str, np.ndarray]  # layer -> int64 [channels, k]: probe-set image indices, best first
    dead: dict[str, int]
    seconds: float  # mining time of this snapshot


@dataclass
class Evolution:
    snapshots: list[Snapshot] = field(default_factory=list)

    def overlap(self, layer: str, i: int) -> float | None:
        """Mean over the layer's units of |top_i ∩ top_(i-1)| / K (None for the first snapshot)."""
        if i == 0:
            return None
        a, b = self.snapshots[i - 1].top[layer], self.snapshots[i].top[layer]
        shared = [len(set(x[x >= 0].tolist()) & set(y[y >= 0].tolist())) / max(1, (y >= 0).sum()) for x, y in zip(a, b)]
        return float(np.mean(shared)) if shared else None


class ReportCallback(keras.callbacks.Callback):
    """reportgen.keras.ReportCallback(data="data/train", out="site", every=1) for model.fit(callbacks=[...])."""

    def __init__(self, data, out, every: int = 1, probe_images: int = 512, top_k: int = 8, seed: int = 0,
                 batch_size: int = 32, preprocess: str = "auto", interpolation: str = "nearest", rescale=None,
                 layers: list[str] | None = None, force: bool = False, quiet: bool = True) -> None:
        super().__init__()
        if every < 1 or probe_images < 1 or top_k < 1:
            raise ValueError("every, probe_images and top_k must be 1 or more")
        self.data, self.out = Path(data), Path(out)
        self.every, self.probe_images, self.top_k, self.seed = every, probe_images, top_k, seed
        self.batch_size, self.preprocess, self.interpolation, self.rescale = batch_size, preprocess, interpolation, rescale
        self.layers, self.force, self.quiet = layers or [], force, quiet
        self.evolution = Evolution()
        self._ready = False
        self._forward = None

    # -- set-up, once ------------------------------------------------------------------------------

    def _setup(self) -> None:
        from reportgen.dataset import Dataset, ImageRecord, discover, iter_batches
        from reportgen.engines.mining import MiningStep, PerImageLoss
        from reportgen.images import make_thumbnail
        from reportgen.model.preprocess import choose_preprocessing, resizer
        from reportgen.model.trace import trace_model
        from reportgen.receptive import receptive_fields
        from reportgen.writer import check_target

        check_target(self.out, self.force, {"dataset": self.data})
        full = discover(self.data)
        order = list(range(len(full.records)))
        random.Random(self.seed).shuffle(order)
        picked = sorted(order[: self.probe_images])
        records = [ImageRecord(i, full.records[j].path, full.records[j].rel, full.records[j].label) for i, j in enumerate(picked)]
        self.dataset = Dataset(root=full.root, classes=full.classes, records=records)
        self.traced = trace_model(self.model, self.model.name, interpolation=self.interpolation, layers=self.layers)
        self.preprocessing, self.warnings = choose_preprocessing(self.model, self.traced.spec.channels, mode=self.preprocess,
                                                                 rescale=self.rescale, interpolation=self.interpolation)
        skipped: list = []
        self._probe_batches = list(iter_batches(records, self.traced.spec, self.batch_size, skipped, resizer=resizer(self.traced.spec)))
        self.skipped = skipped
        self.thumbnails = {int(i): make_thumbnail(px) for b in self._probe_batches for i, px in zip(b.indices, b.pixels)}
        self.fields = receptive_fields(self.traced.info.nodes, (self.traced.spec.height, self.traced.spec.width))
        from reportgen.stats import classification_mode

        mode, _ = classification_mode(self.traced.info.num_outputs, len(full.classes))
        loss = PerImageLoss(self.traced.loss, mode, self.traced.info.num_outputs)
        self._new_miner = lambda: MiningStep(self.traced, self.top_k, [], self.preprocessing, self.batch_size, loss)
        self.miner = self._new_miner()
        self.chosen_pixels = self._probe_batches[0].pixels[:1]
        self._ready = True

    # -- every `every` epochs ----------------------------------------------------------------------

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if (epoch + 1) % self.every:
            return
        self.snapshot(epoch + 1, dict(logs or {}))

    def snapshot(self, epoch: int, logs: dict) -> None:
        from reportgen.engines.local import run_images, scan_dataset

        if not self._ready:
            self._setup()
        started = time.perf_counter()
        if not self.miner.is_current():  # a BatchNormalization's scale changed sign: the chains changed
            self.miner = self._new_miner()
        scan = scan_dataset(self.traced, self.dataset, top_k=self.top_k, batch_size=self.batch_size, preprocessing=self.preprocessing,
                            quiet=True, decoded=self._probe_batches, miner=self.miner, thumbnails=self.thumbnails)
        seconds = time.perf_counter() - started
        scan.skipped = list(self.skipped)
        scan.thumbnails = dict(self.thumbnails)  # every probe image: the evolution view shows any of them
        self.evolution.snapshots.append(Snapshot(
            epoch, {k: float(v) for k, v in logs.items() if isinstance(v, (int, float, np.floating))},
            {name: units.images.copy() for name, units in scan.units.items()},
            {name: int(units.dead.sum()) for name, units in scan.units.items()}, seconds,
        ))
        if self._forward is None:
            from reportgen.engines.local import forward

            self._forward = forward(self.traced, self.preprocessing)  # traced once, run every snapshot
        scores, maps = run_images(self.traced, self.chosen_pixels, self.preprocessing, self._forward)
        self._write(scan, scores, maps)
        if not self.quiet:
            log.info("reportgen: epoch %d snapshot written to %s (mining %.1f s)", epoch, self.out, seconds)

    def _write(self, scan, scores, maps) -> None:
        from reportgen.images import to_uint8
        from reportgen.report import ChosenImage, ReportData
        from reportgen.site.pages import render_site
        from reportgen.stats import as_probabilities, classification_mode, prediction_text
        from reportgen.writer import SiteFolder

        info = self.traced.info
        mode, _ = classification_mode(info.num_outputs, len(self.dataset.classes))
        logits = bool(info.head and info.head.logits)
        rec = self.dataset.records[int(self._probe_batches[0].indices[0])]
        chosen = [ChosenImage(path=rec.rel, label=self.dataset.classes[rec.label] if rec.label is not None else None,
                              scores=[float(s) for s in as_probabilities(scores[0], logits)],
                              prediction=prediction_text(scores[0], self.dataset.classes, mode, logits), pixels=to_uint8(self.chosen_pixels[0]),
                              maps={node.name: maps[j][0] for j, node in enumerate(self.traced.map_layers)})]
        epoch = self.evolution.snapshots[-1].epoch
        data = ReportData(info=info, dataset=self.dataset, scan=scan, chosen=chosen, fields=self.fields, top_k=self.top_k,
                          options={"epoch": epoch, "probe_images": len(self.dataset.records), "every": self.every, "top_k": self.top_k},
                          data_label=self.data.name, preprocessing=self.preprocessing, warnings=self.warnings,
                          class_names=list(self.dataset.classes), evolution=self.evolution)
        with SiteFolder(self.out, force=True, keep={"dataset": self.data}) as site:
            render_site(data, site)
            site.commit()
        self.force = True  # from now on the folder is ours
