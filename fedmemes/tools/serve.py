"""`fedmemes serve RUN_DIR`: a FastAPI inference service around a finished run's model.

Security defaults: it listens on 127.0.0.1; a non-loopback --host needs a token (--token-file or
$FEDMEMES_TOKEN) or an explicit --insecure. Batch images are paths under --image-root only (no
traversal, symlinks resolved) or URLs on hosts given with --allow-url (image_urls.py: public addresses only);
nothing is fetched otherwise. Decoding and the model run in worker threads under a per-request deadline
(serve_guards.py); uvicorn runs with slow-client limits (deploy/slow_clients.py). Callers get generic errors with
a request id; the details go to the server log.
"""

from __future__ import annotations

import argparse
import ipaddress
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse

from fedmemes.bookkeeping import run_config
from fedmemes.data.meme import Meme
from fedmemes.deploy.auth import TOKEN_HEADER, read_token, require_token
from fedmemes.deploy.slow_clients import SlowClientLimits
from fedmemes.tools import image_urls
from fedmemes.tools.image_urls import UrlPolicy, UrlRefused
from fedmemes.tools.predict import RunModel, load_run
from fedmemes.tools.predict_inputs import check_rows, parse_line
from fedmemes.tools.serve_guards import BodyLimit, Deadline, Limits, check_image, in_thread, request_id, unreadable

Fetch = Callable[[str, UrlPolicy], bytes]


class LineError(ValueError):
    """A batch line refused by this service's own checks; its message is safe to show the caller."""


def resolve_under(root: Path, rel: str) -> Path:
    """Return root/rel, refusing any path (symlinks followed) that ends outside root."""
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise LineError(f"img {rel!r} is outside the image root; give a path relative to --image-root")
    return path


