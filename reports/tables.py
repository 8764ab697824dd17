"""results.csv: one row for FP32 and one per (method, bits), the numbers of results.json flattened."""

from __future__ import annotations

import csv
import io

ENTRY_COLUMNS = ("method", "bits", "w_bits", "a_bits", "top1", "agreement", "sqnr_db")
# From each entry's integer_evaluation (empty where the method is not exported to an integer program).
INTEGER_COLUMNS = ("integer_top1", "integer_agreement", "integer_agreement_with_fake_quant", "verify_mismatches")
TIMING_COLUMNS = ("calibrate_s", "eval_s", "integer_s")
CSV_COLUMNS = ENTRY_COLUMNS + INTEGER_COLUMNS + TIMING_COLUMNS


def _integer_row(integer: dict) -> dict:
    if not integer.get("exported"):
        return {}
    return {"integer_top1": integer["top1"], "integer_agreement": integer["agreement"],
            "integer_agreement_with_fake_quant": integer["agreement_with_fake_quant"],
            "verify_mismatches": integer["verify"]["mismatches"]}


def results_csv(results: dict) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n", restval="")
    writer.writeheader()
    fp32 = results["fp32"]
    writer.writerow({"method": "fp32", "bits": "fp32", "w_bits": 32, "a_bits": 32, "top1": fp32["top1"],
                     "agreement": 100.0, "eval_s": fp32["timings"]["eval_s"]})
    for entry in results["results"]:
        row = {key: entry[key] for key in ENTRY_COLUMNS}
        row.update(_integer_row(entry["integer_evaluation"]))
        row.update(entry["timings"])
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()
