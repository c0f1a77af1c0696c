"""The golden fixtures ship with the repo: every file the parity tests read is present, loads without
pickled code, keeps the documented layout and stays small; a missing one fails instead of skipping."""

from __future__ import annotations

import pytest
import torch

from conftest import FIXTURES, REPO, load_fixture

RELS = ("attention", "spatial", "contacting")
EXPECTED = (
    ["freq_gate_d48.pt"]
    + [f"transformer_{case}.pt" for case in ("plain", "plain_memory", "freq_attention", "freq_spatial",
                                              "freq_contact_emptyframe", "freq_contact_memory")]
    + [f"gmm_plus_{rel}_k{k}.pt" for rel in RELS for k in (1, 4, 6)]
    + [f"gmm_tempura_{rel}_k4.pt" for rel in RELS]
    + [f"bayesian_{rel}_s6.pt" for rel in RELS]
)
MAX_BYTES = 5 * 1024 * 1024   # each file stays under 5 MiB (repository hosting limits and clone size)


def test_repo_ships_every_fixture_and_its_readme():
    shipped = REPO / "tests" / "fixtures" / "reference"
    assert sorted(p.name for p in shipped.glob("*.pt")) == sorted(EXPECTED)
    readme = (shipped / "README.md").read_text()
    assert [name for name in EXPECTED if f"`{name}`" not in readme] == []


@pytest.mark.parametrize("name", EXPECTED)
def test_fixture_loads_with_documented_layout(name):
    assert (FIXTURES / name).stat().st_size < MAX_BYTES
    fx = load_fixture(name)
    assert {"config", "state_dict", "inputs", "outputs"} <= set(fx)
    for part in ("state_dict", "inputs", "outputs"):
        assert fx[part] and all(isinstance(v, torch.Tensor) for v in fx[part].values()), part
    assert all(v.dtype == torch.float32 for v in fx["inputs"].values())


def test_missing_fixture_fails_instead_of_skipping():
    with pytest.raises(pytest.fail.Exception, match="no_such_fixture.pt"):
        load_fixture("no_such_fixture.pt")
