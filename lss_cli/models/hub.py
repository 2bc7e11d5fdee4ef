"""The Hugging Face Hub: `hf-hub:org/name[@revision]` names and `lss push`. The only module that
imports huggingface_hub.

A name resolves to a folder of the local Hub cache (`snapshot_download`), so the cache and
`HF_HUB_OFFLINE=1` work as for any Hub library: an offline node with a filled cache loads without a
network, and one without the files gets an error naming the repo and the variable. Uploading
(`upload_export`) is the one step that needs a network; the token comes from `HF_TOKEN` or the
login cache (`hf auth login`), never from a command-line flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from lss_cli.errors import ConfigError, InputFileError, LssError

PREFIX = "hf-hub:"
HIDDEN = [".*", "*/.*"]  # fnmatch patterns of hidden files and folders, at any depth
# org/name as the Hub spells repo ids (letters, digits, `-`, `_`, `.`; no `--` or `..`).
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


@dataclass(frozen=True)
class HubName:
    repo: str  # org/name
    revision: str | None  # branch, tag or commit; None = main

    def __str__(self) -> str:
        return PREFIX + self.repo + (f"@{self.revision}" if self.revision else "")


def is_hub_name(name: object) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def parse_hub_name(name: str) -> HubName:
    """`hf-hub:org/name[@revision]` -> HubName; a malformed name is a ConfigError."""
    repo, _, revision = name[len(PREFIX):].partition("@")
    if not _REPO.match(repo) or "--" in repo or ".." in repo or (_ and not revision):
        raise ConfigError(f"{name!r} is not a Hub model name", hint="write hf-hub:org/name or hf-hub:org/name@revision")
    return HubName(repo, revision or None)


def check_repo_id(repo: str) -> str:
    parse_hub_name(PREFIX + repo)
    return repo


def snapshot(name: str, allow_patterns: list[str] | None = None) -> tuple[Path, str]:
    """The local folder holding `name`'s files (downloaded into the Hub cache unless there), and
    the name pinned to its commit (`hf-hub:org/name@<sha>`), which is what results record."""
    hub = parse_hub_name(name)
    try:
        folder = Path(snapshot_download(hub.repo, revision=hub.revision, allow_patterns=allow_patterns))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        offline = constants.HF_HUB_OFFLINE
        raise LssError(
            f"{hub} is not in the local Hub cache ({constants.HF_HUB_CACHE})"
            + (" and HF_HUB_OFFLINE=1 forbids downloading it" if offline else f" and could not be downloaded ({_first_line(e)})"),
            hint=f"on a connected machine with the same HF_HUB_CACHE run `hf download {hub.repo}`"
            + (f" --revision {hub.revision}" if hub.revision else "")
            + (", or unset HF_HUB_OFFLINE" if offline else ""),
        ) from None
    except RevisionNotFoundError:
        raise ConfigError(f"{hub}: the repo has no revision {hub.revision!r}", hint="check the part after @") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"{hub}: no such model repo on {constants.ENDPOINT}, or it is private or gated",
                          hint="check the name; for a private repo set HF_TOKEN or run `hf auth login`") from None
    except (HfHubHTTPError, OSError) as e:
        raise LssError(f"could not fetch {hub}: {_first_line(e)}") from None
    return folder, f"{PREFIX}{hub.repo}@{folder.name}"  # cache snapshots are named by commit


def upload_export(folder: Path, repo: str, *, private: bool = False, revision: str | None = None,
                  message: str = "Upload an lss-cli video model") -> dict[str, str]:
    """Create `repo` (kept if it exists) and upload `folder` as one commit; returns its urls."""
    check_repo_id(repo)
    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo, branch=revision, exist_ok=True)
        # Hidden files (an interrupted write's temp file, editor files) are not part of the model.
        info = api.upload_folder(repo_id=repo, folder_path=str(folder), revision=revision, commit_message=message,
                                 ignore_patterns=HIDDEN)
    except OfflineModeIsEnabled:
        raise LssError(f"cannot push to {repo}: HF_HUB_OFFLINE=1 forbids network access",
                       hint="push from a machine with network access, or unset HF_HUB_OFFLINE") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        hint = ("log in: set HF_TOKEN or run `hf auth login` (a token with write access)" if status in (401, 403)
                else "check the repo name and your network")
        raise LssError(f"push to {repo} failed: {_first_line(e)}", hint=hint) from None
    except ValueError as e:  # the Hub refused the card's YAML metadata
        raise InputFileError(f"push to {repo} refused: {_first_line(e)}", hint="fix the README.md front matter") from None
    except OSError as e:
        raise LssError(f"push to {repo} failed: {_first_line(e)}", hint="check your network") from None
    return {"repo": repo, "url": str(url), "commit": getattr(info, "oid", None) or "",
            "commit_url": getattr(info, "commit_url", None) or str(info)}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
