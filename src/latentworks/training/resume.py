"""``--resume``: continue a run with the config it was started with.

A run folder's ``config.json`` holds the run's training config under ``"train"`` (the
``DiffusionTrainConfig`` / ``VAETrainConfig`` fields as JSON). Resuming reads it back; only options
given explicitly (on the command line, or set on the config object) may differ from it, and only those
in the policy's ``mutable`` set: how long and how often (steps, wall time, checkpoint/sample/log
intervals), where (device) and the learning rate (to rescue a run that diverged). Everything that fixes
what is being trained -- architecture, model shapes, objective, data, resolution, batch size, seed, loss
weights -- is refused with one error that lists every offending option, so a resumed run is the same
run. See docs/training.md, "Resume".
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from latentworks.models.configs import config_from_dict
from latentworks.pipelines.export import upgrade_run_config
from latentworks.training.common import to_jsonable

T = TypeVar("T")


class ResumeError(ValueError):
    """``--resume`` asked for something the saved run cannot do (changed fixed options, another kind)."""


@dataclass(frozen=True)
class ResumePolicy:
    """Which config fields a resumed run may change; the rest must equal the saved config.

    ``ignored`` fields are bookkeeping (the run folder, the resume flag itself, progress bars) and are
    neither compared nor reported.
    """

    kind: str  # config.json "kind": "diffusion" or "autoencoder"
    command: str  # for messages: "latentworks train"
    mutable: frozenset[str]
    ignored: frozenset[str] = frozenset({"out", "resume", "progress"})
    flags: Mapping[str, str] = dataclasses.field(default_factory=dict)  # field -> CLI flag if not --field
    api_only: frozenset[str] = frozenset({"log_every", "sample_prompts", "sample_steps", "sample_guidance"})

    def flag(self, name: str) -> str:
        return self.flags.get(name, "--" + name.replace("_", "-"))


# How long / how often / where, and the learning rate. Changing the learning rate (or the wall-time and
# step limits) is the usual reason to resume by hand; none of these changes a tensor's shape or the data.
_SCHEDULE = frozenset(
    {"steps", "max_seconds", "checkpoint_every", "sample_every", "log_every", "device", "lr"}
)

DIFFUSION_RESUME = ResumePolicy(
    kind="diffusion",
    command="latentworks train",
    mutable=_SCHEDULE | {"sample_prompts", "sample_steps", "sample_guidance"},  # previews only
    flags={"vae_run": "--vae", "model": "--preset/--architecture (the model config)"},
)
VAE_RESUME = ResumePolicy(kind="autoencoder", command="latentworks train-vae", mutable=_SCHEDULE)
LORA_RESUME = ResumePolicy(
    kind="lora",
    command="latentworks train-lora",
    mutable=_SCHEDULE | {"sample_prompts", "sample_steps"},
    flags={"base": "--model"},
)


def read_run_config(run: str | Path, policy: ResumePolicy) -> dict[str, Any] | None:
    """The run's ``config.json``, or None when the folder has none (nothing to resume yet)."""
    path = Path(run) / "config.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResumeError(f"{path}: cannot read the saved run config ({e}); cannot resume this run") from None
    if isinstance(saved, dict):
        upgrade_run_config(saved)  # older runs say "family" for the architecture
    if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict):
        raise ResumeError(f"{path}: not a run config (no 'train' section); cannot resume this run")
    if saved.get("kind") != policy.kind:
        raise ResumeError(
            f"{path} belongs to a {saved.get('kind')!r} run, not a {policy.kind!r} run; "
            f"'{policy.command} --resume' cannot continue it. Use another --out folder."
        )
    return saved


def _same(saved: Any, given: Any) -> bool:
    a, b = to_jsonable(saved), to_jsonable(given)
    if isinstance(a, str) and isinstance(b, str) and ("/" in a or "/" in b):  # paths: compare resolved
        return a == b or Path(a).resolve() == Path(b).resolve()
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return bool(a == b)


def _with_defaults(saved_model: Mapping[str, Any], model_config: Any) -> dict[str, Any]:
    """The saved model config rebuilt as ``model_config``'s class, so fields added to the class since the run
    started take their defaults (a run saved by an older version resumes as it was built). As saved if it no
    longer builds (a field removed since): the comparison then names the difference."""
    try:
        return dict(to_jsonable(config_from_dict(type(model_config), dict(saved_model))))
    except (TypeError, ValueError):
        return dict(to_jsonable(saved_model))


