"""The ``landmarks`` command: one sub-command per verb."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from landmarks.errors import LandmarksError
from landmarks.store import ROLES

log = logging.getLogger("landmarks")

BACKENDS = ("auto", "onnx", "torch")  # how a run's model runs (landmarks.recognize.embed.load_embedder)


def _other_rank() -> bool:
    """True in the processes other than rank 0 under torchrun: they train silently, rank 0 reports."""
    return int(os.environ.get("RANK", "0")) > 0


def _existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise LandmarksError(f"Folder {path} does not exist.")
    if not path.is_dir():
        raise LandmarksError(f"{path} is not a folder.")
    return path


def cmd_train(args: argparse.Namespace) -> int:
    from landmarks.config import load_config
    from landmarks.train.run import train

    data = _existing_dir(args.data)
    config = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = train(config, data, out, resume=args.resume)
    if not _other_rank():
        _print_run_summary(run_dir)
    return 0


def _print_run_summary(run_dir: Path) -> None:
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        shown = {k: metrics[k] for k in ("accuracy", "top5_accuracy", "gap", "map_at_100", "train_minutes") if k in metrics}
        print("held-out metrics: " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    print(f"run folder: {run_dir}")
    print(f"metrics:    {metrics_path}")
    print(f"plots:      {run_dir / 'plots'}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from landmarks.evaluate.report import evaluate_run

    result, out_dir = evaluate_run(_existing_dir(args.run), _existing_dir(args.data), backend=args.backend,
                                   trained_only=args.trained_only)
    for key in ("accuracy", "top5_accuracy", "gap", "map_at_100"):
        if key in result:
            print(f"{key:<14} {result[key]:.4f}")
    print(f"queries        {result['queries']} ({result['queries_with_landmark']} with a known landmark)")
    if result.get("unreadable_images"):
        print(f"skipped        {result['unreadable_images']} unreadable images")
    print(f"report:        {out_dir}")
    return 0


def _collect_images(paths: Sequence[str]) -> list[Path]:
    from landmarks.data.catalog import IMAGE_SUFFIXES

    images: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            images.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.exists():
            images.append(path)
        else:
            raise LandmarksError(f"{path} does not exist.")
    if not images:
        raise LandmarksError("No images found in " + ", ".join(paths) + ".")
    return images


def cmd_predict(args: argparse.Namespace) -> int:
    from landmarks.recognize.predict import predict_to_stream

    recognizer_run = _existing_dir(args.run)
    images = _collect_images(args.paths)
    return predict_to_stream(
        recognizer_run, images, top_k=args.top_k, as_json=args.json, out=Path(args.out) if args.out else None,
        backend=args.backend, batch_size=args.batch_size, trained_only=args.trained_only,
    )


def cmd_submit(args: argparse.Namespace) -> int:
    from landmarks.evaluate.report import write_submission

    rows, failed = write_submission(_existing_dir(args.run), _existing_dir(args.data), Path(args.out), backend=args.backend,
                                    trained_only=args.trained_only)
    print(f"wrote {rows} predictions to {args.out}" + (f" ({failed} unreadable images left empty)" if failed else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from landmarks.export.onnx import export_run

    report = export_run(_existing_dir(args.run), quantize=args.quantize)
    if args.web:
        from landmarks.export.web import export_web

        report.update(export_web(Path(args.run), Path(args.web), per_landmark=args.prototypes))
    for key, value in report.items():
        print(f"{key:<28} {value}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from landmarks.serve.app import serve
    from landmarks.serve.settings import Settings

    settings = Settings(open=args.open, allow_anonymous_suggestions=args.allow_anonymous_suggestions,
                        keep_uploads_hours=args.keep_uploads, max_uploads=args.max_uploads,
                        predict_per_minute=args.predict_per_minute, suggestions_per_hour=args.suggestions_per_hour,
                        max_pending_per_client=args.max_pending, proxy_headers=args.proxy_headers,
                        forwarded_allow_ips=args.forwarded_allow_ips)
    serve(_existing_dir(args.run), host=args.host, port=args.port, backend=args.backend, settings=settings)
    return 0


def cmd_serve_admin(args: argparse.Namespace) -> int:
    from landmarks.serve import admin

    run = _existing_dir(args.run)
    if args.action == "create":
        token_id, secret = admin.create_token(run, args.role, args.name)
        print(f"token {token_id} ({args.role}{', ' + args.name if args.name else ''}); shown this once, keep it safe:")
        print(secret)
    elif args.action == "list":
        print(admin.format_tokens(admin.list_tokens(run)))
    else:
        admin.revoke_token(run, args.token_id)
        print(f"token {args.token_id} revoked")
    return 0


def cmd_feedback_export(args: argparse.Namespace) -> int:
    from landmarks.serve.dataset_export import export_feedback

    report = export_feedback(_existing_dir(args.run), Path(args.out), _existing_dir(args.base) if args.base else None)
    print(f"wrote {report.photos_written} approved photos" + (f" beside {report.base_photos} from {args.base}" if args.base else "")
          + f" ({report.landmarks} landmarks) to {report.out_dir}; train on it with: landmarks train --data {report.out_dir}")
    if report.removed_from_base:
        print(f"left out {report.removed_from_base} base photos the service removed or moved")
    if report.without_photo:
        print(f"skipped {report.without_photo} approved references whose photo was not kept")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from landmarks.data.sampling import sample_dataset

    sampled = sample_dataset(_existing_dir(args.data), args.classes, args.per_class, Path(args.out), args.seed)
    print(f"wrote {len(sampled)} photos of {sampled['landmark_id'].nunique()} landmarks to {args.out} (images not copied)")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from landmarks.data.download import DEFAULT_BASE_URL, download_gldv2, parse_shards

    shards = parse_shards(args.shards, args.split) if args.shards else None
    report = download_gldv2(
        args.split, Path(args.out), shards=shards, metadata=args.metadata, base_url=args.base_url or DEFAULT_BASE_URL,
        workers=args.workers, keep_tars=args.keep_tars,
    )
    print(
        f"{len(report.shards_done)} shards downloaded, {len(report.shards_skipped)} already done, "
        f"{report.bytes_downloaded / 1e6:.1f} MB, {len(report.refetched)} re-fetched after a bad md5; data in {args.out}"
    )
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from landmarks.data.shards import pack_gldv2

    shards = pack_gldv2(_existing_dir(args.data), Path(args.out), args.per_shard)
    print(f"wrote {len(shards)} tar shards to {Path(args.out) / 'train'}; train with --data {args.out} data.cache=none")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from landmarks.recognize.embed import load_embedder
    from landmarks.recognize.index import INDEX_TYPES
    from landmarks.recognize.sharded import add_non_landmarks, embed_shard, merge_shards
    from landmarks.run_folder import RunFolder

    run = _existing_dir(args.run)
    if args.non_landmarks:
        added, skipped = add_non_landmarks(run, _existing_dir(args.non_landmarks), args.backend)
        print(f"added {added} non-landmark reference photos to {RunFolder(run).index_dir}"
              + (f" ({skipped} unreadable skipped)" if skipped else ""))
        return 0
    if args.merge:
        if args.index_type not in INDEX_TYPES:
            raise LandmarksError(f"--index-type {args.index_type!r} is not one of {', '.join(INDEX_TYPES)}.")
        folder = RunFolder(run)
        index = merge_shards([Path(f) for f in args.merge], args.index_type)
        folder.save_index(index)
        print(f"merged {len(args.merge)} shards: {len(index)} reference photos in {folder.index_dir}")
        return 0
    if not args.data or not args.out:
        raise LandmarksError(
            "landmarks index needs --data and --out to embed a shard, --merge FILES to merge shards, "
            "or --non-landmarks DIR to add non-landmark photos."
        )
    embed_shard(load_embedder(RunFolder(run), args.backend), _existing_dir(args.data), args.shard, args.num_shards, Path(args.out))
    print(f"wrote shard {args.shard} of {args.num_shards} to {args.out}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from landmarks.config import preset_names

    print("\n".join(preset_names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="landmarks", description="Recognise landmarks in photos.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    backend = argparse.ArgumentParser(add_help=False)  # shared by every verb that runs the model
    backend.add_argument("--backend", default="auto", choices=BACKENDS,
                         help="auto (ONNX Runtime when model.onnx exists), onnx or torch")

    p = sub.add_parser("train", help="train a model and write a run folder")
    p.add_argument("--data", required=True, help="GLDv2/Kaggle folder (train.csv) or class folders")
    p.add_argument("--config", default="seed-cnn", help="preset name (see `landmarks presets`) or a YAML file")
    p.add_argument("--out", help="run folder (default runs/<preset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.epochs=5")
    p.set_defaults(func=cmd_train)

    references = argparse.ArgumentParser(add_help=False)  # shared by the verbs that search the references
    references.add_argument("--trained-only", action="store_true",
                            help="the trained references only, without what the web service approved (RUN/store.sqlite)")

    p = sub.add_parser("evaluate", parents=[backend, references], help="accuracy, GAP, mAP@100 on DIR's test.csv + *_solution.csv")
    p.add_argument("run")
    p.add_argument("--data", required=True)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", parents=[backend, references], help="top-k landmarks for photos or folders of photos")
    p.add_argument("run")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true", help="one JSON object per photo (JSON lines)")
    p.add_argument("--out", help="write predictions to a .csv or .jsonl file instead of stdout")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("submit", parents=[backend, references], help="Kaggle submission.csv for DIR's test.csv")
    p.add_argument("run")
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="submission.csv")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("export", help="write model.onnx into the run folder and verify it")
    p.add_argument("run")
    p.add_argument("--quantize", choices=("int8",), help="also write an int8 model (model.int8.onnx) and report its accuracy")
    p.add_argument("--web", metavar="DIR", help="also write the device bundle (live page, model, prototypes) into DIR")
    p.add_argument("--prototypes", type=int, default=8, metavar="N",
                   help="--web: prototypes per landmark (k-means centres of its reference embeddings; default 8)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", parents=[backend], help="web page and REST API over a run")
    p.add_argument("run")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--open", action="store_true", help="anyone may change the references without a token (a laptop demo)")
    p.add_argument("--allow-anonymous-suggestions", action="store_true", help="visitors without a token may suggest, for review")
    p.add_argument("--keep-uploads", type=float, default=24.0, metavar="HOURS",
                   help="keep a predicted photo this long so that feedback can refer to it (0: keep none; default 24)")
    p.add_argument("--max-uploads", type=int, default=1000, metavar="N", help="keep at most N predicted photos (default 1000)")
    p.add_argument("--predict-per-minute", type=float, default=60.0, metavar="N",
                   help="predictions per client and minute (0: no limit; default 60)")
    p.add_argument("--suggestions-per-hour", type=float, default=30.0, metavar="N",
                   help="suggesting requests per client and hour (0: no limit; default 30)")
    p.add_argument("--max-pending", type=int, default=50, metavar="N",
                   help="photos one client may have waiting for review (0: no limit; default 50)")
    p.add_argument("--proxy-headers", action="store_true",
                   help="behind a reverse proxy: take the client's address from X-Forwarded-For (only from --forwarded-allow-ips)")
    p.add_argument("--forwarded-allow-ips", default="127.0.0.1", metavar="IPS",
                   help="with --proxy-headers: the proxies trusted, comma-separated or * (default 127.0.0.1)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("serve-admin", help="tokens of the web service: token create|list|revoke")
    p.add_argument("run")
    tokens = p.add_subparsers(dest="what", required=True, metavar="token").add_parser("token", help="create, list or revoke tokens")
    actions = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="a new token, printed once")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", default="", help="who it is for (shown in the review queue and the audit trail)")
    actions.add_parser("list", help="every token (id, role, created, state, name); never a secret")
    revoke = actions.add_parser("revoke", help="a token stops working at once")
    revoke.add_argument("token_id", type=int, metavar="ID")
    p.set_defaults(func=cmd_serve_admin)

    p = sub.add_parser("feedback", help="the service's approved contributions: feedback export RUN --out DIR [--base DATA]")
    verbs = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = verbs.add_parser("export", help="approved photos as a GLDv2-layout dataset that `landmarks train --data` reads")
    export.add_argument("run")
    export.add_argument("--out", required=True, help="an empty folder for the dataset")
    export.add_argument("--base", help="the training data to merge with (listed by path, not copied)")
    export.set_defaults(func=cmd_feedback_export)

    p = sub.add_parser("sample", help="the K most frequent landmarks, at most N photos each, as a new dataset")
    p.add_argument("--data", required=True)
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--per-class", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("download", help="GLDv2 metadata and image shards, md5-verified and resumable")
    p.add_argument("dataset", choices=("gldv2",))
    p.add_argument("--split", required=True, choices=("train", "index", "test"))
    p.add_argument("--shards", help="e.g. 0-4,7 (default: all shards of the split)")
    p.add_argument("--metadata", action="store_true", help="also fetch the split's metadata CSVs")
    p.add_argument("--out", required=True)
    p.add_argument("--base-url", help="mirror of https://s3.amazonaws.com/google-landmark")
    p.add_argument("--workers", type=int, default=4, help="shards fetched in parallel")
    p.add_argument("--keep-tars", action="store_true",
                   help="keep the verified shards as OUT/<split>/images_NNN.tar instead of extracting them "
                        "(train on them with data.cache=none)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("pack", help="a GLDv2 folder's training photos as tar shards (train/images_NNN.tar), as GLDv2 publishes them")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--per-shard", type=int, default=1000, help="photos per shard")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("index", parents=[backend], help="embed reference photos in shards (one per worker) and merge them into the run's index")
    p.add_argument("run")
    p.add_argument("--data", help="photos to embed (train.csv or class folders)")
    p.add_argument("--shard", type=int, default=0, help="this worker's shard, 0 to N-1")
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--out", help="the shard's .npz file")
    p.add_argument("--merge", nargs="+", metavar="SHARD.npz", help="merge these shard files into RUN/index")
    p.add_argument("--non-landmarks", metavar="DIR",
                   help="add DIR's photos (showing no known landmark) to RUN/index: close matches lower a query's confidence")
    p.add_argument("--index-type", default="auto", help="auto, flat, ivf or ivfpq (recognize.index_type)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("presets", help="list the shipped presets")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from landmarks.utils import set_quiet

    quiet = args.quiet or _other_rank()
    set_quiet(quiet)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    for noisy in ("PIL", "matplotlib", "urllib3", "httpx", "timm", "faiss", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except LandmarksError as error:
        print(f"landmarks: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("landmarks: interrupted (a training run continues with --resume).", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
