"""Reading image files: every mode PIL opens becomes its 8-bit RGB values or a refusal naming the file
(:func:`to_rgb`, :func:`read_image`), and every file's header is checked before a run starts
(:func:`check_image_files`), so that an unreadable file is reported at once, not when a batch draws it."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .scan import ImageList

__all__ = ["READABLE_MODES", "check_image_files", "image_file_problem", "read_image", "to_rgb"]

PathLike = Union[str, Path]


# How each PIL mode reads as 8-bit RGB. The one rule for transparency: alpha is dropped, the colour channels are
# kept as if opaque (what torchvision's and timm's loaders do, so a model sees the same pixels here as there);
# premultiplied modes (RGBa, La) are unpremultiplied first, palette images take their palette colours.
_INTEGER_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16-bit and 32-bit samples, scaled by their range
_VIA_RGBA = ("P", "PA")  # palette images: through RGBA, so a palette with transparency converts without a warning
READABLE_MODES = (
    "1",
    "L",
    "LA",
    "La",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
    "LAB",
    "HSV",
    "F",
    *_INTEGER_MODES,
)
"""The PIL modes :func:`read_image` reads; a file of another mode is refused with its name."""


def _integer_range(image: Image.Image) -> int:
    """The largest value a sample of an integer image can hold: 65535 for 16-bit modes and for files whose 16-bit
    samples PIL widens to 32-bit (PGM), else what a TIFF declares (bits per sample, signed or not)."""
    if image.mode != "I" or image.format != "TIFF":
        return 65535
    tags = getattr(image, "tag_v2", {})
    bits, sample_format = tags.get(258, 32), tags.get(339, 1)
    bits = int(bits[0] if isinstance(bits, tuple) else bits)
    signed = int(sample_format[0] if isinstance(sample_format, tuple) else sample_format) == 2
    return 2 ** (bits - 1 if signed else bits) - 1


def _gray_rgb(brightness: np.ndarray) -> Image.Image:
    """Brightness in [0, 1] (clipped) as an 8-bit gray RGB image."""
    values = np.clip(np.rint(brightness * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(values).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, whatever its mode (see :data:`READABLE_MODES`).

    16-bit and 32-bit integer images are scaled by the range of their samples (65535 for 16-bit, the bits a TIFF
    declares for 32-bit; negative values read as 0), float images are brightness in [0, 1] (times 255; values
    outside [0, 1] or not finite are an error, as their scale is unknown). Transparency is dropped: RGBA, LA, PA
    and palette images with a transparent colour read as their colour channels (premultiplied RGBa and La are
    unpremultiplied first). Raises ``ValueError`` for another mode.
    """
    mode = image.mode
    if mode in _INTEGER_MODES:
        values = np.asarray(image if mode == "I" else image.convert("I"), dtype=np.float64)
        return _gray_rgb(values / _integer_range(image))
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (np.isfinite(low) and np.isfinite(high)) or low < -1e-6 or high > 1 + 1e-6:
            raise ValueError(
                f"a float image with values in [{low:g}, {high:g}], where float images hold brightness in [0, 1]: "
                "scale it to [0, 1] or save it as 8-bit"
            )
        return _gray_rgb(values)
    if mode not in READABLE_MODES:
        raise ValueError(f"PIL mode {mode!r} has no RGB reading here; save it as 8-bit RGB or grayscale")
    if mode == "La":
        image = image.convert("LA")
    elif mode in _VIA_RGBA:
        image = image.convert("RGBA")
    return image.convert("RGB")


def read_image(path: PathLike) -> Image.Image:
    """The image at ``path`` as 8-bit RGB (every mode read as :func:`to_rgb` says), or a ValueError naming the file
    when PIL cannot decode it or its mode has no RGB reading."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {path} ({error}); replace the file or leave it out.") from error


_SHOWN_FILES = 10  # the unreadable files an error names before "... and N more"


def image_file_problem(path: PathLike) -> Optional[str]:
    """Why the file at ``path`` cannot be an image here, from its header only (nothing decoded), or None: missing,
    empty, not an image PIL opens, or of a mode :func:`to_rgb` does not read."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as image:
            mode = image.mode
    except FileNotFoundError:
        return "no such file"
    except UnidentifiedImageError:
        return "not an image PIL can open, or its header is damaged"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return str(error) or type(error).__name__
    return None if mode in READABLE_MODES else f"PIL mode {mode!r}, which has no RGB reading here"


_CHUNK = 256  # files per thread task: one task per file costs as much as the check of a cached header


def _chunk_problems(paths: list[str]) -> list[Optional[str]]:
    return [image_file_problem(path) for path in paths]


def _checking_threads() -> int:
    # Opening headers waits on the disk more than on the CPU: a few threads per core hide its latency.
    return min(32, 4 * (os.cpu_count() or 1))


def check_image_files(*image_lists: ImageList) -> None:
    """Open the header of every file of ``image_lists`` (see :func:`image_file_problem`) before any training, and
    raise one ValueError naming how many cannot be read and the first of them; a missing, empty or foreign file
    is found here, not when a batch draws it hours into a run."""
    first_source: dict[str, str] = {}
    for images in image_lists:
        for path in images.paths:
            first_source.setdefault(path, images.source)
    paths = list(first_source.items())  # each file once, with the first list or folder that has it
    chunks = [[path for path, _ in paths[start : start + _CHUNK]] for start in range(0, len(paths), _CHUNK)]
    with ThreadPoolExecutor(_checking_threads()) as pool:
        found = [why for whys in pool.map(_chunk_problems, chunks) for why in whys]
    problems = [(path, source, why) for (path, source), why in zip(paths, found) if why]
    if not problems:
        return
    if len(problems) == 1:
        path, source, why = problems[0]
        raise ValueError(f"cannot read image {path} ({why}); replace the file or leave it out. It is part of {source}.")
    sources = ", ".join(dict.fromkeys(source for _, source, _ in problems))
    shown = ", ".join(f"{path} ({why})" for path, _, why in problems[:_SHOWN_FILES])
    more = f" and {len(problems) - _SHOWN_FILES} more" if len(problems) > _SHOWN_FILES else ""
    raise ValueError(
        f"cannot read {len(problems)} of the {len(paths)} image files of {sources}: {shown}{more}; replace these "
        "files or leave them out."
    )
