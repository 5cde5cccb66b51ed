"""Rewrite a wheel without the members matching some prefixes, fixing its RECORD.

Why: the device call carries at most 64 MiB. unsloth's wheel is 28 MB of which 25 MB is the
"studio" web UI, and bitsandbytes ships 15 CUDA/ROCm builds of which torch cu130 loads one.
Usage: python slim_wheel.py IN.whl OUT_DIR PREFIX [PREFIX ...]
"""

import sys
import zipfile
from pathlib import Path


def slim(src: Path, out_dir: Path, drop: list[str]) -> Path:
    out = out_dir / src.name
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if any(info.filename.startswith(p) for p in drop):
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(ln for ln in lines if not any(ln.startswith(p) for p in drop)) + "\n").encode()
            zout.writestr(info, data)
    return out


if __name__ == "__main__":
    print(slim(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]))
