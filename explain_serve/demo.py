"""``make demo``: train the bundled digits CNN, explain one prediction in-process, write a heat map.

``python -m explain_serve.demo [--out DIR]``. The served demo (TorchServe + curl) lives in
``explain_serve.demo_serve`` and is what ``make demo`` runs after this in-process part.
"""
from __future__ import annotations

import argparse
import json
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
    t0 = time.perf_counter()
    attr, delta = IntegratedGradients(model).attribute(
        x, baselines=0.0, target=pred, n_steps=32, return_convergence_delta=True
    )
    explain_ms = (time.perf_counter() - t0) * 1000
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "digits_ig_inprocess.png"
    image = x[0].permute(1, 2, 0).numpy()
    save_image_attr_png(attr[0].permute(1, 2, 0).detach().numpy(), png, original_image=image,
                        method="blended_heat_map", sign="all", title=f"IG, predicted {pred}")
    return {
        "model": "digits", "train_s": round(train_s, 2), "train_accuracy": round(trained["accuracy"], 4),
        "label": trained["sample_label"], "predicted": pred, "probability": round(float(probs[pred]), 4),
        "method": "integrated_gradients", "n_steps": 32, "convergence_delta": float(delta[0]),
        "attribution_sum": float(attr.sum()), "explain_ms": round(explain_ms, 2), "heatmap": str(png),
        "top_pixels": [list(map(int, np.unravel_index(i, (8, 8))))
                       for i in attr[0, 0].flatten().argsort(descending=True)[:3].tolist()],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out", help="where the PNG goes (default: out/)")
    args = parser.parse_args(argv)
    summary = in_process(Path(args.out))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
