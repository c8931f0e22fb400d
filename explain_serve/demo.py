"""``make demo``: the bundled examples, explained in-process and served by TorchServe.

1. in-process: train the digits CNN, explain one prediction with IntegratedGradients, write a PNG;
2. served: build the example archives, start TorchServe (loopback, token on), send one prediction
   and one explanation per model with curl, write the served heat map PNG, print a summary, stop;
3. audit: the digits CNN retrained with another seed, audited against the first (verdict, report).

``python -m explain_serve.demo [--out DIR] [--model-store DIR] [--in-process-only]``
"""
from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def in_process(out_dir: Path) -> dict:
    """Train digits, explain the first image with IntegratedGradients, save a PNG; return a summary."""
    from explain_serve.attr import IntegratedGradients
    from explain_serve.examples import train
    from explain_serve.visualization import save_image_attr_png

    t0 = time.perf_counter()
    trained = train("digits")
    train_s = time.perf_counter() - t0
    model = trained["model"]
    x = torch.from_numpy(trained["sample"][None])
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)[0]
    pred = int(probs.argmax())
    ig = IntegratedGradients(model)
    ig.attribute(x, baselines=0.0, target=pred, n_steps=32)  # warm-up: the first call pays one-off costs
    t0 = time.perf_counter()
    attr, delta = ig.attribute(x, baselines=0.0, target=pred, n_steps=32, return_convergence_delta=True)
    explain_ms = (time.perf_counter() - t0) * 1000
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "digits_ig_inprocess.png"
    image = x[0].permute(1, 2, 0).numpy()
    save_image_attr_png(attr[0].permute(1, 2, 0).detach().numpy(), png, original_image=image,
                        method="blended_heat_map", sign="all", title=f"IG, predicted {pred}")
    return {
        "model": "digits", "train_s": round(train_s, 2), "train_accuracy": round(trained["accuracy"], 4),
        "label": trained["sample_label"], "predicted": pred, "probability": round(float(probs[pred]), 4),
        "method": "integrated_gradients", "n_steps": 32, "convergence_delta": round(float(delta[0]), 6),
        "explain_ms": round(explain_ms, 2), "heatmap": str(png),
    }


def _curl(url: str, token: str, body: bytes, content_type: str = "application/json") -> dict:
    """One POST with curl (what a user would type); returns the status and parsed answer."""
    cmd = ["curl", "-sS", "-X", "POST", url, "-H", f"Authorization: Bearer {token}",
           "-H", f"Content-Type: {content_type}", "--data-binary", "@-", "-w", "\n%{http_code}"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, input=body, capture_output=True, check=True).stdout.decode()
    ms = (time.perf_counter() - t0) * 1000
    text, _, status = out.rpartition("\n")
    return {"status": int(status), "answer": json.loads(text), "curl_ms": round(ms, 1)}


def served(out_dir: Path, model_store: Path) -> dict:
    """Build the example archives, serve them, one prediction + one explanation each with curl."""
    from explain_serve.examples import LLM_EXAMPLES, available_examples, build_examples
    from explain_serve.serving import server
    from explain_serve.serving.server import read_token

    if shutil.which("curl") is None:
        raise RuntimeError("the served demo uses curl; install it")
    t0 = time.perf_counter()
    names = list(available_examples())
    build_examples(model_store, names)
    build_s = time.perf_counter() - t0
    workdir = out_dir / "demo-server"
    server.stop(workdir)  # a server left over from an interrupted demo
    t0 = time.perf_counter()
    info = server.start(model_store, names, workdir, batch_size=server.DEFAULT_BATCH_SIZE,
                        max_batch_delay=server.DEFAULT_MAX_BATCH_DELAY)
    start_s = time.perf_counter() - t0
    summary = {"build_examples_s": round(build_s, 1), "serve_start_s": round(start_s, 1),
               "endpoints": info["endpoints"], "token_file": info["token_file"], "models": {},
               "viewer_command": viewer_command(workdir, model_store, names)}
    try:
        token = read_token(Path(info["token_file"]))["inference"]
        base = info["endpoints"]["inference"]
        digits_x = np.load(model_store / "build" / "digits" / "reference.npy")[0]
        cancer_x = np.load(model_store / "build" / "cancer" / "reference.npy")[0]
        requests = {
            "digits": ({"inputs": digits_x.tolist()},
                       {"inputs": digits_x.tolist(), "output": {"heatmap": True}}),
            "cancer": ({"inputs": cancer_x.tolist()}, {"inputs": cancer_x.tolist(), "method": "integrated_gradients"}),
            "sentiment": ({"inputs": "the acting was superb and fun"},
                          {"inputs": "the acting was superb and fun", "method": _text_method()}),
        }
        for name, (pred_body, explain_body) in requests.items():
            p = _curl(f"{base}/predictions/{name}", token, json.dumps(pred_body).encode())
            e = _curl(f"{base}/explanations/{name}", token, json.dumps(explain_body).encode())
            ans = e["answer"]
            entry = {"prediction_status": p["status"], "explanation_status": e["status"],
                     "predicted": p["answer"].get("prediction", {}).get("label"),
                     "method": ans.get("method"), "target": ans.get("target"),
                     "convergence_delta": ans.get("convergence_delta"), "server_elapsed_ms": ans.get("elapsed_ms"),
                     "curl_ms": e["curl_ms"]}
            if name == "sentiment" and "tokens" in ans:
                entry["tokens"] = {t["token"]: round(t["score"], 3) for t in ans["tokens"]}
            if name == "cancer" and "features" in ans:
                top = sorted(ans["features"].items(), key=lambda kv: -abs(kv[1]))[:3]
                entry["top_features"] = {k: round(v, 4) for k, v in top}
            if name == "digits" and "heatmap" in ans:
                png = out_dir / "digits_heatmap_served.png"
                png.write_bytes(base64.b64decode(ans["heatmap"]))
                entry["heatmap"] = str(png)
            if e["status"] != 200:
                entry["error"] = ans
            summary["models"][name] = entry
        if "tiny_lm" in names:  # one curl explaining a generated answer
            summary["models"]["tiny_lm"] = _generated_answer(base, token)
    finally:
        server.stop(workdir)
        summary["stopped"] = True
    return summary


