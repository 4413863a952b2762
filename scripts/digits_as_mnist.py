"""Write scikit-learn's handwritten digits as an MNIST-format data root (offline stand-in).

    python scripts/digits_as_mnist.py DATA_ROOT
    cmat run --tasks mnist-5split --data-root DATA_ROOT ...

Each 8×8 digit (16 grey levels) is upsampled bilinearly to 20×20 and centred in a 28×28 frame,
as MNIST's digits are; 1/7 of each class becomes the test split (seeded). The files are
MNIST's IDX format (``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``), so the real
loader and the real MNIST preset (ε = 0.3, PGD-40 training) run on real handwriting — used to
check that evaluation PGD is at least as strong as FGSM under MNIST's threat model when no
copy of MNIST can be downloaded.
"""
from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits


def write_idx(path: Path, array: np.ndarray) -> None:
    dims = array.shape
    code = 0x08  # unsigned byte
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, code, len(dims)))
        f.write(struct.pack(">" + "I" * len(dims), *dims))
        f.write(array.astype(np.uint8).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    big = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    frame = F.pad(big, (4, 4, 4, 4))[:, 0]
    images = (frame.numpy() * 255).round().astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    rng = np.random.default_rng(args.seed)
    test = np.zeros(len(labels), bool)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[: len(idx) // 7]] = True
    raw = args.root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, sel in (("train", ~test), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[sel])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[sel])
    print(f"wrote {raw}: {int((~test).sum())} train / {int(test.sum())} test images (28×28, MNIST IDX)")


if __name__ == "__main__":
    main()
