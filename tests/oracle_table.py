"""The oracle table: per case, near-kink decisions, distance of our float32 gradient to the
framework's own autograd and to the decision-matched float64 oracle, at both optimisation levels.

Run by hand (the Keras zoo cases are built on first use, see tests/zoo/zoo.py):

    PYTHONPATH=$PWD .venv/bin/python -m tests.oracle_table [torch] [zoo] \
        > bench/results/oracle_table.txt

Columns: ``near-kink`` = head decisions the float32 forward takes differently from the float64
one (the largest float64 distance to the kink ÷ the tensor's max |value| in brackets);
``vs autograd`` = max |ours − theirs| / max |theirs| with theirs = torch autograd (the committed
fixture, float32) or TF's float64 GradientTape; ``autograd dir.`` = the framework's gradient
against the head frozen with float64's decisions (directional); ``oracle`` = ours against the
head frozen with the float32 forward's decisions (directional, :data:`tests.oracle.TOLERANCE`);
``fwd noise`` = the head's float32 forward rounding (:attr:`tests.oracle.Report.noise`);
``run delta`` = the decisions' run vs the production gradient (0: bit-identical).
"""

from __future__ import annotations

import platform
import sys
import time

import numpy as np
import onnxruntime as ort

from tests import oracle


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


def _row(case: str, report: oracle.Report, theirs: np.ndarray) -> str:
    kinks = f"{report.near_kink}" + (f" ({report.near_kink_distance:.0e})"
                                     if report.near_kink else "")
    return (f"{case:<44} {report.level[11:]:<8} {kinks:<12} {_rel(report.gradient, theirs):>10.1e}"
            f" {report.rel_directional(theirs):>13.1e} {report.error:>9.1e} {report.noise:>9.1e}"
            f" {report.forward_delta:>9.0e}")


def torch_rows():
    from tests.test_torch_parity import DATA, MANIFEST, MODELS, TARGETS, X, tensor

    for layer in ("early", "mid", "last", "last_bn2"):
        for key in ("t0", "t1"):
            expected = DATA[MANIFEST["gradients"][layer]["npz_keys"][key]]
            for level in oracle.LEVELS:
                report = oracle.check(MODELS["gap"], tensor("gap", layer), X, TARGETS[key],
                                      level)
                yield _row(f"torch resnet_gap {layer} {key}", report, expected)


def zoo_rows(names: list[str] | None = None):
    from tests.zoo import zoo

    for name, arch in zoo.ARCHS.items():
        if names and name not in names:
            continue
        case = zoo.load_case(arch)
        native = case.model64
        for position, key in zip(("early", "middle", "last"), case.taps):
            if key not in case.onnx_names:
                continue
            tf64 = case.grads64[key]
            if case.onnx_layouts[key] == "NCHW":
                tf64 = case.nchw(tf64)
            for level in oracle.LEVELS:
                report = oracle.check(case.model_path, case.onnx_names[key], case.x,
                                      case.targets, level,
                                      reference64=native[0] if native else None)
                yield _row(f"keras {name} {position} {key}"[:44], report, tf64)


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = ""
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line
                    break
        return name + (" (AVX-512)" if "avx512f" in flags else "")
    except (OSError, UnboundLocalError):
        return platform.machine()


def main(parts: list[str]) -> None:
    """``parts``: torch, zoo (all architectures) or zoo architecture names; default all."""
    parts = parts or ["torch", "zoo"]
    print(f"# {_cpu()}, onnxruntime {ort.__version__}, {time.strftime('%Y-%m-%d')}")
    print(f"{'case':<44} {'level':<8} {'near-kink':<12} {'vs autograd':>10} "
          f"{'autograd dir.':>13} {'oracle':>9} {'fwd noise':>9} {'run delta':>9}")
    archs = [p for p in parts if p not in ("torch", "zoo")]
    rows = [torch_rows()] if "torch" in parts else []
    if "zoo" in parts or archs:
        rows.append(zoo_rows(archs))
    for part in rows:
        for row in part:
            print(row, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
