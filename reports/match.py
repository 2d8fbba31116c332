"""Pair each row of one frame with the first matching row of another, in a join instead of a filter per row.

A filter of the whole table per row is quadratic: 20k rows took minutes. Tables pair every MoE row with its
dense reference this way, and compare pairs every row with its flop_matched reference.
"""

from __future__ import annotations

import pandas as pd


def first_match(left: pd.DataFrame, right: pd.DataFrame, keys: list[list[str]], cols: list[str]) -> pd.DataFrame:
    """`cols` of the first `right` row (in its order) equal to each `left` row on the first key list that matches.

    Key lists are tried in order (e.g. same tokens and routing, then same tokens alone); null keys equal null
    keys. Returns a frame indexed like `left`, null where no key list matched.
    """
    found = None
    for on in keys:
        firsts = right.drop_duplicates(on)[[*on, *cols]].assign(_matched=True)
        merged = left[on].reset_index(drop=True).merge(firsts, on=on, how="left")[[*cols, "_matched"]]
        if found is None:
            found = merged
        else:
            fill = found["_matched"].isna() & merged["_matched"].notna()
            found.loc[fill] = merged.loc[fill]
    return found.drop(columns="_matched").set_axis(left.index)
