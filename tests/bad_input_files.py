"""The binary members of the bad-input corpus (tests/bad_inputs), made in a copy of it.

Text cases are files in tests/bad_inputs; what cannot sensibly be a text file in the
repository (bytes that are not UTF-8, weights files, images, a module with a syntax error)
is written here, next to the scenarios that name it.
"""

from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
               "size 1048576\n")


class _Payload:
    """Pickles as a call to print(): a payload that torch.load(weights_only=True) refuses."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this ran while loading the weights",))


def copy_corpus(dest: Path) -> Path:
    """Copy the corpus to ``dest`` and add the binary members; return ``dest``."""
    shutil.copytree(CORPUS, dest, ignore=shutil.ignore_patterns("__pycache__"))
    _not_yaml(dest / "not_yaml", (CORPUS / "one_mistake" / "amount-for-sparsity.yaml")
              .read_text().replace("amount", "sparsity"))
    _distiller(dest / "distiller", (CORPUS / "distiller" / "schedules" / "agp-ok.yaml")
               .read_text())
    for folder in (dest / "validate_vs_run", dest / "reference"):
        _images(folder)
    _weights(dest / "reference" / "weights")
    (dest / "reference" / "corpus_models_syntax.py").write_text(
        "def build(:\n    return None\n")
    return dest


def _not_yaml(folder: Path, good: str) -> None:
    (folder / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (folder / "latin1.yaml").write_bytes(good.replace("name: corpus", "name: modèle-café")
                                         .encode("latin-1"))
    (folder / "latin1-comment.yaml").write_bytes(("# Modèle entraîné sur MNIST\n" + good)
                                                 .encode("latin-1"))
    (folder / "png.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(40))
    (folder / "gzip.yaml").write_bytes(gzip.compress(good.encode(), mtime=0))
    (folder / "utf16-no-bom.yaml").write_bytes(good.encode("utf-16-le"))
    (folder / "bell-character.yaml").write_text(good.replace("name: corpus", "name: corpus\a"))
    (folder / "a-folder.yaml").mkdir()


def _distiller(folder: Path, good: str) -> None:
    (folder / "latin1-schedule.yaml").write_bytes(
        ("# élagage progressif\n" + good).encode("latin-1"))
    (folder / "binary-schedule.yaml").write_bytes(gzip.compress(good.encode(), mtime=0))


def _images(folder: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, classes in (("images_ok", ("cat", "dog")), ("images_one_class", ("cat",)),
                          ("images_corrupt", ("cat", "dog"))):
        for cls in classes:
            (folder / name / cls).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / name / cls / f"{i}.png")
    (folder / "images_corrupt" / "dog" / "3.png").write_bytes(b"not really a PNG")


def _weights(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from torch import nn

    from unified.torchkit.models import build_model

    folder.mkdir(parents=True)
    (folder / "lfs-pointer.pt").write_text(LFS_POINTER)
    (folder / "lfs-pointer.safetensors").write_text(LFS_POINTER)
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), folder / "pickled-model.pt")
    torch.save({"weight": _Payload()}, folder / "payload.pt")
    (folder / "plain-pickle.pth").write_bytes(pickle.dumps({"weight": _Payload()}))
    (folder / "garbage.pt").write_bytes(b"these are not the weights you are looking for")
    (folder / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + bytes(9))
    five = build_model("builtin:convnet", 5, (1, 28, 28)).state_dict()
    torch.save(five, folder / "convnet-5-classes.pt")
    save_file({k: v.contiguous() for k, v in five.items()},
              str(folder / "convnet-5-classes.safetensors"))
    ten = build_model("builtin:convnet", 10, (1, 28, 28)).state_dict()
    torch.save({f"module.{k}": v for k, v in ten.items()}, folder / "convnet-dataparallel.pt")
    torch.save(build_model("builtin:simplenet-mnist", 10, (1, 28, 28)).state_dict(),
               folder / "simplenet.pt")
    torch.save(torch.zeros(3), folder / "a-tensor.pt")
