"""The per-image decode path: open, decode and resize one image to a uint8 [3,S,S] tensor, as fast as is correct.

What it does, and why (measured on 600-1600 px product-photo JPEGs, one core; `benchmarks/input_pipeline.py`):

* **JPEG: DCT-domain downscaling first** (Pillow's ``draft("RGB", (S, S))``). libjpeg(-turbo) decodes straight to
  1/2, 1/4 or 1/8 of the size, never below S on either side, skipping most of the inverse DCT and colour conversion.
  Pillow keeps the accurate DCT (no "fast" DCT, fancy upsampling on) in this mode. The rest of the way to S x S is
  an antialiased bilinear resize over the *exact* box that the draft covers (a scaled image of an odd width has a
  partial last column), so the geometry is that of resizing the full image. Against the torchvision baseline
  (full decode, then Pillow's antialiased bilinear ``Resize((S, S))``): same size and orientation, mean absolute
  difference 0.7 grey levels of 255 on the benchmark's photos (at most ~1.8 on a sharp real photo when the draft
  leaves a factor near 1): the DCT scaling is a slightly sharper low-pass than the wide triangle filter, not a
  misalignment. Drafting to ``DRAFT_GAP`` x S instead (Pillow's ``thumbnail`` idea of a ``reducing_gap``) narrows
  that (gap 1.5: mean 0.26) but costs +30% decode time (gap 2: +65%, mean 0.13), so the default gap is 1.
* **The resize runs in PyTorch** (``interpolate(..., mode="bilinear", antialias=True)`` on the uint8 HWC buffer seen
  as a channels-last tensor): PyTorch has a vectorized uint8 kernel for exactly this case that is ~2.5x faster than
  Pillow's resampler and agrees with it to +-1 grey level (mean 0.02). Pillow's ``reducing_gap`` / ``Image.reduce``
  (a box pre-reduction) are not used: after the draft the remaining factor is below 2 for any photo up to 2048 px
  (where they buy nothing), and for other formats we keep the exact filter of the baseline.
* **Other formats** (PNG, WebP, BMP, GIF, TIFF, ...) are decoded in full by Pillow and take the same resize. Any
  mode (grayscale, palette, RGBA, CMYK) is converted to RGB as the baseline's ``convert("RGB")`` does, except
  16-bit grayscale (Pillow's ``I;16``): ``convert`` clips it at 255, so nearly every pixel turned white (torchvision
  does the same); here its top 8 bits are kept, the same scaling Pillow applies to 16-bit RGB.
* **Hostile files**: an image declaring more than twice Pillow's ``MAX_IMAGE_PIXELS`` (a decompression bomb, e.g.
  30000 x 30000 in 1 MB) is refused before any pixel is allocated (``DecompressionBombError``, one of
  ``BAD_IMAGE_ERRORS``). ``verify_image`` decodes a file in full once, before training, and also catches what a
  decode alone lets through: libjpeg repairs a damaged JPEG with grey blocks and only warns ("Corrupt JPEG data"),
  which Pillow never shows, so JPEGs are checked through libjpeg's warnings (via torchvision) as well.
* **EXIF orientation is not applied** (no ``ImageOps.exif_transpose``): the baseline (torchvision's ImageFolder
  loader, which the paper's pipeline is) ignores the tag, so the decoded pixels keep the stored orientation, and the
  preprocessed formats store exactly what this function returns; training and evaluation therefore always see
  the same orientation, whichever path they read.
* ``simplejpeg`` (libjpeg-turbo with its finer n/8 scale factors) decodes about 10% faster than Pillow's draft on
  the same files; not enough to add a dependency. PyTurboJPEG needs the system libturbojpeg (not in its wheel).
  ``torchvision.io.decode_jpeg`` has no DCT scaling (a full decode) and is deprecated since torchvision 0.29. What
  is left is libjpeg's entropy decoding, ~70% of the time: the decode path is ~3x the baseline, not more; for more,
  preprocess once (`data.preprocessed`).
"""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lossguided.data.errors import DataError

