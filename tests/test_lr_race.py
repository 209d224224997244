"""The LR race after the range test: its pure rules (candidates, refinement, winner, the user's LR judged with it)
on synthetic data, then the check both ways on real models: the race's winner trains better than a plainly bad LR,
an LR far too high still fails, and the model is left as it was found."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import babysitter
import zoo
from babysitter.analysis.lr_curve import (CurveAnalysis, LrRace, LrReading, RaceEntry, RaceRules, ReadingRules,
                                          around_user, coarse_candidates, finalists, judge_around_user,
                                          judge_with_race, kept_user_lr, open_top, race_bounds, race_candidates,
                                          race_round, race_suggestion, race_winner, shrinks, snap, with_race)
from babysitter.analysis.lr_curve import below_window, climb, plateau
from babysitter.analysis.status import Status
from babysitter.passes.lr_race import split_pool

FAST = {"steps": 60, "repeats": 2}


def _decades(lrs):
    return [round(math.log10(b / a), 6) for a, b in zip(lrs, lrs[1:])]


# -- the pure rules ---------------------------------------------------------------------------------------------
def test_candidates_span_the_window_around_the_suggestion_on_the_lattice():
    rules = RaceRules()  # a third of a decade apart, 1.5 decades below to 0.75 above, 6 values per decade
    lrs = race_candidates(1e-2, (1e-6, 10.0), rules)
    assert _decades(lrs) == pytest.approx([1 / 3] * 6) and 1e-2 in lrs
    assert lrs[0] == pytest.approx(10 ** (-2 - 4 / 3)) and lrs[-1] == pytest.approx(10 ** (-2 + 2 / 3))
    off = race_candidates(1.1e-2, (1e-6, 10.0), rules)  # the suggestion rounded to the lattice first
    assert off == pytest.approx(lrs)
    assert all(abs(math.log10(lr) * 6 - round(math.log10(lr) * 6)) < 1e-9 for lr in lrs)
    assert snap(1.3e-2, 6) == pytest.approx(10 ** (-11 / 6)) and snap(1.3e-2, 0) == 1.3e-2
    half = race_candidates(1e-2, (1e-6, 10.0), RaceRules(spacing=0.5, below=1.0, above=0.5))
    assert half == pytest.approx((1e-3, 10 ** -2.5, 1e-2, 10 ** -1.5))
    assert len(race_candidates(1e-2, (1e-6, 10.0), RaceRules(candidates=3))) == 3  # the nearest to the suggestion


def test_candidates_stay_inside_the_bounds():
    near_top = race_candidates(0.15, (3e-5, 0.29), RaceRules())
    assert max(near_top) <= 0.29 and _decades(near_top) == pytest.approx([1 / 3] * (len(near_top) - 1))
    narrow = race_candidates(1e-2, (5e-3, 2e-2), RaceRules())  # narrower than the spacing: the suggestion alone
    assert narrow == pytest.approx((1e-2,))
    assert race_candidates(1e-2, (1e-6, 1.0), RaceRules(candidates=0)) == ()


def test_a_multiplier_optimizer_races_over_its_usual_range():
    reading = LrReading(analyses=(), user_lr=1.0, status=Status.SKIP, summary="")  # the sweep could not read it
    assert race_bounds(reading, RaceRules()) is None and coarse_candidates(reading, RaceRules()) == ()
    assert race_bounds(reading, RaceRules(), multiplier=(0.1, 10.0)) == (0.1, 10.0, True)
    assert coarse_candidates(reading, RaceRules(), multiplier=(0.1, 10.0)) == pytest.approx((0.1, 1.0, 10.0))


def test_the_race_may_go_above_the_ranges_top_but_not_near_divergence():
    reading = LrReading(analyses=(), user_lr=1e-2, status=Status.PASS, summary="", suggested_lr=0.1, lr_low=1e-4,
                        lr_high=0.2, diverged_at=1.0)
    assert race_bounds(reading, RaceRules()) == (1e-4, 0.5, False)  # 3x the top would be 0.6: half of 1.0 caps it
    far = dataclasses.replace(reading, diverged_at=None)
    assert race_bounds(far, RaceRules())[1] == pytest.approx(0.6)


FLAT_THEN_DIVERGED = CurveAnalysis(lrs=tuple(np.logspace(-7, 0.5, 90).tolist()), smoothed=(1.0,) * 90,
                                   diverged_at=3.0, reason="the loss never fell by 10%")


def test_a_curve_without_a_suggestion_nor_a_user_lr_is_raced_below_its_divergence_point():
    flat_then_diverged = FLAT_THEN_DIVERGED
    reading = LrReading(analyses=(flat_then_diverged,), user_lr=None, status=Status.SKIP, summary="",
                        diverged_at=3.0)
    lo, hi, wide = race_bounds(reading, RaceRules())
    assert (lo, hi, wide) == (pytest.approx(3e-3), pytest.approx(1.0), True)
    lrs = coarse_candidates(reading, RaceRules())
    assert lrs[0] == pytest.approx(3e-3) and lrs[-1] == pytest.approx(1.0) and len(lrs) >= 3
    from_start = dataclasses.replace(flat_then_diverged, smoothed=(1.0,) * 5)  # diverged before 8 steps
    assert race_bounds(dataclasses.replace(reading, analyses=(from_start,)), RaceRules()) is None


def test_a_curve_without_a_suggestion_is_raced_around_the_users_lr():
    never_diverged = dataclasses.replace(FLAT_THEN_DIVERGED, diverged_at=None)
    reading = LrReading(analyses=(never_diverged,), user_lr=20.0, status=Status.SKIP, summary="")
    assert around_user(reading, RaceRules())
    lrs = coarse_candidates(reading, RaceRules())
    assert lrs == pytest.approx((20 / 10 ** 0.5, 20.0, 20 * 10 ** 0.5))  # yours, half a decade either side
    assert len(coarse_candidates(reading, RaceRules(user_neighbours=2))) == 5
    assert race_bounds(reading, RaceRules()) == (pytest.approx(lrs[0]), pytest.approx(lrs[-1]), False)
    # a sweep that diverged: nothing above half its divergence point, and its wide span beside your neighbours
    bert = LrReading(analyses=(FLAT_THEN_DIVERGED,), user_lr=5e-4, status=Status.SKIP, summary="", diverged_at=3.0)
    lrs = coarse_candidates(bert, RaceRules())
    assert [lr for lr in lrs if lr < 2e-3] == pytest.approx((5e-4 / 10 ** 0.5, 5e-4, 5e-4 * 10 ** 0.5))
    assert max(lrs) <= 1.5 and min(lrs) == pytest.approx(5e-4 / 10 ** 0.5)
    assert all(abs(math.log10(a / b)) >= 0.25 for a, b in zip(lrs, lrs[1:]))  # none within half a spacing
    near_divergence = dataclasses.replace(bert, user_lr=2.0)  # above half the divergence point: capped at 1.5
    assert max(coarse_candidates(near_divergence, RaceRules())) == pytest.approx(1.5)
    # not for a sweep that diverged from its start, nor for a multiplier optimizer, nor a curve with a suggestion
    from_start = dataclasses.replace(bert, analyses=(dataclasses.replace(FLAT_THEN_DIVERGED, smoothed=(1.0,) * 5),))
    assert not around_user(from_start, RaceRules()) and race_bounds(from_start, RaceRules()) is None
    assert not around_user(bert, RaceRules(), multiplier=(0.1, 10.0))
    assert not around_user(dataclasses.replace(bert, suggested_lr=1e-3, lr_low=1e-5, lr_high=1e-2), RaceRules())


def _entries(losses, round="coarse", steps=16):
    return [RaceEntry(lr=lr, loss=loss, round=round, steps=steps) for lr, loss in losses.items()]


def test_the_best_of_the_first_round_are_trained_longer():
    first = _entries({1e-3: 0.9, 1e-2: 0.5, 3e-2: 0.6, 1e-1: None, 3e-1: 0.55, 1e-4: 1.0})
    assert finalists(first, RaceRules(finalists=3)) == (1e-2, 3e-2, 3e-1)  # lowest first; a diverged one never
    assert finalists(first, RaceRules(finalists=9)) == (1e-4, 1e-3, 1e-2, 3e-2, 3e-1)


def test_the_rounds_of_a_race():
    reading = LrReading(analyses=(), user_lr=1e-3, status=Status.PASS, summary="", suggested_lr=1e-2, lr_low=1e-6,
                        lr_high=0.1, diverged_at=3.0)
    rules = RaceRules()
    first = race_round(reading, rules, None, (), 1.0)
    assert len(first) == 7 and {(steps, name) for _, steps, name in first} == {(16, "coarse")}
    done = tuple(_entries({lr: 0.1 * i for i, (lr, _, _) in enumerate(first, 1)}))
    final = race_round(reading, rules, None, done, 1.0)
    assert [lr for lr, _, _ in final] == pytest.approx([lr for lr, _, _ in first[:4]])
    assert {(steps, name) for _, steps, name in final} == {(rules.steps, "final")}
    done += tuple(_entries({lr: 0.5 - 0.1 * i for i, (lr, _, _) in enumerate(final)}, "final", 96))
    assert race_round(reading, rules, None, done, 1.0) == ()  # your LR is inside the range: not raced
    assert race_winner(done, rules, 1.0) == pytest.approx(final[-1][0])  # the final round's lowest held-out loss
    warned = dataclasses.replace(reading, status=Status.WARN, user_lr=2.0)
    assert race_round(warned, rules, None, done, 1.0) == ((2.0, rules.steps, "yours"),)
    few = race_round(reading, RaceRules(below=0.4, above=0.4), None, (), 1.0)  # no more LRs than finalists
    assert len(few) == 3 and {(steps, name) for _, steps, name in few} == {(rules.steps, "final")}
    assert race_round(reading, RaceRules(candidates=0), None, (), 1.0) == ()


def test_the_winner_has_the_lowest_held_out_loss_after_the_final_round():
    rules = RaceRules()
    entries = (_entries({1e-3: 0.9, 1e-2: 0.5, 1e-1: None}, "final", 96) + _entries({3e-2: 0.1}, round="yours")
               + _entries({3e-3: 0.05}))
    assert race_winner(entries, rules) == 1e-2  # diverged ones, the first round's and the user's own LR never win
    assert race_winner(_entries({1e-3: None}, "final"), rules) is None


def test_a_race_where_nothing_trained_has_no_winner():
    entries = _entries({1e-3: 0.995, 1e-2: 0.99}, "final", 96)
    assert race_winner(entries, RaceRules(min_drop=0.02), start_loss=1.0) is None
    assert race_winner(entries, RaceRules(min_drop=0.005), start_loss=1.0) == 1e-2


def test_split_pool_holds_out_the_last_batches():
    assert split_pool(16, 4) == (list(range(12)), [12, 13, 14, 15])
    assert split_pool(8, 4) == (list(range(6)), [6, 7])  # at most a quarter
    assert split_pool(2, 4) == ([0], [1]) and split_pool(1, 4) is None


def _reading(status, user, summary=""):
    return LrReading(analyses=(), user_lr=user, status=status, summary=summary, suggested_lr=1e-2, lr_low=1e-4,
                     lr_high=1e-1, range_lr=None)


def _race(user_loss, winner_loss=0.50, user=0.3):
    entries = (RaceEntry(1e-2, winner_loss, "final", steps=96), RaceEntry(3e-2, 0.7, "final", steps=96),
               RaceEntry(user, user_loss, "yours", steps=96))
    return LrRace(entries=entries, winner=1e-2, steps=72, held_out=4, bounds=(1e-4, 1e-1))


def test_a_warning_turns_into_a_pass_only_when_the_race_trained_the_users_lr_as_well():
    rules, reading_rules = RaceRules(user_tolerance=0.05), ReadingRules()
    above = _reading(Status.WARN, 0.3)  # 3x above the range's top, below divergence
    status, summary, _ = judge_with_race(above, _race(0.51), rules, reading_rules)
    assert status is Status.PASS and "trained as well as the race's winner" in summary
    status, summary, _ = judge_with_race(above, _race(0.60), rules, reading_rules)
    assert status is Status.WARN and "in the race it reached a held-out loss of 0.6" in summary


def test_what_catches_an_lr_far_too_high_or_too_low_is_kept():
    rules = RaceRules(user_tolerance=0.05)
    diverged = LrReading(analyses=(), user_lr=50.0, status=Status.FAIL, summary="", suggested_lr=1e-2, lr_low=1e-4,
                         lr_high=1e-1, diverged_at=5.0)
    race = _race(0.5, user=50.0)  # even a race that (wrongly) trained it as well cannot lift a fail
    assert judge_with_race(diverged, race, rules, ReadingRules())[0] is Status.FAIL
    too_low = _reading(Status.FAIL, 1e-8)
    assert judge_with_race(too_low, _race(0.5, user=1e-8), rules, ReadingRules())[0] is Status.FAIL


def test_with_race_keeps_the_range_tests_suggestion_beside_the_winner():
    reading = _reading(Status.PASS, 1e-2)
    race = dataclasses.replace(_race(0.9), winner=3e-2)
    out = with_race(reading, race, RaceRules(), ReadingRules())
    assert out.suggested_lr == 3e-2 and out.range_lr == 1e-2 and out.race is race
    above = with_race(reading, dataclasses.replace(race, winner=0.2), RaceRules(), ReadingRules())
    assert above.lr_high == 0.2 and above.suggested_lr == 0.2  # a winner above the top raises it
    no_winner = with_race(reading, LrRace(skipped="the race is turned off (race_candidates=0)"), RaceRules(),
                          ReadingRules())
    assert no_winner.suggested_lr == reading.suggested_lr and no_winner.status is reading.status


def test_a_best_at_the_windows_open_top_is_raced_above_it_and_not_shrunk():
    rules, reading = RaceRules(), _reading(Status.PASS, 1e-2)  # bounds: 1e-4 to 3x the range's top 0.1
    lrs = race_candidates(1e-2, race_bounds(reading, rules)[:2], rules)  # ... 0.01, 0.0215, 0.0464
    coarse = tuple(RaceEntry(lr, 1.0 - i / 10, "coarse", steps=16) for i, lr in enumerate(lrs))

    def final(best):
        return coarse + tuple(RaceEntry(lr, 0.4 if lr == best else 0.5, "final", steps=96) for lr in lrs[-4:])

    top = final(lrs[-1])
    assert open_top(reading, rules, top) and not shrinks(reading, rules, entries=top)
    assert race_round(reading, rules, None, top, 1.0) == ((pytest.approx(0.1), rules.steps, "above"),)
    inside = final(lrs[-2])  # the best inside the window: no extension, and the winner is shrunk
    assert not open_top(reading, rules, inside) and shrinks(reading, rules, entries=inside)
    assert race_round(reading, rules, None, inside, 1.0) == ()
    above = top + (RaceEntry(0.1, 0.45, "above", steps=96),)  # the extension lost: the old top wins, shrunk
    assert race_winner(above, rules, 1.0) == lrs[-1] and shrinks(reading, rules, entries=above)
    capped = _reading(Status.PASS, 1e-2)  # no room above: a top set by the bounds is no open top
    capped = dataclasses.replace(capped, lr_high=lrs[-1] / 2)
    assert not open_top(capped, rules, final(lrs[-1]))


def test_a_best_at_the_bottom_of_the_final_round_descends_below_it_while_it_keeps_winning():
    rules, reading = RaceRules(), _reading(Status.PASS, 1e-2)
    lrs = race_candidates(1e-2, race_bounds(reading, rules)[:2], rules)  # 0.000316 ... 0.0464
    coarse = tuple(RaceEntry(lr, 1.0 - i / 10, "coarse", steps=16) for i, lr in enumerate(lrs))  # fast ones lead
    final = coarse + tuple(RaceEntry(lr, 0.4 + 0.1 * i, "final", steps=96) for i, lr in enumerate(lrs[-4:]))
    assert race_round(reading, rules, None, final, 1.0) == ((pytest.approx(lrs[-5]), rules.steps, "below"),)
    better = final + (RaceEntry(lrs[-5], 0.3, "below", steps=96),)  # it won: one step further down
    assert race_round(reading, rules, None, better, 1.0) == ((pytest.approx(lrs[-6]), rules.steps, "below"),)
    worse = better + (RaceEntry(lrs[-6], 0.35, "below", steps=96),)  # it lost: the descent stops, lrs[-5] wins
    assert race_round(reading, rules, None, worse, 1.0) == () and race_winner(worse, rules, 1.0) == lrs[-5]
    assert shrinks(reading, rules, entries=worse)  # the winner is shrunk as any other
    capped = better + (RaceEntry(lrs[-6], 0.2, "below", steps=96),)  # at most rules.descend steps down
    assert below_window(reading, rules, None, capped) == ()
    assert below_window(reading, RaceRules(descend=0), None, final) == ()
    inside = coarse + tuple(RaceEntry(lr, 0.5 - abs(i - 1) / 10, "final", steps=96) for i, lr in enumerate(lrs[-4:]))
    assert below_window(reading, rules, None, inside) == ()  # the best inside the final round: no descent


def test_the_suggestion_is_the_winner_shrunk_to_the_lattice_step_below_except_around_your_lr():
    rules = RaceRules(shrink=1.5, lattice=6)  # a short race favours faster LRs: the suggestion is a step lower
    assert race_suggestion(1e-2, rules) == pytest.approx(10 ** (-2 - 1 / 6))
    assert race_suggestion(0.32, rules) == pytest.approx(snap(0.215, 6))
    assert race_suggestion(1e-2, rules, shrinks=False) == 1e-2 and race_suggestion(None, rules) is None
    assert race_suggestion(1e-2, RaceRules(shrink=1.0)) == 1e-2  # 1: the winner itself
    assert shrinks(_reading(Status.PASS, 1e-2), rules)  # a race around the range test's suggestion
    assert not shrinks(_unread(), rules)  # around your LR: your LR is the prior
    assert not shrinks(_reading(Status.PASS, 1e-2), rules, multiplier=(0.1, 10.0))  # a multiplier's usual range
    race = dataclasses.replace(_race(0.9), winner=3e-2, suggested=race_suggestion(3e-2, rules))
    out = with_race(_reading(Status.PASS, 1e-2), race, rules, ReadingRules())
    assert out.suggested_lr == pytest.approx(snap(2e-2, 6)) and race.suggestion == out.suggested_lr
    low = dataclasses.replace(race, winner=1e-4, suggested=race_suggestion(1e-4, rules))  # the range's low end
    assert with_race(_reading(Status.PASS, 1e-2), low, rules, ReadingRules()).lr_low == pytest.approx(10 ** (-4 - 1 / 6))


def _unread(user=5e-4, diverged=3.94):
    return LrReading(analyses=(FLAT_THEN_DIVERGED,), user_lr=user, status=Status.SKIP, diverged_at=diverged,
                     reason="the loss never fell by 10% (best 1.8% below its start)",
                     summary="the sweep supports no LR suggestion: the loss never fell by 10%")


def _race_around(losses, winner, user=5e-4, start=0.70):
    entries = tuple(RaceEntry(lr, loss, "final", steps=48) for lr, loss in losses.items())
    return LrRace(entries=entries, winner=winner, steps=48 * len(entries), held_out=4, start_loss=start,
                  around=user, bounds=(min(losses), max(losses)))


def test_a_race_around_your_lr_where_nothing_trained_trains_its_best_longer_and_it_may_win():
    """A dropout CNN with a 10-class loss at ln 10 for 48 steps at every LR (the held-out set's segments-dropout-cnn):
    no LR lowers the held-out loss 2%, so the best of them is trained 4x longer, and wins when it trains then."""
    rules, reading = RaceRules(), _unread(user=1e-3)
    flat = _race_around({3e-4: 2.3055, 1e-3: 2.3047, 3e-3: 2.3030, 0.058: 2.2938, 0.4: 2.3246}, None, 1e-3, 2.306)
    todo = race_round(reading, rules, None, flat.entries, 2.306)
    assert todo == ((0.058, int(rules.plateau_steps * rules.user_longer), "plateau"),)
    trained_then = flat.entries + (RaceEntry(0.058, 2.036, "plateau", steps=192),)
    assert race_winner(trained_then, rules, 2.306) == 0.058 and plateau(reading, trained_then, rules, 2.306) == ()
    # then your LR, which did not train, is trained as long before the verdict: it warns if it still does not
    assert race_round(reading, rules, None, trained_then, 2.306) == ((1e-3, 192, "longer"),)
    race = dataclasses.replace(flat, entries=trained_then + (RaceEntry(1e-3, 2.3038, "longer", steps=192),),
                               winner=0.058)
    status, summary, _ = judge_around_user(reading, race, rules, ReadingRules())
    assert status is Status.WARN and "did not train" in summary and "2.036 in 192 steps" in summary
    # the best raced being your own LR: it wins, trained longer, and passes
    yours_best = _race_around({3e-4: 2.3055, 1e-3: 2.2990, 3e-3: 2.3030}, None, 1e-3, 2.306).entries
    assert race_round(reading, rules, None, yours_best, 2.306) == ((1e-3, 192, "plateau"),)
    won = dataclasses.replace(flat, entries=yours_best + (RaceEntry(1e-3, 2.1, "plateau", steps=192),), winner=1e-3)
    assert judge_around_user(reading, won, rules, ReadingRules())[0] is Status.PASS
    # nothing of this when a race around your LR has a winner, or with user_longer 1
    assert plateau(reading, _race_around({1e-3: 0.6, 3e-3: 0.5}, 3e-3).entries, rules, 0.70) == ()
    assert plateau(reading, flat.entries, RaceRules(user_longer=1), 2.306) == ()


def test_a_race_around_your_lr_lowers_a_winner_other_than_yours_a_step_as_any_race_does():
    rules, reading = RaceRules(), _unread(user=1e-3)
    other = _race_around({1e-3: 0.69, 3e-3: 0.6, 1e-2: 0.5}, None, 1e-3).entries  # 1e-2 won a 48-step race
    assert shrinks(reading, rules, entries=other) and race_suggestion(1e-2, rules) == pytest.approx(10 ** (-13 / 6))
    yours = _race_around({1e-3: 0.5, 3e-3: 0.6}, None, 1e-3).entries  # yours won: it stays the suggestion
    assert not shrinks(reading, rules, entries=yours)
    race = dataclasses.replace(_race_around({1e-3: 0.64, 3e-3: 0.6, 1e-2: 0.5}, 1e-2, 1e-3, start=0.70),
                               suggested=race_suggestion(1e-2, rules))
    out = with_race(reading, race, rules, ReadingRules())
    assert out.suggested_lr == pytest.approx(0.0068, rel=0.01) and "a step below the winner 0.01" in out.summary


def test_against_a_plateaus_best_your_lr_is_compared_trained_as_long_and_must_have_trained():
    rules, reading = RaceRules(), _unread(user=1e-3)
    flat = _race_around({3e-4: 2.3055, 1e-3: 2.3050, 3e-3: 2.3030}, None, 1e-3, 2.306).entries
    won = flat + (RaceEntry(3e-3, 2.20, "plateau", steps=192),)
    # yours trained as long did not train: 5% of a loss of 2.3 is more than the winner moved it, no pass
    still = dataclasses.replace(_race_around({1e-3: 0.1}, 3e-3), entries=won + (RaceEntry(1e-3, 2.304, "longer",
                                                                                        steps=192),), start_loss=2.306)
    status, summary, _ = judge_around_user(reading, still, rules, ReadingRules())
    assert status is Status.WARN and "did not train" in summary
    # yours trained as long beat the winner: yours passes and stays the suggestion
    better = dataclasses.replace(still, entries=won + (RaceEntry(1e-3, 2.10, "longer", steps=192),))
    status, summary, _ = judge_around_user(reading, better, rules, ReadingRules())
    assert status is Status.PASS and "held-out loss 2.1," in summary and "suggested: yours" in summary
    assert with_race(reading, better, rules, ReadingRules()).suggested_lr == 1e-3
    # your LR as the plateau's best, lowering the loss less than 2%: no winner, and yours is kept
    mine = flat + (RaceEntry(1e-3, 2.29, "plateau", steps=192),)
    nobody = dataclasses.replace(_race_around({1e-3: 0.1}, None), entries=mine, start_loss=2.306)
    assert kept_user_lr(reading, nobody) == 1e-3
    # ... and when trained longer it did worse (the tuning set's llama-tiny): its 48 steps were still the best raced
    best48 = _race_around({3e-4: 2.3055, 1e-3: 2.3020, 3e-3: 2.3030}, None, 1e-3, 2.306).entries
    worse = dataclasses.replace(nobody, entries=best48 + (RaceEntry(1e-3, 2.33, "plateau", steps=192),))
    assert kept_user_lr(reading, worse) == 1e-3


def test_a_race_around_your_lr_climbs_while_its_best_is_its_highest_lr():
    """Plain SGD at 1e-3 on a multi-label BCE head, 1000x below the best LR: the sweep cannot read the curve, the
    race around 1e-3 is best at its top, so it climbs half a decade at a time until the held-out loss turns up."""
    rules = RaceRules()
    flat = LrReading(analyses=(dataclasses.replace(FLAT_THEN_DIVERGED, diverged_at=None),), user_lr=1e-3,
                     status=Status.SKIP, summary="")
    h = lambda k: 1e-3 * 10 ** (0.5 * k)  # noqa: E731  (half a decade from the user's LR, k times)
    around = _entries({h(-1): 0.698, h(0): 0.696, h(1): 0.692}, "final", 48)
    assert climb(flat, rules, None, around) == (pytest.approx(h(2)),)
    assert race_round(flat, rules, None, tuple(around), 0.70) == ((pytest.approx(h(2)), 48, "climb"),)
    rising = around + _entries({h(2): 0.68, h(3): 0.67, h(4): 0.64, h(5): 0.56, h(6): 0.51}, "climb", 48)
    assert climb(flat, rules, None, rising) == (pytest.approx(h(7)),)
    turned = rising + _entries({h(7): 0.68}, "climb", 48)  # the loss turned up: the climb stops, 1 wins
    assert climb(flat, rules, None, turned) == () and race_winner(turned, rules, 0.70) == pytest.approx(1.0)
    # no climb: the best inside the window, the sweep's last LR (10 ** 0.5) reached, a diverged top, or turned off
    assert climb(flat, rules, None, _entries({h(-1): 0.698, h(0): 0.69, h(1): 0.692}, "final", 48)) == ()
    assert climb(flat, rules, None, rising + _entries({h(7): 0.50}, "climb", 48)) == ()
    assert climb(flat, rules, None, around[:-1] + _entries({h(1): None}, "final", 48)) == ()
    assert climb(flat, RaceRules(climb=0), None, around) == ()
    assert climb(flat, RaceRules(climb=2), None, around + _entries({h(2): 0.68, h(3): 0.67}, "climb", 48)) == ()
    # nor outside a race around your LR (a curve with a suggestion has its own window and its "above" round)
    assert climb(dataclasses.replace(flat, suggested_lr=1e-3, lr_low=1e-4, lr_high=1e-2), rules, None, around) == ()


def test_a_race_around_your_lr_passes_it_when_it_trains():
    rules, reading_rules = RaceRules(user_tolerance=0.05, min_drop=0.02), ReadingRules()
    won = judge_around_user(_unread(), _race_around({1.6e-4: 0.60, 5e-4: 0.40, 1.6e-3: 0.45}, 5e-4), rules,
                            reading_rules)
    assert won[0] is Status.PASS and "yours 0.0005 trains as well as the best raced" in won[1]
    assert "could not read the curve (the loss never fell by 10%" in won[1]
    close = judge_around_user(_unread(), _race_around({1.6e-4: 0.60, 5e-4: 0.41, 1.6e-3: 0.40}, 1.6e-3), rules,
                              reading_rules)
    assert close[0] is Status.PASS and "trains as well" in close[1] and "suggested: yours, 0.0005" in close[1]
    # beaten clearly but it trains (0.55 < 0.70 - 2%): a 48-step race on a plateau is weak evidence, no warning
    beaten = judge_around_user(_unread(), _race_around({1.6e-4: 0.60, 5e-4: 0.55, 1.6e-3: 0.40}, 1.6e-3), rules,
                               reading_rules)
    assert beaten[0] is Status.PASS and "trained 0.0016 better than yours 0.0005" in beaten[1] and beaten[2] == ()


def test_a_race_around_your_lr_warns_only_when_yours_did_not_train_while_another_did():
    rules, reading_rules = RaceRules(user_tolerance=0.05, min_drop=0.02), ReadingRules()
    stuck = judge_around_user(_unread(user=1e-7), _race_around({3e-8: 0.70, 1e-7: 0.695, 3e-7: 0.60}, 3e-7,
                                                                user=1e-7), rules, reading_rules)
    assert stuck[0] is Status.WARN and "did not train (held-out loss 0.695 after 48 steps" in stuck[1] and "0.6" in stuck[1]
    assert stuck[2] and "3e-07" in stuck[2][0]
    # a plateau: yours did not train in 48 steps but did when trained 4x longer (the race's "longer" entry)
    race = _race_around({1.6e-4: 0.69, 5e-4: 0.69, 1.6e-3: 0.11}, 1.6e-3)
    later = dataclasses.replace(race, entries=race.entries + (RaceEntry(5e-4, 0.003, "longer", steps=192),))
    status, summary, _ = judge_around_user(_unread(), later, rules, reading_rules)
    assert status is Status.PASS and "yours 0.0005 trains, later than 0.0016" in summary and "after 192" in summary
    never = dataclasses.replace(race, entries=race.entries + (RaceEntry(5e-4, 0.69, "longer", steps=192),))
    status, summary, _ = judge_around_user(_unread(), never, rules, reading_rules)
    assert status is Status.WARN and "0.69 after 192" in summary
    blew_up = judge_around_user(_unread(user=1.0), _race_around({0.3: 0.50, 1.0: None}, 0.3, user=1.0), rules,
                                reading_rules)
    assert blew_up[0] is Status.WARN and "yours 1 diverged" in blew_up[1]
    above = judge_around_user(_unread(user=10.0), _race_around({0.6: 0.5, 1.9: 0.55}, 0.6, user=10.0), rules,
                              reading_rules)
    assert above[0] is Status.FAIL and "above the point where the loss diverged (3.94)" in above[1]


def test_with_race_around_your_lr_suggests_the_winner_or_keeps_the_skip():
    rules, reading_rules = RaceRules(), ReadingRules()
    out = with_race(_unread(), _race_around({1.6e-4: 0.60, 5e-4: 0.40, 1.6e-3: 0.45}, 5e-4), rules, reading_rules)
    assert out.status is Status.PASS and out.suggested_lr == 5e-4 and out.range_lr is None and out.lr_low is None
    # a winner 3x away whose held-out loss yours matches within 5%: yours stays the suggestion
    close = with_race(_unread(), _race_around({1.6e-4: 0.60, 5e-4: 0.41, 1.6e-3: 0.40}, 1.6e-3), rules, reading_rules)
    assert close.status is Status.PASS and close.suggested_lr == 5e-4
    beaten = with_race(_unread(), _race_around({1.6e-4: 0.60, 5e-4: 0.55, 1.6e-3: 0.40}, 1.6e-3), rules, reading_rules)
    assert beaten.status is Status.PASS and beaten.suggested_lr == 1.6e-3
    flat = dataclasses.replace(_race_around({1.6e-4: 0.70, 5e-4: 0.69, 1.6e-3: 0.70}, None),
                               reason="no raced LR brought the held-out loss 2% below its start 0.7 (best 0.69)")
    out = with_race(_unread(), flat, rules, reading_rules)  # nothing beat your LR: keep it, the check still skips
    assert out.status is Status.SKIP and out.suggested_lr == 5e-4 and kept_user_lr(_unread(), flat) == 5e-4
    assert "the sweep supports no LR suggestion" in out.summary and "no raced LR brought" in out.summary
    assert "keep your LR 0.0005: no LR raced trained better than it" in out.summary
    blew_up = dataclasses.replace(flat, entries=tuple(dataclasses.replace(e, loss=None) if e.lr == 5e-4 else e
                                                      for e in flat.entries))
    assert kept_user_lr(_unread(), blew_up) is None  # your LR diverged there: nothing to keep
    assert with_race(_unread(), blew_up, rules, reading_rules).suggested_lr is None
    beaten = _race_around({1.6e-4: 0.70, 5e-4: 0.695, 1.6e-3: 0.69}, None)  # a neighbour did better: no keep
    assert kept_user_lr(_unread(), beaten) is None and with_race(_unread(), beaten, rules, reading_rules).suggested_lr is None
    unmoved = _race_around({1.6e-4: 0.71, 5e-4: 0.70, 1.6e-3: 0.72}, None)  # the best, but not below its start
    assert kept_user_lr(_unread(), unmoved) is None


# -- the check, on real models ----------------------------------------------------------------------------------
def check(options=None, **fields):
    return babysitter.check(**fields, select=["lr_range"], options={"lr_range": {**FAST, **(options or {})}})["lr_range"]


def _train(fields, lr, steps=60):
    torch.manual_seed(1)
    model = fields["model"]
    x, y = fields["data"]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for i in range(steps):
        idx = torch.arange(i * 64, (i + 1) * 64) % len(x)
        opt.zero_grad()
        fields["loss_fn"](model(x[idx]), y[idx]).backward()
        opt.step()
    with torch.no_grad():
        return float(fields["loss_fn"](model(x), y))


def test_the_race_winner_trains_better_than_a_plainly_bad_lr():
    result = check(**zoo.regression_target())
    m = result.metrics
    # 7 first, 4 final, and 1 above the window when the best of those is its top, or up to 2 below when its bottom
    rules = RaceRules()
    extra = max(1, rules.descend)
    assert result.status == "pass" and 11 <= m["race_lrs"] <= 11 + extra and m["range_lr"] is not None
    assert m["race_steps"] <= rules.candidates * rules.first_steps + (rules.finalists + extra) * rules.steps
    won = _train(zoo.regression_target(), m["suggested_lr"])
    assert won < _train(zoo.regression_target(), m["suggested_lr"] / 100)
    assert won < _train(zoo.regression_target(), 1.0)
    race = next(t for t in result.tables if t.id == "race")
    assert sum(r["note"] == "winner" for r in race.records()) == 1
    assert any(p.id == "lr_race" for p in result.plots)
    assert any("won a race" in n for n in result.notes)


def test_an_lr_far_too_high_is_still_flagged():
    fields = zoo.mlp_target()
    fields["optimizer"] = lambda p: torch.optim.SGD(p, lr=100.0, momentum=0.9)
    result = check(**fields)
    assert result.status == "fail" and "diverged" in result.summary
    assert result.metrics["suggested_lr"] < result.metrics["diverged_at"]


def test_the_race_can_be_turned_off():
    result = check(**zoo.regression_target(), options={"race_candidates": 0})
    m = result.metrics
    assert m["suggested_lr"] == m["range_lr"] and m["race_lrs"] == 0 and m["race_steps"] == 0
    assert all(t.id != "race" for t in result.tables)


def test_the_race_leaves_the_model_as_it_was_found():
    fields = zoo.cnn_target()  # BatchNorm buffers, SGD momentum state
    model = fields["model"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    result = check(**fields)
    assert result.metrics["race_steps"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state()) and model.training


def _dropout_target():
    torch.manual_seed(0)  # dropout draws from the RNG at every training step: a resumed run must continue it
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(64, 4))
    return zoo.blobs_fields(model, optimizer=zoo.adam(1e-3))


@pytest.mark.parametrize("make", [zoo.cnn_target, _dropout_target], ids=["batchnorm-momentum", "dropout-adam"])
def test_finalists_resumed_from_their_first_round_race_exactly_as_when_trained_again(make, monkeypatch):
    import babysitter.passes.lr_race as lr_race

    resumed = check(**make())
    monkeypatch.setattr(lr_race, "RESUME_BYTES", 0)  # nothing kept: every finalist trained again from your state
    again = check(**make())
    races = [next(t for t in r.tables if t.id == "race").records() for r in (resumed, again)]
    assert races[0] == races[1] and resumed.metrics["suggested_lr"] == again.metrics["suggested_lr"]
    finals = sum(r["round"] != "coarse" and any(c["round"] == "coarse" and c["lr"] == r["lr"] for c in races[0])
                 for r in races[0])
    assert finals >= 1 and again.metrics["race_steps"] - resumed.metrics["race_steps"] == \
        finals * RaceRules().first_steps


def test_a_user_optimizer_instance_keeps_its_objects_and_a_state_too_large_is_not_copied(monkeypatch):
    import babysitter.passes.lr_race as lr_race

    fields = _dropout_target()
    opt = torch.optim.Adam(fields["model"].parameters(), lr=1e-3)
    fields["optimizer"] = opt
    group = opt.param_groups[0]
    check(**fields)  # finalists resumed into the instance: its groups are the same objects afterwards
    assert opt.param_groups[0] is group and not opt.state
    captured = []
    monkeypatch.setattr(lr_race.Paused, "capture", classmethod(lambda cls, *a: captured.append(a)))
    # (a state over the budget is measured on the device and never copied)
    monkeypatch.setattr(lr_race, "RESUME_BYTES", 1000)  # smaller than any state: nothing is copied to the host
    assert check(**_dropout_target()).metrics["race_steps"] > 0 and captured == []


def test_only_a_state_that_comes_back_exactly_is_resumed_and_only_at_its_own_lr():
    from babysitter.passes.lr_race import Kept, Paused, resumable

    model = torch.nn.Linear(3, 2).double()
    nadam = torch.optim.NAdam(model.parameters())
    model(torch.randn(4, 3, dtype=torch.float64)).sum().backward()
    nadam.step()  # its float32 mu_product beside float64 weights would come back float64
    assert not resumable(nadam) and resumable(torch.optim.Adam(model.parameters()))
    paused = Paused(lr=0.0021544346900318843, steps=16, model=None, optimizer={}, scaler=None, rng=None, train=(),
                    nbytes=100)
    kept = Kept(1 << 20)
    kept.add(paused, 0.5)
    assert kept.get(0.0021544346900318843, 96) is paused and kept.get(0.0022, 96) is None  # 2% apart: another LR
    assert kept.get(0.0021544346900318843, 16) is None  # nothing to go on from


# -- a curve the range test cannot read: the corpus's BERT, whose loss falls only after ~50-100 steps at any LR ----
def _bert(lr):
    pytest.importorskip("transformers")
    import corpus.transformers_models as tm

    return tm.bert(0, lr=lr)


def test_a_plateau_is_raced_around_your_lr_instead_of_skipped():
    result = babysitter.check(**_bert(5e-4), select=["lr_range"], device="cpu")["lr_range"]
    assert result.status == "pass" and "the range test could not read the curve" in result.summary
    assert "a race around your LR" in result.summary and result.metrics["suggested_lr"] is not None
    assert result.metrics["range_lr"] is None  # the range test alone still gives no suggestion


def test_a_plateau_with_an_lr_far_too_low_still_warns():
    result = babysitter.check(**_bert(1e-7), select=["lr_range"], device="cpu")["lr_range"]
    assert result.status in ("warn", "fail") and "1e-07" in result.summary, result.summary
