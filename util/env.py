"""The environment report a bug report needs (docs/training.md, 'Your environment'): Python,
torch and torchvision with their builds (CPU / CUDA / ROCm), the devices, native bf16, thread
counts, the pretrained-weights cache, and each dataset card's data folder with whether it holds
prepared scans. A torch / torchvision pair from different builds is named in one line with the
fix (exit status 2).

    python -m util.env
    python -m util.env --json
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

from data.cli import new_parser
from util.builds import build_of, package_version, torchvision_problem
from util.machine import usable_cpus
from util.user_errors import EXIT_USER_ERROR

__all__ = ["collect", "format_report", "main", "THREAD_ENV"]

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SLURM_CPUS_PER_TASK")
OTHER_PACKAGES = ("numpy", "scipy", "SimpleITK", "nibabel", "scikit-image", "opencv-python-headless",
                  "sacred", "tensorboard", "monai")


def _torch() -> dict[str, Any]:
    import torch

    from util.backends import cpu_native_bf16, is_rocm

    cuda = torch.cuda.is_available()
    devices = [{"index": i, "name": torch.cuda.get_device_name(i),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2 ** 30, 1),
                "bf16": bool(torch.cuda.is_bf16_supported())} for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "version": torch.__version__,
        "build": build_of(torch.__version__, cuda=torch.version.cuda, hip=getattr(torch.version, "hip", None)),
        "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu_backend": ("ROCm" if is_rocm() else "CUDA") if cuda else None,
        "devices": devices, "cpu_native_bf16": cpu_native_bf16(),
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
    }


def _weights() -> dict[str, Any]:
    from models.backbone.weights import MODEL_NAMES, available_specs, hub_checkpoint_dir

    cached = {f"{s.modelname} {s.init}": s.cache_path.is_file()
              for name in MODEL_NAMES for s in available_specs(name)}
    return {"cache": str(hub_checkpoint_dir()), "files": cached}


def _datasets() -> list[dict[str, Any]]:
    from data.cards import known_cards, load_card, scan_ids_in

    out = []
    for name in sorted(known_cards()):
        try:
            card = load_card(name)
        except ValueError as err:
            out.append({"card": name, "problem": str(err).splitlines()[0]})
            continue
        folder = Path(card.data_dir)
        try:
            ids = scan_ids_in(card, folder) if folder.is_dir() else []
        except FileNotFoundError:
            ids = []
        superpix = sum(1 for sid in ids if (folder / card.file("superpix", id=sid, scale="MIDDLE")).is_file())
        out.append({"card": name, "data_dir": str(folder), "exists": folder.is_dir(), "scans": len(ids),
                    "superpixels_MIDDLE": superpix})
    return out


def collect() -> dict[str, Any]:
    """Everything the report shows, as plain data; ``problems`` lists what cannot work."""
    tv = package_version("torchvision")
    report: dict[str, Any] = {
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "platform": platform.platform()},
        "cpus": {"os": os.cpu_count(), "usable": usable_cpus(), **{k: os.environ.get(k) for k in THREAD_ENV}},
        "torch": _torch(),
        "torchvision": {"version": tv, "build": build_of(tv)},
        "packages": {p: package_version(p) for p in OTHER_PACKAGES},
        "problems": [],
    }
    problem = torchvision_problem()
    report["weights"] = _weights() if problem is None else {"cache": None, "files": {}}
    if problem:
        report["problems"].append(problem)
    else:
        import torchvision
        report["torchvision"] = {"version": torchvision.__version__, "build": build_of(
            torchvision.__version__, cuda=getattr(torchvision.version, "cuda", None))}
    report["datasets"] = _datasets()
    return report


def _device_lines(t: dict[str, Any]) -> list[str]:
    if not t["devices"]:
        return ["devices      none (CPU only)"]
    return [f"device {d['index']}     {d['name']}, {d['memory_gib']} GiB, bf16 {'yes' if d['bf16'] else 'no'}"
            for d in t["devices"]]


def format_report(r: dict[str, Any]) -> str:
    """The report as aligned text lines; each problem last, as one ``error:`` line."""
    t, c = r["torch"], r["cpus"]
    lines = [f"python       {r['python']['version']} ({r['python']['executable']}), {r['python']['platform']}",
             f"torch        {t['version']} ({t['build']}; CUDA {t['cuda'] or '-'}, HIP {t['hip'] or '-'}, "
             f"cuDNN/MIOpen {t['cudnn'] or '-'})",
             f"torchvision  {r['torchvision']['version']} ({r['torchvision']['build']})",
             *_device_lines(t),
             f"bf16 (CPU)   {'native' if t['cpu_native_bf16'] else 'emulated (bf16 is slower than fp32 here)'}",
             f"threads      torch {t['threads']} (inter-op {t['interop_threads']}), CPUs {c['usable']} usable "
             f"of {c['os']}, " + ", ".join(f"{k}={c[k] or '-'}" for k in THREAD_ENV),
             f"weights      {r['weights']['cache'] or '-'}: " + (", ".join(
                 f"{k} {'cached' if v else 'missing'}" for k, v in r["weights"]["files"].items()) or "-"),
             "packages     " + ", ".join(f"{k} {v or '-'}" for k, v in r["packages"].items())]
    for d in r["datasets"]:
        if "problem" in d:
            lines.append(f"dataset      {d['card']}: broken card ({d['problem']})")
        elif not d["exists"]:
            lines.append(f"dataset      {d['card']}: {d['data_dir']} (no such folder)")
        else:
            lines.append(f"dataset      {d['card']}: {d['data_dir']} ({d['scans']} prepared scans, "
                         f"{d['superpixels_MIDDLE']} with MIDDLE superpixels)")
    lines += [f"error: {p}" for p in r["problems"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser("python -m util.env", __doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = collect()
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return EXIT_USER_ERROR if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
