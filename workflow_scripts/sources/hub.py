"""The Hugging Face hub cache, shared by hub models and hub datasets.

Compute nodes often have no network, so hub files are brought into the cache by jobs that run on
the login node; when one of those finds neither the cache nor the hub, the user needs to hear where
the cache was looked for and how to fill it, not a raw huggingface traceback.
"""
from __future__ import annotations


def cache_dir() -> str:
    """The hub cache huggingface_hub uses in this process (HF_HUB_CACHE, else HF_HOME/hub)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hf_home() -> str:
    """The root of every Hugging Face cache (the hub's and datasets' own) in this process."""
    from huggingface_hub import constants

    return constants.HF_HOME


def offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE


def reason(exc: BaseException) -> str:
    """Why the hub could not serve the files, in one line."""
    if offline():
        return "HF_HUB_OFFLINE is set, so the hub is not contacted; unset it where the network is available"
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}"


def not_available(key: str, what: str, cache: str, why: str, target: str, download: str) -> str:
    """The message for hub files that are neither cached nor downloadable here.

    key: the config key naming the files; what: the files in words (id, revision); cache: where they
    were looked for; target: the Snakemake target that downloads them; download: a stand-alone command.
    """
    return (
        f"{key}: {what} is not in the Hugging Face cache ({cache}) and cannot be downloaded here ({why}).\n"
        "Download it once on a machine with network (e.g. the cluster's login node), with HF_HOME pointing "
        "at a cache that the compute nodes share:\n"
        "    export HF_HOME=/shared/path/hf\n"
        f"    snakemake --cores 1 {target}   (with the study's --configfile, if any)\n"
        f"  or: {download}\n"
        "If it is already downloaded elsewhere, set HF_HOME (or HF_HUB_CACHE) to that cache."
    )
