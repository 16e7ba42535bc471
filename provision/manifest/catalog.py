"""Every candidate against Xinference's catalog, before anything is fetched: a name it lacks (with what was
meant), a role the model does not fit, a size / format / quantization the family does not offer, and a
source taken from the catalog when the manifest leaves it out.

From a catalog that is the truth for the target (the server, or the installed package) a name it lacks is
an error; from provision's snapshot it is a warning that says so: a server of another version may have it.
"""

from __future__ import annotations

from ..catalog import Catalog, describe_choice
from ..catalog.index import TYPE_WORDS
from ..errors import ManifestError, Problem
from .candidates import Candidate
from .schema import Manifest
from .source import format_path, line_of

IDENTITY_KEYS = ("name", "size_in_billions", "format", "quantization", "source", "local_path")


def apply_catalog(manifest: Manifest, catalog: Catalog) -> list[str]:
    """Check every candidate against `catalog` and let the manifest take left-out sources from it. Raises
    ManifestError with every error at once; returns the warnings (rendered like problems)."""
    manifest._catalog = catalog
    errors, warnings = check(manifest, catalog)
    if errors:
        raise ManifestError(manifest.file, errors)
    return [w.render(manifest.file) for w in warnings]


def check(manifest: Manifest, catalog: Catalog) -> tuple[list[Problem], list[Problem]]:
    errors: list[Problem] = []
    warnings: list[Problem] = []
    lines = manifest._lines
    for index, spec in enumerate(manifest.models):
        for candidate in manifest.candidates(index):
            loc = ("models", index) if candidate.position == 0 else ("models", index, "fallbacks", candidate.position - 1)
            written = _written(manifest, index, candidate.position)
            if candidate.position and not written & set(IDENTITY_KEYS):
                continue  # an engine change only: the entry above was checked

            def say(key: str, message: str, hint: str | None = None, *, error: bool = True) -> None:
                where = loc + (key,) if key in written or candidate.position == 0 else loc
                problem = Problem(format_path(where), message, line=line_of(lines, where), hint=hint)
                (errors if error else warnings).append(problem)

            _check_candidate(catalog, manifest, candidate, say)
    return _unique(errors), _unique(warnings)


def _check_candidate(catalog: Catalog, manifest: Manifest, c: Candidate, say) -> None:
    word = TYPE_WORDS[c.model_type]
    family = catalog.family(c.model_type, c.name)
    if family is None:
        other = catalog.elsewhere(c.model_type, c.name)
        if other is not None:
            say("name", f"`{c.name}` is {_a(TYPE_WORDS[other.model_type])}, not {_a(word)} (role: {c.role})",
                f"give it role: {other.role}, or {_a(word)} here (`provision models --role {c.role}` lists them)")
            return
        choices = catalog.suggestions(c.model_type, c.name, source=c.source)
        meant = " or ".join(describe_choice(f, s) for f, s in choices)
        same = next((f for f, _ in choices if f.name.lower() == c.name.lower()), None)
        if same is not None:  # the name in another case: that is what was meant
            meant = f"`{same.name}`"
            if c.size_in_billions is not None and not catalog.specs(same, size=c.size_in_billions):
                sizes = ", ".join(str(x).replace("_", ".") for x in same.sizes())
                meant += f", which has no size_in_billions {str(c.size_in_billions).replace('_', '.')} (it offers {sizes})"
        hint = (f"did you mean {meant}? " if meant else "") + f"`provision models --role {c.role}` lists them"
        said = f"`{c.name}` is not a built-in {word} in {catalog.source}"
        if "/" in c.name:
            said = f"`{c.name}` is a hub id, not a built-in {word} name"
            first = describe_choice(*choices[0]) if choices else ""
            hint = (f"the built-in name is {first}, with source: {c.name}; " if first else "") + \
                f"`provision models {c.name}` shows it"
        if catalog.authoritative or "/" in c.name:  # no Xinference name has a '/', in any version
            say("name", said, hint + "; a custom model must be registered on the server first")
        else:
            say("name", said + " (a server of another version may have it)", hint, error=False)
            if c.source is None and c.folder is None and manifest.download.hub != "none":
                say("source", f"no source for `{c.name}`: the catalog does not know the name, so it cannot give one",
                    "give source: owner/name (the hub id of the weights), or local_path")
        return
    if c.role == "chat" and "chat" not in family.abilities:
        say("name", f"`{c.name}` has no chat ability (abilities: {', '.join(family.abilities) or 'none'}): "
            "RAGFlow's chat model must chat", "pick a model with the chat ability (`provision models --role chat`)")
    if not _check_spec(catalog, manifest, c, family, say):
        return
    if c.source is None and c.folder is None:
        hub = manifest.download.hub
        choice = catalog.choose(family, size=c.size_in_billions, format=c.format, quantization=c.quantization, hub=hub)
        if choice.problem is not None:
            key, message, hint = choice.problem
            say(key, f"no source can be taken from the catalog: {message}", hint)
        else:
            say("source", f"no source: the catalog lists no {hub} id for `{c.name}`{_sized(c.size_in_billions)}",
                "give source: owner/name (the hub id of the weights), or local_path")
    elif c.source and manifest.download.hub in ("modelscope", "huggingface") and not c.source_from_catalog:
        listed = [i for i, _ in family.hub_ids(manifest.download.hub)]
        if listed and c.source not in listed:
            say("source", f"source {c.source} is not the catalog's {manifest.download.hub} id for `{c.name}` "
                f"({', '.join(dict.fromkeys(listed[:4]))}): fine for a fine-tune or a mirror", error=False)


def _check_spec(catalog: Catalog, manifest: Manifest, c: Candidate, family, say) -> bool:
    """False when the family offers no spec like the candidate's (and that was said)."""
    size, fmt, quant = c.size_in_billions, c.format, c.quantization
    if size is not None and not catalog.specs(family, size=size):
        offered = ", ".join(str(s).replace("_", ".") for s in family.sizes()) or "none (no size)"
        say("size_in_billions", f"`{c.name}` has no size_in_billions {str(size).replace('_', '.')}",
            f"it offers size_in_billions {offered}")
        return False
    if fmt is not None and not catalog.specs(family, size=size, format=fmt):
        offered = ", ".join(s.format for s in catalog.specs(family, size=size)) or ", ".join(family.formats())
        say("format", f"`{c.name}`{_sized(size)} has no format {fmt}", f"it offers format {offered}")
        return False
    if quant is not None and not catalog.specs(family, size=size, format=fmt, quantization=quant):
        quants = sorted({q for s in catalog.specs(family, size=size, format=fmt) for q in s.quantizations()})
        say("quantization", f"`{c.name}`{_sized(size)}{' ' + fmt if fmt else ''} has no quantization {quant}",
            f"it offers quantization {', '.join(quants) or 'none'}")
        return False
    return True


def _sized(size) -> str:
    return f" {str(size).replace('_', '.')}B" if size is not None else ""


def _written(manifest: Manifest, index: int, position: int) -> set[str]:
    spec = manifest.models[index]
    return set(spec.model_fields_set if position == 0 else spec.fallbacks[position - 1].model_fields_set)


def _unique(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out


def _a(word: str) -> str:
    """`an embedding model`, `an LLM`, `a rerank model`."""
    return ("an " if word[0] in "aeiouAEIOU" or word.startswith("LLM") else "a ") + word
