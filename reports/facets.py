"""Split a run into groups that can share an axis: one group per (shape, dtype, mode), and name its points.

Within a group only `tokens` and `routing` vary, so throughput-vs-tokens lines and skew bars are comparable.
Dense baseline rows carry the MoE point's parameters (the shape they are matched to), so they group with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

GROUP_COLUMNS = (
    "d_model",
    "d_ff",
    "num_experts",
    "top_k",
    "activation",
    "capacity_factor",
    "world_size",
    "dtype",
    "mode",
)
POINT_COLUMNS = (*GROUP_COLUMNS, "tokens", "routing")
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

    @property
    def ok(self) -> pd.DataFrame:
        return self.df[self.df["status"] == "ok"]

    def dtype(self) -> str | None:
        return self.df["dtype"].iloc[0] if len(self.df) else None

    def line(self, impl: str, routing: str | None = None) -> pd.DataFrame:
        """The ok rows of one implementation along tokens at one routing (dense rows: any routing), one per tokens."""
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


def fmt_value(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def group_label(key: dict) -> str:
    shape = " ".join(f"{_SHORT[c]}{fmt_value(key[c])}" for c in ("d_model", "d_ff", "num_experts", "top_k"))
    extra = [f"{_SHORT[c]}={fmt_value(key[c])}" for c in ("capacity_factor", "world_size") if pd.notna(key[c])]
    if pd.notna(key["world_size"]) and key["world_size"] == 1:
        extra = [e for e in extra if not e.startswith("ws=")]
    parts = [shape, fmt_value(key["activation"]), *extra, fmt_value(key["dtype"]), fmt_value(key["mode"])]
    return " · ".join(p for p in parts if p and p != "-")


def split_groups(df: pd.DataFrame) -> list[Group]:
    if not len(df):
        return []
    groups = []
    for index, (key, rows) in enumerate(df.groupby(list(GROUP_COLUMNS), dropna=False, sort=True)):
        key_dict = dict(zip(GROUP_COLUMNS, key))
        label = group_label(key_dict)
        names = sorted(set(rows["shape"].dropna().astype(str))) if "shape" in rows else []
        if len(names) == 1:  # the runner's shape preset name, an extra column beside the schema's
            label = f"{names[0]}: {label}"
        groups.append(Group(index, tuple(key), label, rows, _base_routing(rows)))
    return groups


def _base_routing(rows: pd.DataFrame) -> str | None:
    """The routing with the most token counts among MoE rows; ties go to the learned router, then 'uniform'."""
    moe = rows[rows["family"] == "moe"]
    if not len(moe) or moe["routing"].isna().all():
        return None
    counts = moe.groupby("routing")["tokens"].nunique()
    routers = set(moe["router"].dropna())

    def rank(routing: str) -> tuple:
        return (-counts[routing], routing not in routers, routing != "uniform", routing)

    return sorted(counts.index, key=rank)[0]


def point_label(row) -> str:
    """Short text naming a point within its group: tokens and routing."""
    return f"T={fmt_value(row['tokens'])} {fmt_value(row['routing'])}"
