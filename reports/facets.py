"""Split a run into groups that can share an axis: one group per (shape, dtype, mode), and name its points.

Within a group only `tokens` and `routing` vary, so throughput-vs-tokens lines and skew bars are comparable.
A group is one layer: everything that defines the point but tokens and routing, the shape's name and
`normalize_topk` included, so two layers of equal dimensions are never merged. Dense baseline rows carry the
MoE point's parameters (the shape they are matched to), so they group with it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from reports.cells import fmt_value

GROUP_COLUMNS = (
    "shape",
    "d_model",
    "d_ff",
    "num_experts",
    "top_k",
    "activation",
    "capacity_factor",
    "normalize_topk",
    "router",
    "world_size",
    "dtype",
    "mode",
)
POINT_COLUMNS = (*GROUP_COLUMNS, "tokens", "routing")
DEFAULT_ROUTER = "softmax_topk"
_SHORT = {"d_model": "D", "d_ff": "F", "num_experts": "E", "top_k": "k", "capacity_factor": "cf", "world_size": "ws"}


@dataclass(frozen=True)
class Group:
    """Rows of one (shape, dtype, mode); `base_routing` is the routing swept over tokens."""

    index: int
    key: tuple
    label: str
    df: pd.DataFrame
    base_routing: str | None

    @property
    def slug(self) -> str:
        return f"g{self.index:02d}"

    @cached_property
    def ok(self) -> pd.DataFrame:
        return self.df[self.df["status"] == "ok"]

    def dtype(self) -> str | None:
        return self.df["dtype"].iloc[0] if len(self.df) else None

    @cached_property
    def _lines(self) -> dict[tuple[str, str | None], pd.DataFrame]:
        return {}  # every plot asks for the same lines: filter the group once per (impl, routing)

    def line(self, impl: str, routing: str | None = None) -> pd.DataFrame:
        """The ok rows of one implementation along tokens at one routing (dense rows: any routing), one per tokens."""
        key = (impl, routing)
        if key not in self._lines:
            self._lines[key] = self._line(impl, routing)
        return self._lines[key]

    def _line(self, impl: str, routing: str | None) -> pd.DataFrame:
        rows = self.ok[self.ok["impl"] == impl]
        routing = self.base_routing if routing is None else routing
        if len(rows) and (rows["family"] == "moe").any():
            rows = rows[rows["routing"].fillna("") == (routing or "")]
        else:
            rows = prefer_routing(rows, routing)
        return rows.drop_duplicates("tokens").sort_values("tokens")


def prefer_routing(rows: pd.DataFrame, routing: str | None) -> pd.DataFrame:
    """Order rows so those with `routing` come first (dense rows ignore routing but may be repeated per routing)."""
    if not len(rows):
        return rows
    first = (rows["routing"].fillna("") != (routing or "")).astype(int)
    return rows.assign(_o=first.to_numpy()).sort_values(["_o", "tokens"], kind="stable").drop(columns="_o")


def group_label(key: dict) -> str:
    """'small-8x2: D256 F512 E8 k2 · swiglu · float32 · forward', naming every identity column off its default."""
    shape = " ".join(f"{_SHORT[c]}{fmt_value(key[c])}" for c in ("d_model", "d_ff", "num_experts", "top_k"))
    extra = [f"{_SHORT[c]}={fmt_value(key[c])}" for c in ("capacity_factor", "world_size") if pd.notna(key[c])]
    if pd.notna(key["world_size"]) and key["world_size"] == 1:
        extra = [e for e in extra if not e.startswith("ws=")]
    if pd.notna(key["normalize_topk"]) and not key["normalize_topk"]:
        extra.append("top-k not renormalised")
    if pd.notna(key["router"]) and key["router"] != DEFAULT_ROUTER:
        extra.append(f"router {key['router']}")
    parts = [shape, fmt_value(key["activation"]), *extra, fmt_value(key["dtype"]), fmt_value(key["mode"])]
    label = " · ".join(p for p in parts if p and p != "-")
    return f"{key['shape']}: {label}" if pd.notna(key["shape"]) else label


def _grouped(df: pd.DataFrame):
    return df.groupby(list(GROUP_COLUMNS), dropna=False, sort=True)


def group_index(df: pd.DataFrame) -> pd.Series:
    """The index of each row's group in `split_groups(df)`."""
    return _grouped(df).ngroup() if len(df) else pd.Series([], index=df.index, dtype=int)


def split_groups(df: pd.DataFrame) -> list[Group]:
    if not len(df):
        return []
    grouped = _grouped(df)
    base = _base_routings(df, grouped.ngroup().to_numpy())
    parts = list(grouped)
    labels = [group_label(dict(zip(GROUP_COLUMNS, key))) for key, _ in parts]
    counts = Counter(labels)
    groups = []
    for index, ((key, rows), label) in enumerate(zip(parts, labels)):
        if counts[label] > 1:  # e.g. a null normalize_topk beside a true one: the slug tells them apart
            label = f"{label} (g{index:02d})"
        groups.append(Group(index, tuple(key), label, rows, base.get(index)))
    return groups


def row_group_labels(df: pd.DataFrame) -> pd.Series:
    """The group label of every row (index of `df`), one label computed per group."""
    codes = df.groupby(list(GROUP_COLUMNS), dropna=False, sort=False).ngroup().to_numpy()
    firsts = df[list(GROUP_COLUMNS)].iloc[np.unique(codes, return_index=True)[1]]
    labels = [group_label(dict(zip(GROUP_COLUMNS, key))) for key in firsts.itertuples(index=False)]
    return pd.Series(np.asarray(labels, dtype=object)[codes] if labels else [], index=df.index, dtype=object)


def point_key(df: pd.DataFrame) -> pd.Series:
    """Identity of each row's point: its point_id, or, for a row without one, every column that defines it."""
    if not len(df):
        return pd.Series([], index=df.index, dtype=object)
    ids = df.groupby(list(POINT_COLUMNS), dropna=False, sort=False).ngroup().astype(str)
    return df["point_id"].where(df["point_id"].notna(), "params:" + ids)


def _base_routings(df: pd.DataFrame, codes: np.ndarray) -> dict[int, str]:
    """Per group index, the routing with the most token counts among its MoE rows; ties go to the learned router,
    then 'uniform'. Groups without a routed MoE row are absent."""
    mask = ((df["family"] == "moe") & df["routing"].notna()).to_numpy()
    moe = df.loc[mask, ["routing", "router", "tokens"]].assign(group=codes[mask])
    counts = moe.groupby(["group", "routing"])["tokens"].nunique()
    routers = set(zip(moe["group"], moe["router"]))
    best: dict[int, tuple] = {}
    for (group, routing), n in counts.items():
        rank = (-n, (group, routing) not in routers, routing != "uniform", routing)
        if group not in best or rank < best[group]:
            best[group] = rank
    return {group: rank[-1] for group, rank in best.items()}
