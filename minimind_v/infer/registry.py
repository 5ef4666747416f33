"""Which models a front end offers: run directories named on the command line, or every run inside a folder.

A run directory is recognised by its `config.json` (what training writes). Models get short names (the
directory name) that clients use to pick one: the server's `model` field, the web demo's dropdown.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any


def find_runs(paths: list[str | Path]) -> dict[str, Path]:
    """name -> run directory, in the order given (a folder's runs sorted by name)."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / "config.json").is_file():
            runs.append(p)
        elif p.is_dir():
            found = sorted(d for d in p.iterdir() if (d / "config.json").is_file())
            if not found:
                raise FileNotFoundError(f"{str(p)!r} is neither a run directory (no config.json) nor a folder "
                                        f"of run directories")
            runs += found
        else:
            raise FileNotFoundError(f"model directory {str(p)!r} does not exist")
    names: dict[str, Path] = {}
    for run in runs:
        name = run.resolve().name
        if name in names and names[name].resolve() != run.resolve():
            name = f"{run.resolve().parent.name}/{name}"  # two runs called alike: say where each lives
        if name in names and names[name].resolve() != run.resolve():
            raise ValueError(f"two different model directories are both called {name!r}: {names[name]} and {run}")
        names[name] = run
    return names


class ModelPool:
    """Loads each model the first time it is asked for and keeps it; thread-safe."""

    def __init__(self, runs: dict[str, Path], device: str = "auto", weights: str = "fp32",
                 encoder_weights: str | None = None, compile: bool = False, adapter: str | None = None):
        if not runs:
            raise ValueError("no models to serve")
        if adapter and len(runs) > 1:
            raise ValueError(f"--adapter applies to one model, but {len(runs)} are served; serve a merged run "
                             "(minimind-v merge) beside the others instead")
        self.runs, self.device = runs, device
        self.load_options = {"weights": weights, "encoder_weights": encoder_weights, "compile": compile,
                             "adapter": adapter}
        self._loaded: dict[str, Any] = {}
        self._locks = {name: threading.Lock() for name in runs}  # one per model: loading one blocks no other

    @property
    def names(self) -> list[str]:
        return list(self.runs)

    def get(self, name: str) -> Any:
        """The VLMChat called `name` (KeyError if there is none)."""
        from .api import load

        if name not in self.runs:
            raise KeyError(name)
        if name in self._loaded:
            return self._loaded[name]
        with self._locks[name]:
            if name not in self._loaded:
                vlm = load(self.runs[name], device=self.device, **self.load_options)
                if self.load_options["compile"]:  # compile now, not in the first user's request
                    print(f"{name}: compiling the decoding step (once, about a minute on a small CPU)", flush=True)
                    vlm.warm_up()
                self._loaded[name] = vlm
            return self._loaded[name]
