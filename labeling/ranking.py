"""Pure checks and scores for rankings (no Django import)."""

from collections.abc import Iterable, Mapping


def gettext_noop(message: str) -> str:
    """Mark a message for translation (picked up by makemessages) without translating it."""
    return message


class Problem(str):
    """One problem with a ranking: English text, plus its template and values for l10n."""

    def __new__(cls, template: str, **params):
        problem = super().__new__(cls, template % params)
        problem.template, problem.params = template, params
        return problem


def ranking_problems(
    entries: list[dict],
    *,
    shown: list[int],
    allow_ties: bool,
    flags: Iterable[str],
    rating_range: tuple[int, int] = (1, 7),
    rating_required: bool = True,
) -> list["Problem"]:
    """Return every problem with a submitted ranking (an empty list when it is valid).

    ``entries``: [{"completion": id, "rank": int, "rating": int, "flags": [str]}];
    ``shown``: the completion ids in the order the annotator saw them, named A, B, C...
    in messages. Rank 1 is best; equal ranks are a tie and must be dense (1, 1, 2).
    """
    problems: list[Problem] = []
    names = {cid: f"{chr(ord('A') + i)} (id {cid})" for i, cid in enumerate(shown)}
    if not isinstance(entries, list) or not entries:
        return [Problem(gettext_noop("the ranking is empty: rank every response"))]
    known_flags = set(flags)
    k = len(shown)
    seen: set = set()
    ranks: list[int] = []
    unranked: list[str] = []
    for position, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            problems.append(Problem(gettext_noop("entry %(n)s is not an object"), n=position))
            continue
        completion = entry.get("completion")
        if completion not in shown:
            problems.append(
                Problem(gettext_noop("response %(id)r was not shown in this task"), id=completion)
            )
            continue
        if completion in seen:
            problems.append(
                Problem(
                    gettext_noop("response %(name)s is ranked more than once"),
                    name=names[completion],
                )
            )
            continue
        seen.add(completion)
        name = names[completion]
        rank = entry.get("rank")
        if rank is None:
            unranked.append(name)
        elif isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= k:
            problems.append(
                Problem(
                    gettext_noop("response %(name)s: rank must be a whole number from 1 to %(k)s"),
                    name=name,
                    k=k,
                )
            )
        else:
            ranks.append(rank)
        rating = entry.get("rating")
        low, high = rating_range
        if rating is None:
            if rating_required:
                problems.append(
                    Problem(
                        gettext_noop("response %(name)s: give a rating from %(low)s to %(high)s"),
                        name=name,
                        low=low,
                        high=high,
                    )
                )
        elif isinstance(rating, bool) or not isinstance(rating, int) or not low <= rating <= high:
            problems.append(
                Problem(
                    gettext_noop("response %(name)s: rating must be from %(low)s to %(high)s"),
                    name=name,
                    low=low,
                    high=high,
                )
            )
        entry_flags = entry.get("flags", [])
        if not isinstance(entry_flags, list) or not all(isinstance(f, str) for f in entry_flags):
            problems.append(
                Problem(gettext_noop("response %(name)s: flags must be a list of names"), name=name)
            )
        else:
            unknown = sorted(set(entry_flags) - known_flags)
            if unknown:
                problems.append(
                    Problem(
                        gettext_noop("response %(name)s: unknown flag(s) %(flags)s"),
                        name=name,
                        flags=", ".join(unknown),
                    )
                )
    unranked += [names[c] for c in shown if c not in seen]
    if unranked:
        problems.insert(
            0,
            Problem(
                gettext_noop("every response needs a rank; missing: %(names)s"),
                names=", ".join(unranked),
            ),
        )
    if not problems:
        distinct = sorted(set(ranks))
        if not allow_ties and len(distinct) != len(ranks):
            problems.append(
                Problem(
                    gettext_noop(
                        "ties are not allowed in this project: give each response its own rank"
                    )
                )
            )
        elif distinct != list(range(1, len(distinct) + 1)):
            problems.append(
                Problem(
                    gettext_noop(
                        "ranks must be consecutive from 1 (tied responses share a rank: 1, 1, 2)"
                    )
                )
            )
    return problems


def pairwise_preferences(ranks: Mapping[int, int]) -> set[tuple[int, int]]:
    """Return the (better, worse) pairs a ranking states; ties state no pair."""
    items = list(ranks.items())
    pairs = set()
    for i, (a, rank_a) in enumerate(items):
        for b, rank_b in items[i + 1 :]:
            if rank_a < rank_b:
                pairs.add((a, b))
            elif rank_b < rank_a:
                pairs.add((b, a))
    return pairs


def gold_score(given: Mapping[int, int], expected: Mapping[int, int]) -> float:
    """Return the share of the expected ranking's pairs the given ranking orders the same."""
    expected_pairs = pairwise_preferences(expected)
    if not expected_pairs:
        return 1.0
    return len(expected_pairs & pairwise_preferences(given)) / len(expected_pairs)