def _generated_answer(base: str, token: str) -> dict:
    """Explain tiny_lm's greedy answer to its sample prompt; the token table goes to the summary."""
    from explain_serve.llm_example import SAMPLE_PROMPT

    p = _curl(f"{base}/predictions/tiny_lm", token, json.dumps({"inputs": SAMPLE_PROMPT, "params": {"max_new_tokens": 2}}).encode())
    body = {"inputs": SAMPLE_PROMPT, "method": "feature_ablation", "params": {"max_new_tokens": 2}}
    e = _curl(f"{base}/explanations/tiny_lm", token, json.dumps(body).encode())
    ans = e["answer"]
    entry = {"prediction_status": p["status"], "explanation_status": e["status"],
             "predicted": p["answer"].get("generated_text"),
             "method": ans.get("method"), "target": ans.get("generated_text"), "convergence_delta": None,
             "server_elapsed_ms": ans.get("elapsed_ms"), "curl_ms": e["curl_ms"],
             "curl": f"curl -X POST {base}/explanations/tiny_lm -H 'Authorization: Bearer ...' "
                     f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'"}
    if e["status"] == 200:
        entry["table"] = token_table(ans)
    else:
        entry["error"] = ans
    return entry


def token_table(answer: dict) -> str:
    """An explanation of a generated answer as text: one row per output token, one column per input token."""
    cols = [str(t) for t in answer["input_tokens"]]
    width = max(8, *(len(c) for c in cols)) + 1
    rows = [" " * 10 + "".join(c.rjust(width) for c in cols)]
    for out_tok, row in zip(answer["output_tokens"], answer["token_attr"] or []):
        rows.append(str(out_tok)[:10].ljust(10) + "".join(f"{v:+{width}.3f}" for v in row))
    rows.append("(sum)".ljust(10) + "".join(f"{v:+{width}.3f}" for v in answer["seq_attr"]))
    return "\n".join(rows)
def viewer_command(workdir: Path, model_store: Path, names=("digits", "cancer", "sentiment")) -> str:
    """The shell command that serves the demo's models again and opens the viewer page on them."""
    bin_dir = Path(sys.executable).parent
    cli = bin_dir / "explain-serve" if (bin_dir / "explain-serve").is_file() else "explain-serve"
    return (f"{cli} serve --model-store {model_store} --models {' '.join(names)} --workdir {workdir} && "
            f"{cli} view --workdir {workdir} --open; {cli} stop --workdir {workdir}")


def _text_method() -> str:
    """LayerIntegratedGradients when the core has it, else occlusion over tokens."""
    import explain_serve.attr as attr

    try:
        getattr(attr, "LayerIntegratedGradients")
        return "layer_integrated_gradients"
    except (ImportError, AttributeError):
        return "occlusion"


def _short(summary: dict, full: Path) -> str:
    """A few lines for the terminal; the full summary is in ``full``."""
    ip = summary["in_process"]
    lines = [f"in-process: digits CNN trained in {ip['train_s']} s (accuracy {ip['train_accuracy']}), "
             f"predicted {ip['predicted']} (label {ip['label']}), IG in {ip['explain_ms']} ms, "
             f"delta {ip['convergence_delta']}, heat map {ip['heatmap']}"]
    sv = summary.get("served")
    if sv:
        lines.append(f"served: archives built in {sv['build_examples_s']} s, TorchServe READY in {sv['serve_start_s']} s, "
                     f"token on ({sv['token_file']})")
        for name, m in sv["models"].items():
            extra = m.get("heatmap") or m.get("tokens") or m.get("top_features") or m.get("error")
            if m.get("table"):
                extra = f"{m['curl']}\n{m['table']}"
            lines.append(f"  {name:9s} predict {m['prediction_status']} -> {m['predicted']}; explain {m['explanation_status']} "
                         f"{m['method']} target {m['target']} in {m['server_elapsed_ms']} ms (curl {m['curl_ms']} ms): {extra}")
        lines.append("server stopped" if sv.get("stopped") else "server NOT stopped")
        lines.append(f"to look at the models in a browser: {sv['viewer_command']}")
    lines.append(f"full summary: {full}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out", help="where PNGs and the server's workdir go (default: out/)")
    parser.add_argument("--model-store", default="model_store")
    parser.add_argument("--in-process-only", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    torch.set_num_threads(1)  # as the served workers: small shared machines suffer from oversubscription
    summary = {"in_process": in_process(out)}
    if not args.in_process_only:
        summary["served"] = served(out, Path(args.model_store).resolve())
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    print(_short(summary, out / "demo.json"))
    from explain_serve.audit.demo import audit_demo  # last: two digits versions audited, verdict and report

    summary["audit"] = audit_demo(out, Path(args.model_store).resolve())
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    ok = args.in_process_only or all(m["prediction_status"] == 200 and m["explanation_status"] == 200
                                     for m in summary["served"]["models"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
