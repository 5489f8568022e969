from loraplane.placement import Candidate, place


def c(name: str, priority: int = 0, created: str = "2026-01-01T00:00:00Z") -> Candidate:
    return Candidate(name, priority, created)


def test_no_cap_places_everything() -> None:
    result = place([c("b"), c("a")], None)
    assert set(result.placed) == {"a", "b"} and result.displaced == ()


def test_lowest_priority_is_displaced() -> None:
    result = place([c("low", -5), c("high", 10), c("mid", 0)], 2)
    assert result.placed == ("high", "mid")
    assert result.displaced == ("low",)


def test_equal_priority_newer_is_displaced() -> None:
    old = c("old", 0, "2026-01-01T00:00:00Z")
    new = c("new", 0, "2026-01-02T00:00:00Z")
    assert place([new, old], 1).displaced == ("new",)


def test_room_freed_brings_displaced_back() -> None:
    cands = [c("a", 3), c("b", 2), c("d", 1)]
    assert place(cands, 2).displaced == ("d",)
    assert place([x for x in cands if x.name != "a"], 2).displaced == ()
