"""The simulated host's `/import` and `/import_metadata` parse ova.xml with the format layer's
budgets, so an element bomb is refused after its budget, not after building a tree of it."""

from __future__ import annotations

import httpx
import pytest

from tests.builders import ova_xml_bomb
from tests.sim.helpers import call, login, task_record
from xvatool.sim.testing import RunningHost
from xvatool.xva.ovaxml import MAX_OVA_XML_ELEMENTS


@pytest.mark.parametrize("endpoint", ["/import", "/import_metadata"])
def test_an_ova_xml_element_bomb_is_refused_at_its_budget(sim: RunningHost, endpoint: str) -> None:
    # 8 million <value/> in 100 KB of gzip: it took 2.3 GB and 17 s before the budgets.
    session = login(sim)
    vms_before = len(sim.host.state.refs("VM"))
    task = call(sim, "task.create", session, "bomb", "")
    reply = httpx.put(
        f"{sim.url}{endpoint}",
        params={"session_id": session, "task_id": task},
        content=ova_xml_bomb(),
        timeout=120,
    )
    assert reply.status_code in (200, 500)
    record = task_record(sim, session, task)
    assert record["status"] == "failure"
    code, *params = record["error_info"]
    assert code == "IMPORT_ERROR"
    # The parser stopped at its element budget: at most an eighth of the document was parsed.
    assert f"more than {MAX_OVA_XML_ELEMENTS} elements" in params[0]
    assert len(sim.host.state.refs("VM")) == vms_before
