"""What ``--set`` overrides mean before they are type-checked: null, epoch/step pairs, dotted keys.

* ``null`` (or ``none``) clears a key that some profile of the method leaves empty (``epochs_u1``
  is 50 at ``paper`` and None at ``small``): None is a value the method already understands.
* Epoch-counted profiles (RadioUNet, UVM-Net, RME-GAN, PhysDiff at ``paper``) have a pair of
  keys per length, ``epochs_X`` / ``steps_X``: exactly one is set. ``--set steps_X=N`` alone
  clears ``epochs_X``, so a paper profile can be shortened to N trainer steps; giving both
  (not null) is refused in one line.
* ``<method>.<key>=value`` sets a hyper-parameter of the fit a method starts from (LiCGDM's
  ``cgdm`` teacher, SRGAN-MSE's ``srresnet``), checked against that method's profile.
"""

from __future__ import annotations

from .errors import CkmError

NULL_WORDS = ("null", "none")


def nullable(spec) -> set[str]:
    """Keys that are None in at least one of the method's profiles."""
    return {k for hp in spec.profiles.values() for k, v in hp.items() if v is None}


def _is_text_key(spec, key: str) -> bool:
    return any(isinstance(hp.get(key), str) for hp in spec.profiles.values())


def step_pairs(defaults: dict) -> dict[str, str]:
    """{epochs key: its steps key} of a profile: ``epochs_X``/``steps_X``, ``region_epochs``/
    ``region_steps``, ``lr_step_epochs``/``lr_step_every``, ``val_every_epochs``/``val_every``."""
    pairs = {}
    for key in defaults:
        if "epochs" not in key:
            continue
        stem = key.removesuffix("_epochs")
        for other in (key.replace("epochs", "steps"), stem, stem + "_every"):
            if other != key and other in defaults:
                pairs[key] = other
                break
    return pairs


def resolve_overrides(spec, profile: str, overrides: dict) -> dict:
    """``overrides`` with null words made None and epoch keys cleared where only the steps are set."""
    from .plugins import require_profile

    defaults = require_profile(spec, profile)
    empty_ok = nullable(spec)
    out = {}
    for key, value in overrides.items():
        if "." in key:
            out[key] = value
            continue
        if isinstance(value, str) and value.lower() in NULL_WORDS and key in empty_ok and not _is_text_key(spec, key):
            value = None
        out[key] = value
    for epochs_key, steps_key in step_pairs(defaults).items():
        e_given, s_given = out.get(epochs_key) is not None, out.get(steps_key) is not None
        if e_given and s_given:
            raise CkmError(f"--set {epochs_key}={out[epochs_key]} and --set {steps_key}={out[steps_key]} both given "
                           f"to '{spec.name}': pass one (the other is then cleared)")
        if s_given and defaults.get(epochs_key) is not None and epochs_key not in out:
            out[epochs_key] = None  # steps alone: the profile's epoch count gives way
        if e_given and defaults.get(steps_key) is not None and steps_key not in out:
            out[steps_key] = None
        if epochs_key in out and out[epochs_key] is None and not s_given and defaults.get(steps_key) is None:
            raise CkmError(f"--set {epochs_key}=null leaves '{spec.name}' without a length: add --set {steps_key}=N "
                           f"(trainer steps)")
    return out


def dependency_overrides(hparams: dict, name: str) -> dict:
    """The ``<name>.<key>`` entries of ``hparams`` as {key: value}."""
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in hparams.items() if k.startswith(prefix)}


def check_dotted(reg, spec, profile: str, overrides: dict) -> None:
    """A dotted key names a learned method and one of its profile's keys, with a value of that key's type."""
    from .runner import check_hparams

    for key in sorted(k for k in overrides if "." in k):
        name, _, sub = key.partition(".")
        try:
            dep = reg.method(name)
        except CkmError:
            raise CkmError(f"--set {key}: '{name}' is not a method; a dotted key sets the hyper-parameter of the fit "
                           f"'{spec.name}' starts from, e.g. --set cgdm.steps=1000 for licgdm") from None
        if getattr(dep, "kind", "baseline") == "baseline" or not sub:
            raise CkmError(f"--set {key}: '{name}' is not a learned method with a key '{sub}': a dotted key sets the "
                           f"hyper-parameter of a fit a method starts from, e.g. --set cgdm.steps=1000")
        check_hparams(dep, profile, resolve_overrides(dep, profile, {sub: overrides[key]}))
