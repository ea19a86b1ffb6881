"""Model Registry: pick the best training run by validation, register it, move aliases.

Selection uses the **last epoch's** ``val_accuracy`` (ties: lower ``val_loss``), because the
logged model holds the last epoch's weights: the registered weights are the ones whose
validation score chose them. Test accuracy is recorded beside it, never used to choose.

Aliases: ``challenger`` always points at the newest registered candidate. ``champion``
moves to a new version only if it passes the promotion gates against the current champion
(core/promotion_rule.py: min_improvement, Welch's test over seeds where both have several,
max_class_drop), compared on validation scores read from the store; with ``require_shadow``
one that passes stays challenger, and flows/promote.py moves the alias on live evidence
(``move_champion``). Each decision is one printed line, the version's ``champion_decision``
tag, and a row of the deciding run's registry/decisions.csv (``decisions.log_decision``).
"""

import json
import time
from dataclasses import dataclass

import mlflow
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mnist_pipeline import names
from mnist_pipeline.core import model_card, promotion_rule
from mnist_pipeline.core.errors import UserError, first_line
from mnist_pipeline.tracking import decisions, logged_model, model_uris, readback, store

_ALIAS_ROUNDS = 6  # re-checks of the champion alias against concurrent registrations
_CONFIRM_SECONDS = 0.2  # after taking the alias, look again this much later


class RegistryError(UserError, LookupError):
    """Nothing suitable to register; the message is one line for the user."""


@dataclass(frozen=True)
class Registration:
    version: ModelVersion
    created: bool  # False: this run was registered before, and that version is returned
    champion: bool  # this version holds the champion alias now
    reason: str  # one line: why it did or did not become champion
    decision: promotion_rule.Decision | None = None  # None: it already held the alias
    versus: str | None = None  # the champion version it was compared with
    gates: promotion_rule.Gates = promotion_rule.Gates()


def selection_key(run: Run) -> tuple[float, float]:
    """Higher is better: last-epoch val_accuracy, then lower last-epoch val_loss."""
    return run.data.metrics["val_accuracy"], -run.data.metrics["val_loss"]


def best_run(run_ids: list[str]) -> Run:
    finished = [run for run in map(mlflow.get_run, run_ids) if readback.completed(run)]
    if not finished:
        raise RegistryError(f"none of the runs {', '.join(run_ids)} is a FINISHED training run")
    return max(finished, key=selection_key)


def children_of(parent_run_id: str | None) -> tuple[str, dict[str, str]]:
    """(parent id, {variant: training run id}) of a `main` run; the latest one if no id."""
    if not parent_run_id:
        parents = readback.runs_tagged({names.TAG_ROLE: names.ROLE_MAIN}, "FINISHED", max_results=1)
        if not parents:
            raise RegistryError("no FINISHED main run in this experiment: run `mlflow run .` first")
        parent = parents[0]
    else:
        try:
            parent = mlflow.get_run(parent_run_id)
        except MlflowException:
            raise RegistryError(f"run_id={parent_run_id!r} is not a run in this tracking store") from None
    children = parent.data.tags.get(names.TAG_CHILDREN)
    if not children:
        raise RegistryError(f"run {parent.info.run_id} is not a main run (no {names.TAG_CHILDREN} tag)")
    return parent.info.run_id, json.loads(children)


def register_best(
    run_ids: list[str],
    model_name: str = names.MODEL_NAME,
    chosen_from: str = "",
    gates: promotion_rule.Gates | None = None,
) -> Registration:
    """Register the best of ``run_ids`` and update the aliases; logs the decision on the
    active run, if any."""
    run = best_run(run_ids)
    registration = register_run(run, model_name, chosen_from or f"runs {', '.join(run_ids)}", gates)
    variant = run.data.tags.get(names.TAG_VARIANT)
    print(f"{model_name} version {registration.version.version} ({variant}): {registration.reason}")
    if mlflow.active_run():
        decisions.log_decision(registration, mlflow.active_run().info.run_id)
    return registration


