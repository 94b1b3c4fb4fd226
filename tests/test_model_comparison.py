"""Models side by side: Table 2 rows per model, top-head depth as a fraction of depth, and which
findings hold in every model, against hand-built tables."""
from __future__ import annotations

import numpy as np
import polars as pl

from workflow_scripts.report import edit_families
from workflow_scripts.report import models as mc


def table2(**rows: tuple[float, float, float]) -> pl.DataFrame:
    """A TABLE2-like frame from method__metric=(mean, ci_low, ci_high)."""
    records = []
    for key, (mean, low, high) in rows.items():
        method, metric = key.rsplit("__", 1)
        records.append({"method": method, "metric": metric, "mean": mean, "ci_low": low, "ci_high": high})
    return pl.DataFrame(records)


def heads(n_layers: int, n_heads: int, best: tuple[int, int], seed: int = 0) -> pl.DataFrame:
    """HEADS-like rows (max kernel) with one clearly best head, two seeds."""
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(2):
        layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        agreement = rng.uniform(0.3, 0.6, layer.size)
        agreement[best[0] * n_heads + best[1]] = 0.95
        frames.append(pl.DataFrame({"layer": layer.ravel(), "head": head.ravel(), "kernel": "max",
                                    "agreement": agreement, "accuracy": agreement, "seed": s}))
    return pl.concat(frames)


A = table2(icl__accuracy=(0.70, 0.62, 0.78), null__accuracy=(0.50, 0.45, 0.55), null__agreement=(0.60, 0.5, 0.7),
           head_max__agreement=(0.85, 0.78, 0.91), head_max__accuracy=(0.66, 0.6, 0.7),
           kr_encoder__agreement=(0.65, 0.6, 0.7), kr_hidden__agreement=(0.80, 0.74, 0.86),
           icl_calibrated__accuracy=(0.72, 0.64, 0.8))
B = table2(icl__accuracy=(0.52, 0.44, 0.60), null__accuracy=(0.50, 0.45, 0.55), null__agreement=(0.95, 0.9, 1.0),
           head_max__agreement=(0.97, 0.93, 1.0), head_max__accuracy=(0.5, 0.4, 0.6),
           kr_encoder__agreement=(0.90, 0.85, 0.95), kr_hidden__agreement=(0.96, 0.92, 1.0))


def test_a_finding_holds_when_the_first_interval_lies_above_the_second_mean():
    above_null, beats_encoder, beats_hidden, calibration = mc.FINDINGS[1], mc.FINDINGS[2], mc.FINDINGS[3], mc.FINDINGS[4]
    assert mc.holds(A, above_null) is True  # .78 > .60
    assert mc.holds(B, above_null) is False  # .93 < .95
    assert mc.holds(A, beats_encoder) is True and mc.holds(A, beats_hidden) is False  # .78 > .65; .78 < .80
    assert mc.holds(A, calibration) is False  # .64 < .70
    assert mc.holds(B, calibration) is None  # calibration off: not measured


def test_depth_is_the_layer_over_the_last_layer_of_each_model():
    deep = mc.depth_of_top_heads(heads(30, 9, best=(23, 2)), fraction=0.01)
    shallow = mc.depth_of_top_heads(heads(18, 4, best=(12, 1)), fraction=0.01)
    assert deep["best"] == "L23 H2" and deep["best_depth"] == 23 / 29 and deep["layers"] == 30
    assert shallow["best"] == "L12 H1" and shallow["best_depth"] == 12 / 17
    assert deep["top_n"] == round(0.01 * 270) == 3