def merge_for_resume(
    saved_train: Mapping[str, Any],
    given: Mapping[str, Any],
    policy: ResumePolicy,
    *,
    run: str | Path,
) -> tuple[dict[str, Any], list[str]]:
    """The saved ``train`` dict with the ``given`` overrides applied, and one line per changed option.

    ``given`` holds only explicitly chosen values (config field names). A given value equal to the saved
    one is no change. Raises ``ResumeError`` naming every given option that differs from the saved
    config and is not in ``policy.mutable``, with both values.
    """
    merged, changes, refused = dict(saved_train), [], []
    for name, value in given.items():
        if name in policy.ignored:
            merged[name] = value
            continue
        if name not in saved_train:  # a field newer than the run: nothing to compare against
            merged[name] = value
            continue
        old = saved_train[name]
        if _same(old, value):
            continue
        if name in policy.mutable:
            merged[name] = value
            changes.append(f"{policy.flag(name)}: {_show(old)} -> {_show(value)}")
        else:
            refused.append(f"{policy.flag(name)} (saved {_show(old)}, given {_show(value)})")
    if refused:
        allowed = ", ".join(sorted(policy.flag(n) for n in policy.mutable - policy.api_only))
        api = sorted(policy.mutable & policy.api_only)
        if api:
            allowed += f" (and in the Python API {', '.join(api)})"
        raise ResumeError(
            f"{run}: --resume continues the run with its saved config ({Path(run) / 'config.json'}), and "
            f"these options cannot change in the middle of a run: {'; '.join(refused)}. Drop them to "
            f"resume as saved, or start a new run in another --out folder. Options that may change on "
            f"resume: {allowed}."
        )
    return merged, changes


def check_resume(
    saved: Mapping[str, Any] | None,
    cfg: Any,
    policy: ResumePolicy,
    *,
    run: str | Path,
    model_config: Any = None,
) -> list[str]:
    """Library-level guard for ``train_*(cfg)`` with ``resume=True``: ``cfg`` (a training config
    dataclass) must agree with the saved run config except in ``policy.mutable`` fields, and
    ``model_config`` (the network config about to be built) with the saved one. Returns the lines
    describing the allowed changes; raises ``ResumeError`` otherwise."""
    if saved is None:
        return []
    mine = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    mine.pop("model", None)  # compared as the built config below (cfg.model may be None: a preset)
    changes = merge_for_resume(saved["train"], mine, policy, run=run)[1]
    if model_config is not None and "model" in saved:
        old, new = _with_defaults(saved["model"], model_config), to_jsonable(model_config)
        diff = [
            f"{k}: saved {_show(old.get(k))}, given {_show(new.get(k))}"
            for k in new
            if not _same(old.get(k), new.get(k))
        ]
        if not diff:
            return changes
        raise ResumeError(
            f"{run}: --resume continues the run with its saved model config ({Path(run) / 'config.json'}), "
            f"but the model config given differs ({'; '.join(diff[:5]) or 'other fields'}). Drop "
            "--preset/--architecture (or the model= argument) to resume as saved, or start a new run in another "
            "--out folder."
        )
    return changes


def config_from_saved(cls: type[T], train: Mapping[str, Any], **fixed: Any) -> T:
    """Rebuild a training config dataclass from its saved JSON dict (``config.json["train"]``).

    Fields the dict lacks (added since the run started) keep their defaults; keys the class no longer has
    are dropped. JSON lists become tuples and strings become ``Path`` for fields annotated so. ``fixed``
    values (e.g. the model config object) are used as given.
    """
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in fixed:
            kwargs[f.name] = fixed[f.name]
            continue
        if f.name not in train:
            continue
        value = train[f.name]
        annotation = str(f.type)
        if isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, str) and "Path" in annotation:
            value = Path(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def _show(v: Any) -> str:
    v = to_jsonable(v)
    r = json.dumps(v) if not isinstance(v, str) else repr(v)
    return r if len(r) <= 60 else r[:57] + "..."