def _existing_version(client, model_name: str, run_id: str) -> ModelVersion | None:
    versions = client.search_model_versions(f"name = '{model_name}' and tags.run_id = '{run_id}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def _attach_card(client, run: Run, version: ModelVersion, chosen_from: str) -> None:
    """The version's description, and its model card logged on its training run and linked
    from a version tag and from the description."""
    m, tags, run_id = run.data.metrics, run.data.tags, run.info.run_id
    description = (
        f"MNIST digit classifier, variant `{tags.get('variant')}` ({tags.get('description')}). "
        f"Chosen from {chosen_from} as the run with the highest last-epoch validation accuracy "
        f"({m['val_accuracy']:.4f}); test accuracy {m['test_accuracy']:.4f} is reported, not "
        "used to choose. Input: raw pixels 0-255, float32, shape (n, 28, 28); output: 10 "
        f"class probabilities. Training run {run_id}."
    )
    confusion = readback.confusion_counts(run_id)
    card = model_card.build(
        version.name, str(version.version), description, run.data.params, m, confusion, run_id, version.source
    )
    path = f"{names.MODEL_CARD_DIR}/{version.name}-v{version.version}.md"
    client.log_text(run_id, card, path)
    uri = f"runs:/{run_id}/{path}"
    client.set_model_version_tag(version.name, version.version, names.MODEL_CARD_TAG, uri)
    client.update_model_version(version.name, version.version, f"{description} Model card: {uri}")


def register_run(
    run: Run, model_name: str = names.MODEL_NAME, chosen_from: str = "", gates: promotion_rule.Gates | None = None
) -> Registration:
    """Register ``run``'s logged model (once per run) with its model card, and update the aliases."""
    gates = gates or promotion_rule.Gates()
    client = mlflow.MlflowClient()
    version, created = _existing_version(client, model_name, run.info.run_id), False
    if version is None:
        # names.VERSION_TAGS: the training run's variant and data digest tags, its scores, its id
        tags = {key: run.data.tags.get(key, "") for key in (names.TAG_VARIANT, names.TAG_DATA_DIGEST)}
        tags |= {key: f"{run.data.metrics[key]:.6f}" for key in ("val_accuracy", "test_accuracy")}
        tags["run_id"] = run.info.run_id
        version = mlflow.register_model(logged_model.logged_model_uri(run.info.run_id), model_name, tags=tags)
        first = _existing_version(client, model_name, run.info.run_id)
        if str(first.version) != str(version.version):
            # Another process registered this run between our check and our create: the
            # older version stays, ours goes, so a run is never registered twice.
            client.delete_model_version(model_name, version.version)
            version = first
        else:
            _attach_card(client, run, version, chosen_from)
            _set_alias(client, model_name, names.CHALLENGER, version.version)
            created = True
    holder, decision, versus = _settle_champion(client, model_name, version, gates)
    champion = holder is not None and str(holder.version) == str(version.version)
    reason = decision.reason if decision else "already the champion"
    if decision and decision.promote and not champion and holder is not None:
        reason += f"; version {holder.version} has since taken it"
    client.set_model_version_tag(model_name, version.version, names.TAG_CHAMPION_DECISION, reason)
    if decision:
        client.set_model_version_tag(model_name, version.version, names.TAG_OFFLINE_GATE, decision.gate)
    return Registration(version, created, champion, reason, decision, versus, gates)


def _champion(client, model_name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(model_name, names.CHAMPION)
    except MlflowException:
        return None


def aliases(model_name: str, *wanted: str) -> list[str | None]:
    """The versions the ``wanted`` aliases of ``model_name`` name (None: not set)."""
    try:
        held = mlflow.MlflowClient().get_registered_model(model_name).aliases
    except MlflowException as err:
        raise RegistryError(f"model_name={model_name!r}: {first_line(err)}") from None
    return [None if held.get(alias) is None else str(held[alias]) for alias in wanted]


def move_champion(model_name: str, expected: str, version: str) -> bool:
    """Move ``champion`` from version ``expected`` to ``version``, unless another process moved
    it meanwhile; whether ``version`` holds it now. (The registry has no compare-and-set: a
    move in the moment between the read and the write is not seen.)"""
    client = mlflow.MlflowClient()
    if aliases(model_name, names.CHAMPION) != [expected]:
        return False
    client.set_registered_model_alias(model_name, names.CHAMPION, version)
    return True


def tag_version(version: ModelVersion, key: str, value: str) -> None:
    mlflow.MlflowClient().set_model_version_tag(version.name, version.version, key, value)


def version_of(model_uri: str) -> ModelVersion:
    """The registered version ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` names."""
    name, alias, number = model_uris.parse(model_uri) or (None, None, None)
    client, allowed = mlflow.MlflowClient(), "a registered version, models:/<name>@<alias> or models:/<name>/<version>"
    try:
        if alias or number:
            return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    except MlflowException as err:
        raise RegistryError(f"model_uri={model_uri!r} is not allowed: {first_line(err)}") from None
    raise RegistryError(f"model_uri={model_uri!r} is not allowed: {allowed}")


def _set_alias(client, model_name: str, alias: str, version) -> None:
    """Point ``alias`` at ``version``. A store inserting a new alias row refuses the write
    when another process created the same alias at that moment (a unique key violation):
    that process won the race, and the caller's next round reads what it wrote. Any other
    error is raised."""
    try:
        client.set_registered_model_alias(model_name, alias, version)
    except MlflowException as err:
        if not store.lost_race(err):
            raise


def _settle_champion(
    client, model_name: str, version: ModelVersion, gates: promotion_rule.Gates
) -> tuple[ModelVersion | None, promotion_rule.Decision | None, str | None]:
    """Move the champion alias to ``version`` if it passes the gates against the champion.
    Re-read after writing: if another process moved the alias meanwhile, compare again with
    the version it chose, so that concurrent registrations end on one that beat the others.
    Returns (the champion now, the decision against the first champion compared, that
    champion's version)."""
    decision, versus, compared, confirmed, challenger = None, None, set(), False, None
    for _ in range(_ALIAS_ROUNDS):
        current = _champion(client, model_name)
        if current is not None and str(current.version) == str(version.version):
            if confirmed:
                break
            confirmed = True  # look once more after a concurrent registrar had time to write
            time.sleep(_CONFIRM_SECONDS)
            continue
        holder = None if current is None else str(current.version)
        if holder in compared:  # lost to it already
            break
        compared.add(holder)
        challenger = challenger or decisions.evidence(version)  # the same in every round
        this = promotion_rule.decide(challenger, decisions.evidence(current) if current else None, gates)
        if decision is None:
            decision, versus = this, holder
        if not this.promote:
            break
        _set_alias(client, model_name, names.CHAMPION, version.version)
        confirmed = False
    newest = str(max(int(v.version) for v in client.search_model_versions(f"name = '{model_name}'")))
    if str(client.get_registered_model(model_name).aliases.get(names.CHALLENGER)) != newest:
        _set_alias(client, model_name, names.CHALLENGER, newest)  # a concurrent registrar wrote last
    return _champion(client, model_name), decision, versus