def test_the_view_puts_each_models_numbers_side_by_side_and_says_where_findings_hold():
    tables = {("m1", "rt", "random"): A, ("m2", "rt", "random"): B}
    depths = {("m1", "rt", "random"): mc.depth_of_top_heads(heads(30, 9, (23, 2)), 0.05),
              ("m2", "rt", "random"): mc.depth_of_top_heads(heads(18, 4, (2, 1)), 0.05)}
    frame, findings = mc.comparison_frame(tables, depths), mc.findings_frame(tables, depths)
    icl = {r["model"]: r for r in frame.filter(pl.col("row") == "ICL accuracy").iter_rows(named=True)}
    assert icl["m1"]["cell"] == "0.700 [0.620, 0.780]" and icl["m2"]["mean"] == 0.52
    # m2 has no calibrated row; the view leaves its cell empty rather than inventing one.
    assert set(frame.filter(pl.col("row").str.contains("calibrated"))["model"]) == {"m1"}
    lines = "\n".join(mc.comparison_lines(frame, findings, ["m1", "m2"], "models.png"))
    assert "| ICL accuracy | 0.700 [0.620, 0.780] | 0.520 [0.440, 0.600] |" in lines
    assert "| ICL accuracy, contextually calibrated | 0.720 [0.640, 0.800] | — |" in lines
    # One depth row for both models, though 5% of 270 heads and of 72 are not the same count.
    depth_rows = {r["model"]: r for r in frame.filter(pl.col("row").str.starts_with("top ")).iter_rows(named=True)}
    assert len({r["row"] for r in depth_rows.values()}) == 1
    assert depth_rows["m1"]["cell"].endswith("(14 heads)") and depth_rows["m2"]["cell"].endswith("(4 heads)")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines.splitlines() if line.startswith("| ")}
    assert rows[mc.FINDINGS[0].text].endswith("| holds only in part: m1 (rt) |")  # .62 > .50; .44 < .50
    assert rows[mc.FINDINGS[2].text].endswith("| **holds in every model** |")  # .78 > .65; .93 > .90
    assert rows[mc.FINDINGS[3].text].endswith("| holds in none |")  # .78 < .80; .93 < .96
    assert "rt / random: yes" in rows[mc.FINDINGS[0].text] and "rt / random: no" in rows[mc.FINDINGS[0].text]
    assert "rt / random: —" in rows[mc.FINDINGS[4].text]


def test_a_causal_finding_holds_where_the_paired_difference_is_above_zero_for_some_m():
    def summary(steer_low: float) -> pl.DataFrame:
        rows = [{"family": f, "target": "top - random", "m": m, "measure": edit_families.MAIN[f],
                 "mean": 0.1, "ci_low": -0.05, "ci_high": 0.2} for f in edit_families.MAIN for m in (1, 4)]
        rows[-1]["ci_low"] = steer_low  # steer, m = 4
        return pl.DataFrame(rows)

    records = mc.causal_findings({("m1", "rt", "random"): summary(0.02), ("m2", "rt", "random"): summary(-0.01)})
    steer = {r["model"]: r["holds"] for r in records if r["finding"].startswith("kernel steering")}
    assert steer == {"m1": True, "m2": False}
    assert not any(r["holds"] for r in records if r["finding"].startswith("head knockout"))


def test_the_kernel_reading_finding_follows_the_gain_over_the_strongest_query_free_reading():
    def with_gain(table: pl.DataFrame, low: float) -> pl.DataFrame:
        gain = {"method": "head_max", "metric": "agreement_gain", "mean": low + 0.05, "ci_low": low, "ci_high": low + 0.1,
                "seeds_ci_low": low, "seeds_ci_high": low + 0.1, "n_seeds": 2, "reference": "slot_label"}
        return pl.concat([table, pl.DataFrame([gain])], how="diagonal_relaxed")

    tables = {("m1", "rt", "random"): with_gain(A, 0.02), ("m2", "rt", "random"): with_gain(B, -0.03)}
    depths = {key: mc.depth_of_top_heads(heads(6, 2, (4, 1)), 0.25) for key in tables}
    findings = mc.findings_frame(tables, depths)
    kernel = dict(findings.filter(pl.col("finding") == mc.KERNEL_READING).select("model", "holds").rows())
    assert kernel == {"m1": True, "m2": False}
    # without gain rows (an older table) the finding is not measured rather than false
    alone = mc.findings_frame({("m1", "rt", "random"): A}, {("m1", "rt", "random"): depths[("m1", "rt", "random")]})
    assert alone.filter(pl.col("finding") == mc.KERNEL_READING)["holds"].to_list() == [None]
