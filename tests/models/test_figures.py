"""The figures `cnnlab zoo` lists are recorded (cnnlab/models/zoo_figures.json); here they are counted afresh.

A model added without a record, or changed without regenerating the records, fails with the command that fixes it.
"""

from __future__ import annotations

import pytest

from cnnlab.budget.zoo_figures import count_figures
from cnnlab.models import list_models
from cnnlab.models._figures import REGENERATE, recorded_figures


def test_every_registered_model_has_a_record():
    missing = sorted(set(list_models()) - set(recorded_figures()))
    assert not missing, f"no recorded figures for {', '.join(missing)}; regenerate them with `{REGENERATE}`"


@pytest.mark.parametrize("name", list_models())
def test_recorded_figures_equal_fresh_counts(name: str):
    recorded = recorded_figures().get(name)
    fresh = count_figures(name)
    assert recorded == fresh, f"{name}: recorded {recorded}, counted {fresh}; regenerate them with `{REGENERATE}`"


def test_a_model_without_a_record_is_counted_not_left_out(monkeypatch):
    from cnnlab.cli.zoo import model_figures
    from cnnlab.models import _figures

    expected = recorded_figures()["lenet5"]
    monkeypatch.setattr(_figures, "recorded_figures", lambda: {})
    assert model_figures("lenet5") == expected
