"""Upload limits and back-pressure: what the server refuses before it spends memory or CPU on a request.

Decisions (documented in the API description too):
- Request-level limits (total body size, number of files, size of one file) answer 413 for the whole
  request: nothing is predicted, because the client sent more than it may.
- Content problems of one file (empty, not an image, truncated, a format we do not decode, a
  decompression bomb) are per-file errors: the other files are still predicted and stored.
- The content is sniffed from the bytes (Pillow's header parser via `leukoscope.data.imaging.read_info`),
  never trusted from the file name or Content-Type, and only formats in ALLOWED_FORMATS go on to be
  decoded (Pillow can open exotic formats whose decoders we do not want to expose to uploads).
- Inference is bounded: `Gate` admits `workers + queue` requests; the next one gets 503 + Retry-After.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leukoscope.data.imaging import ImageInfo, read_info
from leukoscope.errors import ImageError, LeukoscopeError
from leukoscope.serve.settings import MIB, Settings

ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP"})
FILE_FIELD = "files"
SAMPLE_FIELD = "sample_id"
SAMPLE_ID_PATTERN = r"^[A-Za-z0-9_-]*$"  # at most SAMPLE_ID_MAX of them; also declared in the OpenAPI schema
SAMPLE_ID_MAX = 64
_SAMPLE_RE = re.compile(SAMPLE_ID_PATTERN)


class RequestRejected(LeukoscopeError):
    """The request as a whole breaks a limit; carries its HTTP status (413, 422, ...)."""

    def __init__(self, message: str, status_code: int = 413, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers or {}


@dataclass(frozen=True)
class Upload:
    """One uploaded file: a display name (never a path) and its bytes."""

    name: str
    data: bytes


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def clean_filename(name: str | None, index: int) -> str:
    """A display name for an upload: last path component, no control characters, at most 200 chars.

    Only ever shown and stored as text; files on disk are named by content hash.
    """
    raw = name or ""
    base = PureWindowsPath(PurePosixPath(raw).name).name
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    base = base[:200]
    return base if base not in ("", ".", "..") else f"upload-{index + 1}"


def check_sample_id(value: str | None) -> str | None:
    """Clients may group several requests into one sample; the id is a short token, not free text."""
    if value in (None, ""):
        return None
    if len(value) > SAMPLE_ID_MAX or not _SAMPLE_RE.match(value):
        raise RequestRejected("sample_id must be 1-64 letters, digits, '-' or '_'", 422)
    return value


def sniff(data: bytes, settings: Settings) -> ImageInfo:
    """Check that `data` is an image we accept, from its header only; raises ImageError saying why."""
    info = read_info(data)
    if info.format not in ALLOWED_FORMATS:
        raise ImageError(f"unsupported image format {info.format} (accepted: {', '.join(sorted(ALLOWED_FORMATS))})")
    if info.width * info.height > settings.max_pixels:
        raise ImageError(
            f"image too large ({info.width}x{info.height}; limit {settings.max_pixels / 1e6:.0f} megapixels): "
            "refused as a possible decompression bomb"
        )
    return info


async def read_uploads(request: Request, settings: Settings) -> tuple[list[Upload], str | None]:
    """Parse the multipart body into uploads, enforcing the count and per-file size limits.

    The total body size is enforced while it streams in, by `BodyLimitMiddleware`.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise RequestRejected(
            f"send images as multipart/form-data in the field '{FILE_FIELD}' (got {content_type or 'no body'})", 415
        )
    form = await request.form(max_files=max(1000, settings.max_files + 1), max_fields=100)
    try:
        files = [item for item in form.getlist(FILE_FIELD) if isinstance(item, UploadFile)]
        sample = form.get(SAMPLE_FIELD)
        if not files:
            raise RequestRejected(f"no files uploaded: send one or more images in the field '{FILE_FIELD}'", 422)
        if len(files) > settings.max_files:
            raise RequestRejected(f"too many files in one request ({len(files)}; limit {settings.max_files})")
        uploads = []
        for index, item in enumerate(files):
            size = item.size if item.size is not None else 0
            if size > settings.max_file_bytes:
                raise RequestRejected(
                    f"file {clean_filename(item.filename, index)!r} is too large "
                    f"({_mib(size)}; limit {_mib(settings.max_file_bytes)} per file)"
                )
            data = await item.read(settings.max_file_bytes + 1)
            if len(data) > settings.max_file_bytes:
                raise RequestRejected(f"a file is too large (limit {_mib(settings.max_file_bytes)} per file)")
            uploads.append(Upload(clean_filename(item.filename, index), data))
        return uploads, check_sample_id(sample if isinstance(sample, str) else None)
    finally:
        await form.close()


class Gate:
    """Admission control for inference: at most `capacity` requests in flight, never a waiting line.

    Used only from the event loop thread, so a plain counter is enough (no await between check and
    increment).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0

    def try_enter(self) -> bool:
        if self.in_flight >= self.capacity:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, by Content-Length or while streaming (chunked).

    Counting in `receive` means an oversized chunked upload is cut off after `max_bytes`, before the
    multipart parser has written it all to temporary files.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"request too large (limit {_mib(self.max_bytes)} in all)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_json(send, 413, {"detail": self._message()}, close=True)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise RequestRejected(self._message(), 413)
            return message

        await self.app(scope, limited_receive, send)


async def send_json(send: Send, status: int, body: dict, *, close: bool = False, headers: dict | None = None) -> None:
    """Answer from inside ASGI middleware (before any route ran)."""
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if close:
        raw.append((b"connection", b"close"))
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