def create_app(
    run: RunModel,
    token: str | None = None,
    image_root: str | Path | None = None,
    urls: UrlPolicy | None = None,
    limits: Limits | None = None,
    fetch: Fetch = image_urls.fetch,
) -> FastAPI:
    """Return the service: GET /health (open), GET /model, POST /predict and /predict/batch (token when one is set).
    `urls`: the image URL policy (None: no URL is fetched); `fetch`: swapped in tests."""
    limits = limits or Limits()
    api = FastAPI(title="fedmemes inference")
    api.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)
    api.add_middleware(Deadline, seconds=limits.deadline_s)  # added last: outermost, so it also bounds body reads
    guard = [Depends(require_token(token))] if token else []
    root = Path(image_root).expanduser().resolve() if image_root else None
    lock = threading.Lock()  # one forward at a time: the model is shared by the server's threads
    model_name = f"{run.run_dir.name}/{run.which}"

    def score(memes: list[Meme]) -> list[float]:
        # Bounded wait: a thread whose request passed its deadline gives up instead of queueing for the model.
        if not lock.acquire(timeout=limits.deadline_s):
            raise TimeoutError("the model stayed busy past the deadline")
        try:
            return [float(p) for p in run.score_uncached(memes)]
        finally:
            lock.release()

    def answer(p: float) -> dict[str, Any]:
        return {
            "p_hateful": round(p, 6),
            "pred": int(p > run.threshold),
            "threshold": run.threshold,
            "model": model_name,
        }

    @api.get("/health")
    async def health() -> dict[str, str]:  # async: answered on the event loop, never behind busy worker threads
        return {"status": "ok"}

    @api.get("/model", dependencies=guard)
    async def model() -> dict[str, Any]:
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
    async def predict(text: str = Form(...), image: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008 - FastAPI's idiom
        if len(text) > limits.max_text_chars:
            raise HTTPException(413, f"text is {len(text):,} characters; the limit is {limits.max_text_chars:,}")
        data, rid = await image.read(), request_id()

        def work() -> dict[str, Any]:
            with tempfile.TemporaryDirectory(prefix="fedmemes-upload-") as tmp:
                path = Path(tmp) / "upload"
                path.write_bytes(data)
                check_image(path, limits, rid)
                row = {"id": "upload", "img": path.name, "text": text}
                kept, issues = check_rows(iter([(1, row)]), path.parent, "request")
                if issues:
                    raise HTTPException(422, "; ".join(f"{i.kind}: {i.detail}" for i in issues))
                return answer(score([kept[0][1]])[0])

        return await in_thread(work)

    @api.post("/predict/batch", dependencies=guard)
    async def predict_batch(request: Request) -> Any:
        lines, rid = (await request.body()).splitlines(), request_id()
        if len(lines) > limits.max_batch_lines:
            raise HTTPException(413, f"{len(lines)} lines; the limit is {limits.max_batch_lines} per request")

        def work() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            with tempfile.TemporaryDirectory(prefix="fedmemes-batch-") as tmp:
                rows, errors = _batch_rows(lines, Path(tmp), root, urls, limits, fetch, rid)
                kept, issues = check_rows(iter(rows), Path(tmp), "request")
                errors += [{"line": i.line, "kind": i.kind, "detail": i.detail} for i in issues]
                probs = score([m for _, m, _ in kept]) if kept else []
            results = [{"line": n, "id": m.id, **answer(p)} for (n, m, _), p in zip(kept, probs, strict=True)]
            return results, sorted(errors, key=lambda e: e["line"])

        results, errors = await in_thread(work)
        body = {"results": results, "errors": errors, "threshold": run.threshold, "model": model_name}
        # Nothing scorable (every line refused) is a bad request as a whole; a partly good batch is answered 200.
        return JSONResponse(body, status_code=422 if errors and not results else 200)

    return api


def _batch_rows(
    lines: list[bytes],
    tmp: Path,
    root: Path | None,
    urls: UrlPolicy | None,
    limits: Limits,
    fetch: Fetch,
    rid: str,
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
                if urls is None:
                    raise LineError("img is a URL; this service fetches no image URLs (see fedmemes serve --allow-url)")
                try:
                    local.write_bytes(fetch(img, urls))
                except UrlRefused as e:  # refused or failed alike: which one it was is for the log only
                    raise LineError(unreadable(f"{rid} line {n}", "image URL", e)) from None
            elif root is None:
                raise LineError("img paths need --image-root on the service; send the image to POST /predict instead")
            else:
                path = resolve_under(root, img)
                if not path.is_file():
                    raise LineError(f"img {img!r}: file not found under the image root")
                if path.stat().st_size > limits.max_request_bytes:
                    raise LineError(f"img {img!r} is over {limits.max_request_bytes:,} bytes")
                local.write_bytes(path.read_bytes())
            check_image(local, limits, rid)
        except HTTPException as e:
            fail(n, "bad_image", str(e.detail))
            continue
        except LineError as e:
            fail(n, "bad_img", str(e))
            continue
        except OSError as e:
            fail(n, "bad_img", unreadable(f"{rid} line {n}", "image", e))
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
    p.add_argument(
        "--allow-url",
        metavar="HOST[,HOST...]",
        help="let /predict/batch fetch http(s) image URLs on these hosts only (public addresses only); default: none",
    )
    p.add_argument("--deadline-s", type=float, default=Limits.deadline_s, help="a request's total time, then 504")
    p.add_argument(
        "--header-timeout-s",
        type=float,
        default=SlowClientLimits.header_timeout_s,
        help="a connection's time to send its request headers, then it is closed (slow clients)",
    )
    p.add_argument("--max-request-mb", type=float, default=10.0)
    p.add_argument("--max-image-pixels", type=int, default=Limits.max_image_pixels)
    p.add_argument("--max-text-chars", type=int, default=Limits.max_text_chars)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    import os

    from fedmemes.deploy.auth import TOKEN_ENV

    if problem := run_config.run_folder_problem(args.run_dir):
        p.error(problem)  # before the other flags: a mistyped path is the likeliest mistake
    try:
        token = read_token(args.token_file) if args.token_file or os.environ.get(TOKEN_ENV) else None
    except ValueError as err:
        p.error(str(err))
    if args.image_root and not Path(args.image_root).expanduser().is_dir():
        p.error(f"--image-root {args.image_root}: no such folder (batch lines' image paths are relative to it)")
    if not _loopback(args.host) and token is None and not args.insecure:
        raise SystemExit(
            f"error: --host {args.host} lets other machines score memes; set a token "
            f"(--token-file FILE or ${TOKEN_ENV}) or pass --insecure"
        )
    try:
        run = load_run(args.run_dir, args.model, args.device)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None
    limits = Limits(
        int(args.max_request_mb * 1024 * 1024), args.max_image_pixels, args.max_text_chars, deadline_s=args.deadline_s
    )
    urls = (
        UrlPolicy(image_urls.allow_list(args.allow_url), limits.url_deadline_s, limits.max_request_bytes)
        if args.allow_url
        else None
    )
    import uvicorn

    print(
        f"serving {run.run_dir}/{run.which}.safetensors (threshold {run.threshold:.3f}) on http://{args.host}:{args.port}"
        + (" (token required)" if token else "")
    )
    app = create_app(run, token, args.image_root, urls, limits)
    slow = SlowClientLimits(header_timeout_s=args.header_timeout_s)
    uvicorn.Server(
        uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", **slow.uvicorn_kwargs())
    ).run()


if __name__ == "__main__":
    main()
