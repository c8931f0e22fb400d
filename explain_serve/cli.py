"""``explain-serve``: build the example archives, archive your model, serve, stop, explain from the shell."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_STORE = "model_store"
DEFAULT_WORKDIR = "out/torchserve"  # out/ is gitignored


def _build_examples(args) -> int:
    from .examples import LLM_EXAMPLES, available_examples, build_examples

    names = args.names or [n for n in available_examples() if args.runtime == "torch" or n not in LLM_EXAMPLES]
    unknown = sorted(set(names) - set(available_examples()))
    if unknown:
        print(f"unknown or unavailable example(s) {', '.join(unknown)}; choose from {', '.join(available_examples())} "
              "(tiny_lm needs the [llm] extra)", file=sys.stderr)
        return 2
    out = build_examples(Path(args.model_store), names, runtime=args.runtime)
    print(json.dumps({name: str(path) for name, path in out.items()}))
    return 0


def _archive(args) -> int:
    from .serving.archive import archive

    path = archive(args.name, Path(args.model), args.kind, Path(args.model_store),
                   config=Path(args.config) if args.config else None,
                   reference_data=Path(args.reference_data) if args.reference_data else None,
                   weights=Path(args.weights) if args.weights else None,
                   extra_files=[Path(p) for p in args.extra_files], version=args.version,
                   runtime=args.runtime)
    print(json.dumps({"archive": str(path)}))
    return 0


def _serve(args) -> int:
    from .serving import server

    ports = {k: v for k, v in {"http": args.http_port, "grpc": args.grpc_port, "management": args.management_port,
                               "metrics": args.metrics_port}.items() if v}
    info = server.start(Path(args.model_store), args.models or [], Path(args.workdir), host=args.host, ports=ports,
                        token=not args.no_token, batch_size=args.batch_size, max_batch_delay=args.max_batch_delay,
                        max_response_size=args.max_response_size, torch_threads=args.torch_threads,
                        quiet_logs=not args.debug_logs)
    print(json.dumps({k: info[k] for k in ("endpoints", "pid", "token_file", "models", "workdir", "logs")}))
    return 0


def _stop(args) -> int:
    from .serving import server

    stopped = server.stop(Path(args.workdir))
    print(json.dumps({"stopped": stopped, "workdir": str(Path(args.workdir).resolve())}))
    return 0


def _explain(args) -> int:
    from .client import Client

    client = Client.from_workdir(Path(args.workdir))
    try:
        inputs = json.loads(args.inputs)
    except ValueError:
        inputs = args.inputs  # a plain string (text models) or base64 image
    body = {"inputs": inputs}
    if args.target is not None:  # absent: the server's default (predicted class; causal LMs: own continuation)
        body["target"] = int(args.target) if args.target.lstrip("-").isdigit() else args.target
    if args.method:
        body["method"] = args.method
    if args.params:
        body["params"] = json.loads(args.params)
    if args.heatmap:
        body["output"] = {"heatmap": True}
    if args.grpc:
        status, answer = client.grpc_explain(args.model, body) if not args.predict else client.grpc_predict(args.model, body)
    else:
        status, answer = client.predict(args.model, body) if args.predict else client.explain(args.model, body)
    print(json.dumps(answer))
    return 0 if status == 200 else 1


def _describe(args) -> int:
    from .client import Client

    status, answer = Client.from_workdir(Path(args.workdir)).describe(args.model, args.version)
    print(json.dumps(answer, indent=2))
    return 0 if status == 200 else 1


def parser() -> argparse.ArgumentParser:
    from .serving import server  # standard library only: cheap to import

    p = argparse.ArgumentParser(prog="explain-serve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build-examples", help="train and archive the bundled example models")
    b.add_argument("--model-store", default=DEFAULT_STORE)
    b.add_argument("names", nargs="*", help="subset of: digits cancer sentiment tiny_lm (default: all)")
    b.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="onnx: also pack model.onnx and compiled explainers (predictions and explanations on ONNX Runtime)")
    b.set_defaults(func=_build_examples)

    a = sub.add_parser("archive", help="pack a model and its explain config into NAME.mar")
    a.add_argument("name")
    a.add_argument("--model", required=True, help="TorchScript file, an eager model .py file with --weights, or a "
                   "Hugging Face save_pretrained directory (--kind text or causal_lm; needs the [llm] extra)")
    a.add_argument("--kind", required=True, choices=("image", "tabular", "text", "causal_lm"))
    a.add_argument("--config", help="explain config YAML/JSON (see explain_serve.serving.config)")
    a.add_argument("--reference-data", help="reference inputs (.npy, shape (n, *input)) for mean/k-means baselines")
    a.add_argument("--weights", help="state dict for an eager model file")
    a.add_argument("--extra-files", nargs="*", default=[], help="more files to pack (e.g. a vocabulary)")
    a.add_argument("--version", default="1.0")
    a.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="onnx: also pack model.onnx and compiled explainers, served by ONNX Runtime")
    a.add_argument("--model-store", default=DEFAULT_STORE)
    a.set_defaults(func=_archive)

    s = sub.add_parser("serve", help="start TorchServe in the background and wait until the models are READY")
    s.add_argument("--model-store", default=DEFAULT_STORE)
    s.add_argument("--models", nargs="*", help="model names (NAME or NAME=FILE.mar); default: every .mar in the store")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--http-port", type=int)
    s.add_argument("--grpc-port", type=int)
    s.add_argument("--management-port", type=int)
    s.add_argument("--metrics-port", type=int)
    s.add_argument("--workdir", default=DEFAULT_WORKDIR)
    s.add_argument("--batch-size", type=int, default=server.DEFAULT_BATCH_SIZE,
                   help="most requests per server-side batch (default %(default)s; see the README's serving figures)")
    s.add_argument("--max-batch-delay", type=int, default=server.DEFAULT_MAX_BATCH_DELAY,
                   help="milliseconds a batch waits to fill (>= 1; default %(default)s); a lone request pays it")
    s.add_argument("--max-response-size", type=int, default=6553500)
    s.add_argument("--torch-threads", type=int, help="intra-op threads per worker (default 1)")
    s.add_argument("--no-token", action="store_true", help="turn token authorization off")
    s.add_argument("--debug-logs", action="store_true", help="TorchServe's own logging (DEBUG per request, metrics logs)")
    s.set_defaults(func=_serve)

    t = sub.add_parser("stop", help="stop the server started from --workdir and wait until its ports are free")
    t.add_argument("--workdir", default=DEFAULT_WORKDIR)
    t.set_defaults(func=_stop)

    e = sub.add_parser("explain", help="send one request to the running server and print the JSON answer")
    e.add_argument("model")
    e.add_argument("--inputs", required=True, help="JSON (nested list, object) or a plain string")
    e.add_argument("--target", help="class index or 'predicted' (default); causal_lm: the continuation to explain")
    e.add_argument("--method")
    e.add_argument("--params", help="JSON object of the method's parameters")
    e.add_argument("--heatmap", action="store_true")
    e.add_argument("--predict", action="store_true", help="predict instead of explaining")
    e.add_argument("--grpc", action="store_true")
    e.add_argument("--workdir", default=DEFAULT_WORKDIR)
    e.set_defaults(func=_explain)

    d = sub.add_parser("describe", help="print a served model's self-description (input, methods, limits)")
    d.add_argument("model")
    d.add_argument("--version", help="a model version (default: the server's default version)")
    d.add_argument("--workdir", default=DEFAULT_WORKDIR)
    d.set_defaults(func=_describe)

    from .export.cli import add_subcommand as add_export  # explain-serve export (explain_serve.export)
    from .viewer.cli import add_subcommand as add_view  # explain-serve view (explain_serve.viewer)

    add_export(sub)

    from .audit.cli import add_subcommand as add_audit  # explain-serve audit (explain_serve.audit)

    add_audit(sub)
    add_view(sub, DEFAULT_WORKDIR)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    if getattr(args, "max_batch_delay", 1) is not None and getattr(args, "max_batch_delay", 1) < 1:
        print("--max-batch-delay must be >= 1 (TorchServe turns 0 into 100 ms)", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except Exception as exc:  # one clear line for the shell
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
