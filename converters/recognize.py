"""Which zoo architecture a file's named weights are: one rule for every weights-only source.

A checkpoint (MindSpore ``.ckpt``, PyTorch ``.pth``/``.safetensors``) names its tensors but not
its network. An architecture fits when the file's ``{key: shape}`` equals what the architecture
expects *exactly*: every expected key present with its shape, nothing else. The head width is
taken from the file (a fine-tuned 10-class head is still that architecture), so each candidate's
expectation is built for the file's number of classes.

When nothing fits, the closest candidate (fewest disagreements) and its first disagreement are
what a user needs to see; when several fit (the same key layout in two families, e.g. timm's
``seresnet50`` and MindCV's ``seresnet50``, which pool their stems differently), the source's
family preference decides, and a tie inside one family is ambiguous (``--arch`` needed).

The expectations come from the caller: a function ``arch -> {key: shape}`` in the file's naming
(canonical keys for PyTorch, MindCV's cell names for MindSpore).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

Shape = tuple[int, ...]
Shapes = Mapping[str, Shape]


def mismatches(got: Shapes, expected: Shapes) -> list[str]:
    """What keeps `got` from being `expected`, in the expected order (missing or wrongly shaped
    keys), then the file's own order (keys the architecture does not have). Empty: an exact fit."""
    out = []
    for k, shp in expected.items():
        if k not in got:
            out.append(f"missing {k} {tuple(shp)}")
        elif tuple(got[k]) != tuple(shp):
            out.append(f"{k} has shape {tuple(got[k])}, expected {tuple(shp)}")
    out += [f"unexpected {k} {tuple(v)}" for k, v in got.items() if k not in expected]
    return out


def summary(problems: list[str], n: int = 4) -> str:
    """The first `n` problems on one line, with how many more there are."""
    more = f" (and {len(problems) - n} more)" if len(problems) > n else ""
    return "; ".join(problems[:n]) + more


def rank(
    got: Shapes,
    candidates: Iterable[str],
    expected: Callable[[str], Shapes],
    family: Callable[[str], str] | None = None,
    prefer: tuple[str, ...] = (),
) -> list[tuple[str, list[str]]]:
    """Every candidate with its mismatches, best first: fewest mismatches, then the earliest family
    in `prefer` (families not named come after, in candidate order)."""

    def pref(arch: str) -> int:
        fam = family(arch) if family is not None else ""
        return prefer.index(fam) if fam in prefer else len(prefer)

    scored = [(i, a, mismatches(got, expected(a))) for i, a in enumerate(candidates)]
    scored.sort(key=lambda t: (len(t[2]), pref(t[1]), t[0]))
    return [(a, m) for _, a, m in scored]


def choose(
    scored: list[tuple[str, list[str]]], family: Callable[[str], str] | None = None, prefer: tuple[str, ...] = ()
) -> tuple[str | None, list[str]]:
    """(the architecture to use, every exact fit). The one exact fit; with several, the only one of
    the most preferred family among them; None when nothing fits or the preference leaves a tie."""
    fits = [a for a, m in scored if not m]
    if len(fits) <= 1:
        return (fits[0] if fits else None), fits
    for fam in prefer:
        mine = [a for a in fits if family is not None and family(a) == fam]
        if mine:
            return (mine[0] if len(mine) == 1 else None), fits
    return None, fits
