"""The zoo's recipes record how each shipped entry was built, so `arena compress --recipe R`
with no options rebuilds entry R."""
import pytest

from arena.zoo.build import FineTune, fine_tuning_for, read_card
from arena.zoo.registry import available

COMPRESSED = [n for n in available() if n != "dense"]


@pytest.mark.parametrize("name", COMPRESSED)
def test_recipe_defaults_are_what_the_card_records(name):
    card = read_card(name)
    assert card is not None, f"{name} has no card"
    plan = fine_tuning_for(name)
    assert plan.steps == card["fine_tune_steps"]
    assert plan.distill == bool(card.get("distilled"))
    assert plan.lr == (card.get("fine_tune_lr") or 3e-4)


def test_options_override_the_recorded_fine_tuning():
    assert fine_tuning_for("int4+2:4", steps=10, distill=False, lr=1e-3) == FineTune(10, False, 1e-3)
    assert fine_tuning_for("int4+2:4", steps=0).steps == 0
    assert fine_tuning_for("int4+1:4") == FineTune(300)
