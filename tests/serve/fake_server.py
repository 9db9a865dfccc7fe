"""Run the web app in a real uvicorn process for the subprocess tests (persistence, browser).

    python -m tests.serve.fake_server --port P --db DB [--model PKG] [--token T]

Without --model it serves the fake predictor; with --model it loads a real package through
leukoscope.inference.predictor.load_predictor and uses the real Grad-CAM when leukoscope.inference.explain exists.
"""

from __future__ import annotations

import argparse
import importlib.util

import uvicorn

from leukoscope.serve import Settings, create_app
from tests.serve.fakes import FakeCells, FakePredictor, fake_gradcam


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--model")
    parser.add_argument("--token")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--queue", type=int, default=16)
    args = parser.parse_args()
    settings = Settings(port=args.port, db=args.db, token=args.token, workers=args.workers,
                        queue=args.queue, model=args.model)
    if args.model:
        from leukoscope.inference.predictor import load_predictor

        predictor = load_predictor(args.model)
        gradcam = None if importlib.util.find_spec("leukoscope.inference.explain") else fake_gradcam
    else:
        predictor, gradcam = FakePredictor(), fake_gradcam
    app = create_app(settings, predictor, gradcam=gradcam, cells=None if args.model else FakeCells())
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
