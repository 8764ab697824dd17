"""results.csv: one row for FP32 and one per (method, bits), the numbers of results.json flattened."""

from __future__ import annotations

import csv
import io

CSV_COLUMNS = ("method", "bits", "w_bits", "a_bits", "top1", "agreement", "sqnr_db", "calibrate_s", "eval_s")


def results_csv(results: dict) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    fp32 = results["fp32"]
    writer.writerow({"method": "fp32", "bits": "fp32", "w_bits": 32, "a_bits": 32, "top1": fp32["top1"],
                     "agreement": 100.0, "sqnr_db": "", "calibrate_s": "", "eval_s": fp32["timings"]["eval_s"]})
    for entry in results["results"]:
        row = {key: entry[key] for key in CSV_COLUMNS[:7]}
        row.update(entry["timings"])
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()
