"""The image build step that fills the models Volume, kept apart from the project so that editing the project
never re-runs it: it imports nothing of comfy_saas and takes plain data (Modal caches the step by this
function's source and its arguments, so only a change to the model list runs it again)."""

from __future__ import annotations

from pathlib import Path


def download(models: list[dict[str, str]], models_dir: str) -> None:
    """Fetch each {repo, file, subdir} from Hugging Face into models_dir/subdir, skipping files already there.
    Xet-backed files go through hf_xet (HF_XET_HIGH_PERFORMANCE=1 is set for this step)."""
    from huggingface_hub import hf_hub_download

    for m in models:
        target = Path(models_dir) / m["subdir"]
        if (target / m["file"]).is_file():
            continue
        target.mkdir(parents=True, exist_ok=True)
        hf_hub_download(repo_id=m["repo"], filename=m["file"], local_dir=target)
