"""What the worker keeps while consecutive points share a shape, dtype and seed (a sweep over token counts,
modes or routings): the weights, drawn once on the device, and each dense baseline built so far. Also where a
point's rows are fitted to the memory free beside them (suites/fit.py), since evicting a kept baseline is part
of that decision."""

from __future__ import annotations

import torch
from torch import nn

import moe_impls
from moe_impls import BASELINES, DenseFFN, MoEConfig, MoEWeights
from suites import fit
from suites.checks import PointInputs
from suites.failures import ROW_FAILURES, failure_status, one_line, release, row_family
from suites.memory import available_bytes

Fits = dict[str, tuple[str | None, int | None]]  # row -> (skip reason, predicted call bytes)


class ShapeCache:
    def __init__(self, device: torch.device, seed: int) -> None:
        self.device, self.seed = device, seed
        self.key: tuple | None = None
        self._weights: MoEWeights | nn.Module | None = None  # a shape's weights, or a model's block
        self.baselines: dict[tuple[str, int], DenseFFN] = {}  # by (name, d_ff)

    def weights(self, cfg: MoEConfig, dtype: torch.dtype) -> MoEWeights:
        """The point's weights; the previous point's when the shape and dtype are equal (only tokens, mode or
        routing changed), so a sweep over token counts builds them once."""
        key = (cfg.d_model, cfg.d_ff, cfg.num_experts, cfg.activation, cfg.router, dtype, self.seed)
        weights = self._kept(key, lambda: MoEWeights(cfg, device=self.device, dtype=dtype, seed=self.seed))
        weights.cfg = cfg  # same tensors; routing settings (top_k, capacity, synthetic skew) are the point's
        return weights

    def block(self, model: str, dtype: torch.dtype) -> nn.Module:
        """A model's MoE block (suites/model_rows.py), kept like a shape's weights."""
        from suites import model_rows  # transformers is imported for model points only

        return self._kept(
            ("model", model, dtype, self.seed), lambda: model_rows.build(model, self.device, dtype, self.seed)
        )

    def _kept(self, key: tuple, build):
        if self._weights is None or self.key != key:
            self.key, self._weights, self.baselines = None, None, {}
            release()
            self._weights, self.key = build(), key
        return self._weights

    def fit(self, inputs: PointInputs, todo: list[str]) -> Fits:
        """Each row's skip reason and predicted call bytes, decided before anything of the point's rows is
        built: what is free now, counting the kept baselines as free, since one that does not fit is evicted."""
        point, call = inputs.point, inputs.call
        free = available_bytes(self.device)
        if free is not None:
            free += sum(p.numel() * p.element_size() for b in self.baselines.values() for p in b.parameters())
        impls, unsupported, baselines = {}, {}, {}
        for name in todo:
            if row_family(name) == "dense":
                weights = fit.baseline_weight_bytes(name, call)
                baselines[name] = fit.Baseline(weights, fit.predicted_bytes(name, point, call))
                continue
            try:  # a model's rows are its block under transformers' experts implementations: never ours to refuse
                unsupported[name] = None if point.model else moe_impls.resolve(name).unsupported(point.moe_config())
                impls[name] = None if unsupported[name] else fit.predicted_bytes(name, point, call)
            except ROW_FAILURES:  # a plug-in that cannot say: its check records the failure
                unsupported[name], impls[name] = None, None
        skips = fit.decide(free, impls, baselines, f"available on {self.device.type}")
        predicted = {**impls, **{n: b.call_bytes for n, b in baselines.items()}}
        return {n: (unsupported.get(n) or skips[n], predicted[n]) for n in todo}

    def baselines_for(self, inputs: PointInputs, fits: Fits) -> dict[str, DenseFFN | dict]:
        """Each dense baseline that fits, kept from an earlier point or built now, before any implementation is
        checked (its weights are resident while every row of the point is timed); or, as a finished row, why
        not: it does not fit (a kept one is evicted), or building it failed."""
        point, call = inputs.point, inputs.call
        found: dict[str, DenseFFN | dict] = {}
        for name, (skip, predicted) in fits.items():
            if row_family(name) != "dense":
                continue
            key = (name, fit.baseline_width(name, call))
            if skip:
                if self.baselines.pop(key, None) is not None:
                    release()
                found[name] = {"status": "skipped", "error": skip, "predicted_mem_bytes": predicted}
                continue
            try:
                if key not in self.baselines:
                    cfg, dtype = point.moe_config(), inputs.x.dtype
                    self.baselines[key] = BASELINES[name](cfg, device=self.device, dtype=dtype, seed=self.seed)
                found[name] = self.baselines[key]
            except ROW_FAILURES as exc:
                found[name] = {"status": failure_status(exc), "error": f"building it: {one_line(exc)}"}
        return found
