"""`ckmbench run --weights PATH`: score a checkpoint published by a method's authors.

The authors' code names its layers its own way. A method that can take such a file declares
an :class:`OfficialWeights` beside its network: where the file comes from and, per group of
modules (a generator, a discriminator), the renames (official prefix -> ckmbench prefix) that
turn the file's keys into ours. Our keys are ``<module>.<state_dict key>`` of the modules the
method's ``import_modules(task)`` builds untrained for the task (e.g. ``net.u1.encoder.0.0.weight``).

Loading is strict: the file is read with ``torch.load(weights_only=True)``
(:func:`ckmbench.checkpoints.load_checkpoint_file`), every key must map to one of ours, every
one of ours must come from the file, shapes must match exactly; otherwise one ``CkmError``
line names the first missing and the first unexpected key (or the first shape that differs).
Two leniencies, both of saving conventions rather than of weights: a ``module.`` prefix on
every key (``nn.DataParallel``) is dropped, and BatchNorm's ``num_batches_tracked`` counters
(absent from files of torch < 0.4.1, unused in eval mode) may be missing. A group marked
optional (a discriminator, which no prediction uses) may be absent as a whole; if any of its
keys is present, all of them must be. The key maps: docs/weights.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoints import load_checkpoint_file
from .digest import file_sha256
from .errors import CkmError

BATCHNORM_COUNTER = "num_batches_tracked"


@dataclass(frozen=True)
class KeyGroup:
    """Modules filled from one part of the file; ``renames`` are (official prefix, our prefix)."""

    name: str
    renames: tuple[tuple[str, str], ...]
    required: bool = True

    def ours(self, key: str) -> str | None:
        for official, ours in self.renames:
            if key.startswith(official):
                return ours + key[len(official):]
        return None

    def official(self, key: str) -> str | None:
        for official, ours in self.renames:
            if key.startswith(ours):
                return official + key[len(ours):]
        return None


@dataclass(frozen=True)
class OfficialWeights:
    """The key map of one method: the file it reads (``source``) and its groups."""

    source: str
    groups: tuple[KeyGroup, ...]

    def ours(self, key: str) -> tuple[KeyGroup, str] | None:
        for group in self.groups:
            name = group.ours(key)
            if name is not None:
                return group, name
        return None

    def group_of(self, our_key: str) -> KeyGroup | None:
        return next((g for g in self.groups if g.official(our_key) is not None), None)


def key_map_of(method_cls) -> OfficialWeights | None:
    return getattr(method_cls, "official_weights", None)


def check_weights_request(spec, profile: str, path) -> None:
    """Refuse --weights before any work: only a method with a key map, only at ``paper``."""
    if key_map_of(spec.factory) is None:
        raise CkmError(f"--weights: method '{spec.name}' has no key map for its authors' checkpoints: "
                       f"drop --weights (the methods that have one are listed in docs/weights.md)")
    if profile != "paper":
        raise CkmError(f"--weights loads the authors' checkpoint into the paper profile, not '{profile}': "
                       f"pass -p paper")
    if not Path(path).is_file():
        raise CkmError(f"--weights {path} is not a file: pass the state_dict file the authors published")


def read_state_dict(path, source: str) -> dict[str, torch.Tensor]:
    """The file's flat {name: tensor} (a DataParallel ``module.`` prefix dropped)."""
    state = load_checkpoint_file(path, what="--weights", kind=f"a state_dict of {source}",
                                 fix="pass the state_dict file the authors published")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        got = type(state).__name__ if not isinstance(state, dict) else "a dict holding non-tensors"
        raise CkmError(f"--weights {path} is {got}, not a state_dict (names -> tensors) of {source}: "
                       f"save model.state_dict() alone")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def map_keys(state: dict, key_map: OfficialWeights, expected: dict, path) -> dict[str, torch.Tensor]:
    """``state`` renamed to our keys; raises the one-line mismatch error (keys, then shapes)."""
    renamed, unexpected = {}, []
    for key, value in state.items():
        hit = key_map.ours(key)
        if hit is None or hit[1] not in expected:
            unexpected.append(key)
        else:
            renamed[hit[1]] = value
    present = {key_map.group_of(k).name for k in renamed}
    missing = []
    for key in expected:
        group = key_map.group_of(key)
        if key in renamed or key.endswith(BATCHNORM_COUNTER):
            continue
        if group is None or group.required or group.name in present:
            missing.append(group.official(key) if group else key)
    if missing or unexpected:
        raise CkmError(f"--weights {path}: its keys do not map onto {key_map.source} "
                       f"({len(missing)} missing, first '{missing[0] if missing else '-'}'; "
                       f"{len(unexpected)} unexpected, first '{unexpected[0] if unexpected else '-'}'): "
                       f"pass that network's state_dict (key maps: docs/weights.md)")
    for key, value in renamed.items():
        want = tuple(expected[key].shape)
        if tuple(value.shape) != want:
            raise CkmError(f"--weights {path}: '{key_map.group_of(key).official(key)}' has shape "
                           f"{tuple(value.shape)}, the paper profile's network needs {want} (the input channels "
                           f"of the task, or another variant of the network): pass weights of the same network")
    return renamed


def import_weights(method, path, task, device) -> dict:
    """Load the authors' file at ``path`` into ``method`` built for ``task``; the record's fit field."""
    key_map = key_map_of(type(method))
    if key_map is None:
        raise CkmError(f"--weights: method '{method.name}' has no key map: drop --weights")
    state = read_state_dict(path, key_map.source)
    modules = method.import_modules(task)
    expected = {f"{m}.{k}": v for m, module in modules.items() for k, v in module.state_dict().items()}
    renamed = map_keys(state, key_map, expected, path)
    loaded = []
    for m, module in modules.items():
        mine = {k[len(m) + 1:]: v for k, v in renamed.items() if k.startswith(m + ".")}
        if not mine:
            continue  # an optional group the file does not hold keeps its initial weights
        current = module.state_dict()
        module.load_state_dict({**{k: v for k, v in current.items() if k.endswith(BATCHNORM_COUNTER)}, **mine})
        module.to(device)
        loaded.append(m)
    return {"source": "imported", "weights": str(Path(path).resolve()), "weights_sha256": file_sha256(path),
            "key_map": key_map.source, "modules": loaded, "steps_done": 0, "train_s": None}
