"""A sweep's best checkpoint as an MLflow ``python_function`` model: prompts in, generated text out.

MLflow logs this file itself as the model's code ("models from code"): loading the model runs it, with the
``rnncore`` package that is shipped beside it (``code_paths``) on ``sys.path``, so it imports only mlflow, numpy
and rnncore -- the model loads and serves where rnnsweep is not installed. ``pipeline.tracking.log_best_model``
logs it; the checkpoint is its one artifact, ``checkpoint``.

    model = mlflow.pyfunc.load_model("models:/NAME/1")
    model.predict(["ROMEO:"], params={"length": 200, "temperature": 0.8, "seed": 1})  # -> ["ROMEO:..."]

Each prompt is continued by ``rnncore.sample.generate_from`` with the same length, temperature and seed, which is
what ``python -m pipeline.sample`` does: the same prompt and params give the same text.
"""
from __future__ import annotations

import math
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from rnncore.sample import generate_from

CHECKPOINT = "checkpoint"  # the artifact's key
# the inference params, their defaults (pipeline.sample's) and types: the model signature's param schema
PARAMS: dict[str, Any] = {"length": 500, "temperature": 0.8, "seed": 0}


class CharRNN(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from rnncore.checkpoint import load_sampler

        self.P, self.vocab, self.h = load_sampler(context.artifacts[CHECKPOINT])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        p = {**PARAMS, **(params or {})}
        length, temperature, seed = int(p["length"]), float(p["temperature"]), int(p["seed"])
        if length <= 0 or not math.isfinite(temperature) or temperature <= 0 or seed < 0:
            raise ValueError(f"params must have length > 0, a finite temperature > 0 and seed >= 0, but got "
                             f"length={length}, temperature={temperature}, seed={seed}")
        return [generate_from(self.P, self.vocab, length, temperature, prompt, seed, h=self.h)
                for prompt in prompts(model_input)]


def prompts(model_input: Any) -> list[str]:
    """The prompts as a list of str: MLflow hands a list of strings over as a one-column DataFrame (or a Series,
    an array, a list, one string), depending on how it was called."""
    if hasattr(model_input, "columns"):  # pandas.DataFrame: the one column
        model_input = model_input.iloc[:, 0]
    if isinstance(model_input, str):
        return [model_input]
    return ["" if x is None else str(x) for x in np.asarray(model_input, dtype=object).ravel().tolist()]


mlflow.models.set_model(CharRNN())
