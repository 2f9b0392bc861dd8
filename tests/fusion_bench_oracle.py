"""Run FusionBench's data-free merges on saved task vectors: the oracle of test_oracle_fusion_bench.

    python tests/fusion_bench_oracle.py CASES.pt RESULTS.pt

CASES.pt holds a list of ``{"fn": name, "vectors": [state dict, ...], "kwargs": {...}}``;
RESULTS.pt gets one merged task vector (a state dict) per case, in order. It runs in its
own process because importing ``fusion_bench`` (fusion-bench 0.2.33, the ``oracle`` extra)
takes seconds and changes process-wide state (sys.excepthook, warning filters,
environment variables) that the rest of the test session should not inherit.
"""

from __future__ import annotations

import sys

import torch


def functions() -> dict:
    from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
    from fusion_bench.method.task_singular_vector.utils.TSVM_utils import (
        compute_and_sum_svd_mem_reduction,
        compute_and_sum_svd_mem_reduction_lossless,
    )
    from fusion_bench.method.wudi.wudi import wudi_merging

    return {
        "tsv_m": compute_and_sum_svd_mem_reduction,
        "tsv_m_lossless": compute_and_sum_svd_mem_reduction_lossless,
        "iso_c": iso_c,
        "iso_cts": iso_cts,
        "wudi": wudi_merging,
    }


def main(cases_path: str, results_path: str) -> None:
    torch.set_num_threads(1)  # small tensors: threads only cost time on a shared CPU
    fns = functions()
    results = []
    for case in torch.load(cases_path):
        merged = fns[case["fn"]](case["vectors"], accelerator="cpu", **case["kwargs"])
        results.append({k: v.detach().clone() for k, v in merged.items()})
    torch.save(results, results_path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
