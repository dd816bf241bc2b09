"""File I/O of the lowest layer: atomic writes, and image reading with an integrity check.

Writes: every output goes to a temporary name in its target folder, then ``os.replace`` puts it
in place, so an interrupted run never leaves a half-written file. The temporary name keeps the
real suffix (``.<stem>.tmp<pid>.nii.gz``) because SimpleITK and nibabel choose their writer from it.

Reads: every NIfTI read of the project goes through ``read_image`` (or ``read_zyx``), which first
checks the file (``verify_image_file``): SimpleITK fills the missing part of a truncated
``.nii.gz`` with zeros without a word, so the whole gzip stream is decompressed once (its CRC and
length are verified by the gzip trailer) and the data it holds must cover the header's voxels.
A file is checked once per process while its size, modification time and inode stay the same.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk

__all__ = ["atomic_path", "atomic_write_json", "atomic_save_torch", "atomic_write_sitk",
           "atomic_write_text", "full_suffix", "CorruptImageError", "verify_image_file",
           "verify_image_files", "read_image", "read_zyx", "spacing_zyx"]

# NIfTI-1/-2 header fields (byte offsets of the NIfTI standard's nifti1.h / nifti2.h)
NIFTI1_SIZEOF_HDR, NIFTI2_SIZEOF_HDR = 348, 540
NIFTI1_FIELDS = {"dim": (40, "8h"), "bitpix": (72, "h"), "vox_offset": (108, "f")}
NIFTI2_FIELDS = {"dim": (16, "8q"), "bitpix": (14, "h"), "vox_offset": (168, "q")}
NIFTI_MAX_DIMS = 7
GZIP_MAGIC = b"\x1f\x8b"
READ_CHUNK = 1 << 20              # bytes decompressed per read while verifying
VERIFIED_CACHE_SIZE = 4096        # files remembered as checked (per process)


def full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``a.nii.gz``, ``.pth`` for ``5.pth``, ``''`` without a suffix."""
    name = path.name
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and the exception propagates.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = full_suffix(target)
    stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
    tmp = target.parent / f".{stem}.tmp{os.getpid()}{suffix}"
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(text: str, target: str | os.PathLike) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def atomic_write_json(obj: Any, target: str | os.PathLike, *, indent: int | None = None) -> Path:
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=indent)
    return Path(target)


def atomic_save_torch(obj: Any, target: str | os.PathLike) -> Path:
    import torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)
    return Path(target)


