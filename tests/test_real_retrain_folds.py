"""`benchmarks.real_retrain_folds`: one line per fold and the average change, from the reports
`benchmarks.real_retrain` writes."""

from __future__ import annotations

from benchmarks.real_retrain_folds import fold_row, table


def report(fold: int, active: tuple[float, float], candidate: tuple[float, float], up: bool):
    def scores(t: float, p: float) -> dict:
        return {
            "kinds": {"trough": {"f1": t}, "peak": {"f1": p}},
            "mean_f1": (t + p) / 2,
            "threshold": 0.4,
        }

    return {
        "fold": fold,
        "active": scores(*active),
        "candidate": scores(*candidate),
        "activated": up,
        "retrain_seconds": 180.4,
        "training": {
            "search": {"chosen": {"learning_rate": 3e-4, "iterations": 200}},
            "operating_point": "the parent's",
        },
        "data": {
            "test": {
                "labels": {"trough": 12, "peak": 16},
                "scan_names": ["WSe2-SL445_211118_1.4V_20x20_Z_002.jpg"],
            }
        },
    }


def test_each_fold_is_a_line_and_the_average_change_is_the_mean_of_the_folds():
    rows = [
        fold_row(report(0, (0.7, 0.5), (0.8, 0.5), True)),
        fold_row(report(1, (0.6, 0.6), (0.6, 0.4), False)),
    ]
    text = table(rows)
    lines = text.splitlines()
    assert lines[2].startswith("| 0 | 1.4V_20x20_Z_002 (12 / 16) | 0.0003 x 200 | 0.4 |")
    assert (
        "| 0.700 / 0.500 / 0.600 | 0.800 / 0.500 / 0.650 | +0.050 | activated | 180 s |" in lines[2]
    )
    assert "| -0.100 | kept out |" in lines[3]
    # troughs (+0.1 + 0) / 2, peaks (0 - 0.2) / 2, mean (+0.05 - 0.1) / 2
    assert (
        "Average change over 2 folds: troughs +0.050, peaks -0.100, mean F1 -0.025; "
        "activated on 1 of 2." in text
    )
