"""`fedmemes serve RUN_DIR`: a FastAPI inference service around a finished run's model.

Security defaults: it listens on 127.0.0.1; a non-loopback --host needs a token (--token-file or
$FEDMEMES_TOKEN) or an explicit --insecure. Batch images are paths under --image-root only (no
traversal, symlinks resolved) or URLs when --allow-urls is given; nothing is fetched otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import tempfile
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from PIL import Image

from fedmemes.data.images import ImageError, open_rgb
from fedmemes.data.meme import Meme
from fedmemes.deploy.auth import TOKEN_HEADER, read_token, require_token
from fedmemes.deploy.gate import Receive, Scope, Send
from fedmemes.predict import RunModel, load_run
from fedmemes.predict_inputs import check_rows, parse_line

FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")  # what Pillow may decode here; everything else is refused


@dataclass(frozen=True)
class Limits:
    """What one request may carry."""

    max_request_bytes: int = 10 * 1024 * 1024  # whole body: one upload or one batch
    max_image_pixels: int = 25_000_000  # decompression-bomb guard, checked before decoding
    max_text_chars: int = 1000  # meme captions are short; the encoder reads 64 tokens anyway
    max_batch_lines: int = 256
    url_timeout_s: float = 10.0


class _TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the limit of {limit:,} bytes")


class BodyLimit:
    """ASGI middleware: refuse bodies over `max_bytes` by Content-Length and while reading (chunked bodies)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            body = json.dumps({"detail": f"request body is over the limit of {self.max_bytes:,} bytes"}).encode()
            await send(
                {"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return None
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge(self.max_bytes)  # an HTTPException: FastAPI answers 413, even mid-form-parse
            return message

        await self.app(scope, limited, send)


def check_image(path: Path, limits: Limits) -> None:
    """Refuse formats outside the allow-list and images over the pixel limit; decode fully (as training does)."""
    try:
        with Image.open(path) as img:
            fmt = img.format
    except Exception as e:  # noqa: BLE001 - any failure to identify is the client's bad bytes
        raise HTTPException(
            422, f"image: cannot decode ({type(e).__name__}); send a PNG, JPEG, GIF, WEBP or BMP"
        ) from None
    if fmt not in FORMATS:
        raise HTTPException(415, f"image: format {fmt} is not allowed; allowed: {', '.join(FORMATS)}")
    try:
        open_rgb(path, limits.max_image_pixels)
    except ImageError as e:
        raise HTTPException(413 if e.kind == "image_too_large" else 422, f"image: {e.detail}") from None


def resolve_under(root: Path, rel: str) -> Path:
    """Return root/rel, refusing any path (symlinks followed) that ends outside root."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"img {rel!r} is outside the image root; give a path relative to --image-root")
    return path


def fetch_url(url: str, dest: Path, limits: Limits) -> None:
    """Download one image (http/https only) into dest, at most max_request_bytes."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"img {url!r}: only http(s) URLs are fetched")
    with urllib.request.urlopen(url, timeout=limits.url_timeout_s) as response:  # scheme checked above: http(s) only
        data = response.read(limits.max_request_bytes + 1)
    if len(data) > limits.max_request_bytes:
        raise ValueError(f"img {url!r} is over {limits.max_request_bytes:,} bytes")
    dest.write_bytes(data)


def create_app(
    run: RunModel,
    token: str | None = None,
    image_root: str | Path | None = None,
    allow_urls: bool = False,
    limits: Limits = Limits(),
    fetch: Callable[[str, Path, Limits], None] = fetch_url,
) -> FastAPI:
    """Return the service: GET /health (open), GET /model, POST /predict and /predict/batch (token when one is set)."""
    api = FastAPI(title="fedmemes inference")
    api.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)
    guard = [Depends(require_token(token))] if token else []
    root = Path(image_root).expanduser().resolve() if image_root else None
    lock = threading.Lock()  # one forward at a time: the model is shared by the server's threads
    model_name = f"{run.run_dir.name}/{run.which}"

    def score(memes: list[Meme]) -> list[float]:
        with lock:
            return [float(p) for p in run.score_uncached(memes)]

    def answer(p: float) -> dict[str, Any]:
        return {
            "p_hateful": round(p, 6),
            "pred": int(p > run.threshold),
            "threshold": run.threshold,
            "model": model_name,
        }

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/model", dependencies=guard)
    def model() -> dict[str, Any]:
        cfg = run.cfg
        return {
            "run": str(run.run_dir),
            "model": run.which,
            "threshold": run.threshold,
            "config": {
                "model": cfg.model._target_,
                "text_encoder": cfg.model.text_encoder._target_,
                "image_size": cfg.image_size,
                "strategy": cfg.server.strategy._target_,
                "partition": cfg.partition._target_,
                "num_clients": cfg.num_clients,
                "num_rounds": cfg.num_rounds,
            },
            "best_round": run.metrics.get("best_round"),
            "test": run.metrics.get("test"),
        }

    @api.post("/predict", dependencies=guard)
    def predict(text: str = Form(...), image: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008 - FastAPI's idiom
        if len(text) > limits.max_text_chars:
            raise HTTPException(413, f"text is {len(text):,} characters; the limit is {limits.max_text_chars:,}")
        with tempfile.TemporaryDirectory(prefix="fedmemes-upload-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(image.file.read())
            check_image(path, limits)
            kept, issues = check_rows(
                iter([(1, {"id": "upload", "img": path.name, "text": text})]), path.parent, "request"
            )
            if issues:
                raise HTTPException(422, "; ".join(f"{i.kind}: {i.detail}" for i in issues))
            return answer(score([kept[0][1]])[0])

    @api.post("/predict/batch", dependencies=guard)
    async def predict_batch(request: Request) -> dict[str, Any]:
        lines = (await request.body()).splitlines()
        if len(lines) > limits.max_batch_lines:
            raise HTTPException(413, f"{len(lines)} lines; the limit is {limits.max_batch_lines} per request")
        with tempfile.TemporaryDirectory(prefix="fedmemes-batch-") as tmp:
            rows, errors = _batch_rows(lines, Path(tmp), root, allow_urls, limits, fetch)
            kept, issues = check_rows(iter(rows), Path(tmp), "request")
            errors += [{"line": i.line, "kind": i.kind, "detail": i.detail} for i in issues]
            probs = score([m for _, m, _ in kept]) if kept else []
        results = [{"line": n, "id": m.id, **answer(p)} for (n, m, _), p in zip(kept, probs, strict=True)]
        return {
            "results": results,
            "errors": sorted(errors, key=lambda e: e["line"]),
            "threshold": run.threshold,
            "model": model_name,
        }

    return api


def _batch_rows(
    lines: list[bytes],
    tmp: Path,
    root: Path | None,
    allow_urls: bool,
    limits: Limits,
    fetch: Callable[[str, Path, Limits], None],
) -> tuple[list[tuple[int, object]], list[dict[str, Any]]]:
    """Parse jsonl lines and put each image in tmp (copied from under root, or fetched); return rows for check_rows and
    errors."""
    rows, errors = [], []

    def fail(n: int, kind: str, detail: str) -> None:
        errors.append({"line": n, "kind": kind, "detail": detail})

    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        row, issue = parse_line(raw, n, Path("request"))
        if issue is not None:
            fail(n, issue.kind, issue.detail)
            continue
        if not isinstance(row, dict) or not isinstance(row.get("img"), str):
            rows.append((n, row))  # check_rows names the missing or bad key
            continue
        if isinstance(row.get("text"), str) and len(row["text"]) > limits.max_text_chars:
            fail(n, "bad_text", f"text is {len(row['text']):,} characters; the limit is {limits.max_text_chars:,}")
            continue
        img, local = row["img"], tmp / f"{n}.img"
        try:
            if img.startswith(("http://", "https://")):
                if not allow_urls:
                    raise ValueError(f"img {img!r} is a URL; this service fetches none (start it with --allow-urls)")
                fetch(img, local, limits)
            elif root is None:
                raise ValueError("img paths need --image-root on the service; send the image to POST /predict instead")
            else:
                path = resolve_under(root, img)
                if not path.is_file():
                    raise ValueError(f"img {img!r}: file not found under the image root")
                if path.stat().st_size > limits.max_request_bytes:
                    raise ValueError(f"img {img!r} is over {limits.max_request_bytes:,} bytes")
                local.write_bytes(path.read_bytes())
            check_image(local, limits)
        except HTTPException as e:
            fail(n, "bad_image", str(e.detail))
            continue
        except (ValueError, OSError) as e:
            fail(n, "bad_img", str(e))
            continue
        rows.append((n, {**row, "img": local.name}))
    return rows, errors


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> None:
    """`fedmemes serve RUN_DIR [--host 127.0.0.1] [--port 8095]`."""
    p = argparse.ArgumentParser(prog="fedmemes serve", description="Serve a run's model over HTTP (FastAPI).")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1", help="a non-loopback host needs a token or --insecure")
    p.add_argument("--port", type=int, default=8095)
    p.add_argument("--model", choices=("best", "final"), default="best")
    p.add_argument(
        "--token-file", help=f"file with the API token (else $FEDMEMES_TOKEN; clients send it as {TOKEN_HEADER})"
    )
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback host without a token")
    p.add_argument("--image-root", help="folder that /predict/batch image paths are relative to")
    p.add_argument("--allow-urls", action="store_true", help="let /predict/batch fetch http(s) image URLs")
    p.add_argument("--max-request-mb", type=float, default=10.0)
    p.add_argument("--max-image-pixels", type=int, default=Limits.max_image_pixels)
    p.add_argument("--max-text-chars", type=int, default=Limits.max_text_chars)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    import os

    from fedmemes.deploy.auth import TOKEN_ENV

    token = read_token(args.token_file) if args.token_file or os.environ.get(TOKEN_ENV) else None
    if not _loopback(args.host) and token is None and not args.insecure:
        raise SystemExit(
            f"error: --host {args.host} lets other machines score memes; set a token "
            f"(--token-file FILE or ${TOKEN_ENV}) or pass --insecure"
        )
    try:
        run = load_run(args.run_dir, args.model, args.device)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None
    limits = Limits(int(args.max_request_mb * 1024 * 1024), args.max_image_pixels, args.max_text_chars)
    import uvicorn

    print(
        f"serving {run.run_dir}/{run.which}.safetensors (threshold {run.threshold:.3f}) on http://{args.host}:{args.port}"
        + (" (token required)" if token else "")
    )
    uvicorn.run(
        create_app(run, token, args.image_root, args.allow_urls, limits),
        host=args.host,
        port=args.port,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