def atomic_write_sitk(image: Any, target: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write a SimpleITK image atomically (``.nii.gz`` keeps its suffix on the temporary)."""
    import SimpleITK as sitk

    with atomic_path(target) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return Path(target)


class CorruptImageError(ValueError):
    """An image file that is truncated or corrupt (the message names it)."""


def _corrupt(path: Path, detail: str) -> CorruptImageError:
    return CorruptImageError(f"{path}: corrupt or truncated image file ({detail}); nothing was read "
                             "from it: replace it with an intact copy, or rerun the step that "
                             "wrote it with --overwrite")


def _nifti_data_end(header: bytes) -> int | None:
    """Bytes a single-file NIfTI needs (``vox_offset`` + voxels x ``bitpix`` / 8), or None when
    ``header`` is not a single-file NIfTI-1/-2 header (another format: left to SimpleITK).

    Raises:
        ValueError: a NIfTI header with impossible dimensions (the caller names the file).
    """
    if len(header) < 4:
        return None
    for order in "<>":
        sizeof_hdr = struct.unpack_from(order + "i", header, 0)[0]
        if sizeof_hdr == NIFTI1_SIZEOF_HDR and header[344:347] == b"n+1":
            fields = NIFTI1_FIELDS
        elif sizeof_hdr == NIFTI2_SIZEOF_HDR and header[4:7] == b"n+2":
            fields = NIFTI2_FIELDS
        else:
            continue
        if len(header) < sizeof_hdr:
            raise ValueError(f"header cut short: {len(header)} of {sizeof_hdr} bytes")
        values = {k: struct.unpack_from(order + fmt, header, off) for k, (off, fmt) in fields.items()}
        dim = values["dim"]
        ndim, bitpix, vox_offset = int(dim[0]), int(values["bitpix"][0]), int(values["vox_offset"][0])
        if not 1 <= ndim <= NIFTI_MAX_DIMS or any(d < 1 for d in dim[1:ndim + 1]) or bitpix < 1:
            raise ValueError(f"impossible header: dim {list(dim)}, bitpix {bitpix}")
        n_voxels = int(np.prod([int(d) for d in dim[1:ndim + 1]], dtype=np.int64))
        return max(vox_offset, sizeof_hdr) + (n_voxels * bitpix + 7) // 8
    return None


def _decompressed_size_and_header(path: Path, header_bytes: int) -> tuple[int, bytes]:
    """Decompress the whole gzip stream of ``path`` once: its size and first ``header_bytes``.

    The gzip reader checks every member's CRC-32 and length against its trailer.

    Raises:
        ValueError: truncated stream, CRC or length mismatch, corrupt deflate data.
    """
    total, head = 0, b""
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(READ_CHUNK):
                if len(head) < header_bytes:
                    head += chunk[: header_bytes - len(head)]
                total += len(chunk)
    except EOFError as err:
        raise ValueError("the gzip stream is cut short: it ends before its end-of-stream marker") from err
    except (gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"gzip data corrupt: {err}") from err
    return total, head


def _verify(path: Path) -> None:
    with open(path, "rb") as fh:
        header = fh.read(NIFTI2_SIZEOF_HDR)     # the header itself when the file is uncompressed
    is_gzip = header.startswith(GZIP_MAGIC)
    try:
        if is_gzip:
            size, header = _decompressed_size_and_header(path, NIFTI2_SIZEOF_HDR)
        else:       # uncompressed (or not an image at all: the reader says so)
            size = path.stat().st_size
        needed = _nifti_data_end(header) if path.name.endswith((".nii", ".nii.gz")) else None
    except ValueError as err:
        raise _corrupt(path, str(err)) from err
    if needed is not None and size < needed:
        raise _corrupt(path, f"{size} bytes of NIfTI data{' after decompression' if is_gzip else ''}, "
                             f"its header needs {needed}")


@functools.lru_cache(maxsize=VERIFIED_CACHE_SIZE)
def _verify_once(path: str, size: int, mtime_ns: int, inode: int) -> None:
    """``_verify`` remembered for one version of a file (exceptions are not remembered)."""
    _verify(Path(path))


def verify_image_file(path: str | os.PathLike) -> None:
    """Check that an image file is complete before anything is read from it.

    ``.gz`` files: the whole gzip stream decompresses with a valid CRC-32 and length. NIfTI files
    (``.nii``, ``.nii.gz``, single-file NIfTI-1/-2): the (decompressed) data covers the header's
    ``vox_offset`` plus all voxels. Other formats are left to the reader. A file already checked
    in this process is not read again while its size, mtime and inode are unchanged.

    Raises:
        FileNotFoundError: no such file.
        CorruptImageError: truncated or corrupt (a ValueError naming the file and what is wrong).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    st = path.stat()
    _verify_once(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def read_image(path: str | os.PathLike) -> "sitk.Image":
    """Read a NIfTI (or any SimpleITK-readable) file after ``verify_image_file``.

    Raises:
        FileNotFoundError: the file does not exist.
        CorruptImageError: truncated or corrupt file.
        ValueError: the file cannot be read as an image (the message names it).
    """
    import SimpleITK as sitk

    path = Path(path)
    verify_image_file(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise ValueError(f"{path}: not a readable image (corrupt or wrong format: {detail})") from err


def read_zyx(path: str | os.PathLike, dtype: type | None = None) -> tuple[np.ndarray, "sitk.Image"]:
    """Array in SimpleITK order Z x H x W (``dtype`` when given), and the image (its geometry)."""
    import SimpleITK as sitk

    img = read_image(path)
    arr = sitk.GetArrayFromImage(img)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return arr, img


def spacing_zyx(img: "sitk.Image") -> tuple[float, float, float]:
    """Voxel spacing in mm in array axis order (z, y, x); SimpleITK reports (x, y, z)."""
    sx, sy, sz = img.GetSpacing()[:3]
    return float(sz), float(sy), float(sx)


def verify_image_files(paths: Iterable[str | os.PathLike], what: str) -> None:
    """Pre-flight check of every input of a command before it writes anything.

    Args:
        paths: the image files the command will read.
        what: the command, for the message (e.g. ``pseudolabels``).
    Raises:
        CorruptImageError: one or more files are truncated or corrupt; all are listed.
        FileNotFoundError: files are missing (and none is corrupt); all are listed.
    """
    missing: list[str] = []
    corrupt: list[str] = []
    for path in paths:
        try:
            verify_image_file(path)
        except FileNotFoundError as err:
            missing.append(str(err))
        except CorruptImageError as err:
            corrupt.append(str(err))
    problems = corrupt + missing
    if not problems:
        return
    text = f"{what}: {len(problems)} unusable input file(s), nothing written:\n  " + "\n  ".join(problems)
    if corrupt:
        raise CorruptImageError(text)
    raise FileNotFoundError(text)
