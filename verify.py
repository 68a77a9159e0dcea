"""`modal run verify.py [--pool NAME]`: each pool's models and custom nodes present or missing against
deploy.toml, and whether ComfyUI starts in its image, on the pool's GPU.

Its own App (never part of `modal deploy app.py`): a GPU function costs nothing while nobody calls it, but it
does not belong in the production app, and `modal run` builds it in an ephemeral app that stops afterwards.
"""

from __future__ import annotations

from pathlib import Path

import modal

import storage
import worker

app = modal.App("comfy-saas-verify")


def _verify(pool: str):
    def verify() -> dict:
        """The pool's models and custom nodes present/missing, and whether ComfyUI starts."""
        from comfy_saas import modal_runtime

        config = worker.CONFIG
        report = modal_runtime.verify_setup(config, Path(worker.COMFY_DIR), Path(worker.MODELS_DIR),
                                            config.comfyui.port, pool)
        print(report)
        return report

    verify.__name__ = verify.__qualname__ = f"verify_{pool}"  # a module global: the container finds it by name
    return verify


VERIFY: dict[str, modal.Function] = {}
for _pool in worker.CONFIG.pools:
    _fn = _verify(_pool.name)
    globals()[_fn.__name__] = VERIFY[_pool.name] = app.function(
        image=worker.IMAGES[_pool.name], gpu=worker.GPUS[_pool.name], env=worker.RUNTIME_ENV,
        volumes={worker.MODELS_DIR: storage.models_volume}, timeout=900)(_fn)


@app.local_entrypoint()
def main(pool: str = "") -> None:
    """Verify every pool, or only `pool`."""
    for name, verify in VERIFY.items():
        if pool in ("", name):
            print(name, verify.remote())