DRAFT_GAP = 1.0  # JPEGs are DCT-scaled to at least DRAFT_GAP * size a side (see the module doc for the trade-off)
# What an unreadable or hostile file raises from Pillow: truncated or broken bodies (OSError), unknown formats
# (UnidentifiedImageError is an OSError), bad headers (ValueError, SyntaxError, struct.error is a ValueError...),
# decompression bombs (DecompressionBombError is none of those).
BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, Image.DecompressionBombError)
_MODES_16 = ("I;16", "I;16B", "I;16L", "I;16N")
# libjpeg(-turbo) warnings that mean damaged data (jerror.h); others ("Warning: unknown JFIF revision") are harmless
JPEG_DAMAGE = (
    "Corrupt JPEG data",
    "Premature end of JPEG file",
    "Invalid SOS parameters",
    "Inconsistent progression sequence",
)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> RGB; 16-bit grayscale keeps its top 8 bits (convert('RGB') would clip it to white)."""
    if img.mode in _MODES_16:
        img = Image.fromarray((np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8), mode="L")
    return img if img.mode == "RGB" else img.convert("RGB")


def resize_uint8(x: torch.Tensor, size: int, *, extent: tuple[float, float] | None = None) -> torch.Tensor:
    """uint8 [C,H,W] -> uint8 [C,size,size], bilinear with antialiasing (Pillow's filter, +-1 grey level).

    `extent` (height, width) <= (H, W) is the part of the input, from the top-left corner, that maps onto the output
    (Pillow's `box`): a DCT-scaled JPEG has a partial last row/column when its size is not a multiple of the scale.
    Channels-last input (a permuted HWC buffer) takes PyTorch's vectorized uint8 path.
    """
    h, w = x.shape[-2:]
    if extent is None or (extent[0] == h and extent[1] == w):
        if h == size and w == size:
            return x
        return F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    # Output size and the scales are given separately, so the source coordinates are those of the box.
    scale_h, scale_w = size / extent[0], size / extent[1]
    try:
        out = torch.ops.aten._upsample_bilinear2d_aa(x[None], [size, size], False, scale_h, scale_w)
    except (RuntimeError, AttributeError):  # pragma: no cover - a PyTorch without the op: the box rounded
        out = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0]


def decode_image(path, size: int) -> torch.Tensor:
    """Open, decode and resize one image file (a path or a binary file object) to uint8 RGB [3,size,size].

    Raises one of `BAD_IMAGE_ERRORS` for an unreadable or hostile file.
    """
    with Image.open(path) as img:
        extent = None
        if img.format == "JPEG":
            target = max(size, int(size * DRAFT_GAP))
            drafted = img.draft("RGB", (target, target))  # None for a JPEG Pillow cannot draft (several tiles)
            if drafted is not None:
                box = drafted[1]  # (0, 0, W / scale, H / scale) in the scaled image
                extent = (float(box[3]), float(box[2]))
        img = to_rgb(img)
        arr = np.array(img)  # one writable copy of the decoded pixels, HWC
    x = torch.from_numpy(arr).permute(2, 0, 1)  # channels-last [3,H,W] view: what the fast resize kernel wants
    return resize_uint8(x, size, extent=extent)


def decode_bytes(data: bytes | memoryview, size: int | None = None) -> torch.Tensor:
    """An encoded image in memory (a preprocessed shard's JPEG) -> uint8 [C,H,W], resized when `size` differs.

    Keeps grayscale as 1 channel (the batch transform expands it); anything else becomes RGB.
    """
    import io

    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("RGB", "L"):
            img = to_rgb(img)
        arr = np.array(img)
    x = torch.from_numpy(arr[..., None] if arr.ndim == 2 else arr).permute(2, 0, 1)
    return x if size is None else resize_uint8(x, size)


def verify_image(path: str | os.PathLike) -> str | None:
    """Decode `path` in full, as training will: None when it is sound, else why not, in a few words.

    Catches bombs, truncated or broken bodies, and JPEGs that libjpeg only warns about (it fills the damage in).
    """
    try:
        with Image.open(path) as img:
            if img.format != "JPEG":
                img.load()
                return None
        with open(path, "rb") as f:
            data = f.read()
        warning = _libjpeg_warning(data)
        if warning is None:
            return None
        if warning:
            return f"corrupt JPEG data ({warning})"
        with Image.open(path) as img:  # libjpeg through torchvision refused it: Pillow's verdict counts
            img.load()
        return None
    except BAD_IMAGE_ERRORS as e:
        return f"{type(e).__name__}: {e}"


def _libjpeg_warning(data: bytes) -> str | None:
    """libjpeg's warnings while decoding `data` ('' when it refused the file, None when it decoded cleanly).

    libjpeg prints them to the process's stderr (fd 2), so fd 2 points at a temporary file for the call: call it
    from one thread at a time (the parallel check uses processes).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's image decoding is deprecated; libjpeg is what we want
            from torchvision.io import decode_jpeg
    except ImportError:  # pragma: no cover - without torchvision, Pillow's full decode is the check
        return None
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            except RuntimeError:
                return ""
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        text = sink.read(4096).decode("utf-8", "replace")
    return next((line.strip() for line in text.splitlines() if line.strip().startswith(JPEG_DAMAGE)), None)


class UnreadableImageError(DataError):
    """An image that does not decode, raised inside a DataLoader worker. The loader re-raises it in the main
    process as `UnreadableImageError(<the worker's traceback>)`; this keeps only its own last line, so whichever
    command reads the images (train, evaluate, features) shows the user one line."""

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if last.startswith(("lossguided.", type(self).__name__)) else last
        super().__init__(message)
