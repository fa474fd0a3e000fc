"""scada/opcua/asyncua_private/ as a whole: the only place scada/opcua touches asyncua internals,
one module per concern, each with its contract test (tests/unit/test_asyncua_private_<module>.py),
and the asyncua pin in pyproject.toml that those tests passed on.
"""

from __future__ import annotations

from tests.asyncua_contract import VERSION
from tests.integration.helpers import ROOT
from tests.private_uses import internal_uses

PACKAGE = ROOT / "scada" / "opcua" / "asyncua_private"


def test_no_other_opcua_module_touches_asyncua_internals():
    """Outside asyncua_private/, scada/opcua imports only ``asyncua`` itself and never reaches
    into ``server.iserver``: a new use of an internal goes through the package and its contracts."""
    # asyncua.crypto is public API: certificates, and the User a server's user manager returns.
    found = internal_uses(
        ROOT / "scada" / "opcua", "asyncua_private", "asyncua", public={"asyncua.crypto"}, names={"iserver"}
    )
    assert not found, "asyncua internals used outside scada/opcua/asyncua_private/: " + "; ".join(found)


def test_every_module_of_the_package_has_its_contract_test():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert len(modules) >= 10, modules
    missing = [m for m in modules if not (ROOT / "tests" / "unit" / f"test_asyncua_private_{m}.py").is_file()]
    assert not missing, f"modules of scada/opcua/asyncua_private/ without a contract test: {missing}"
    listed = (PACKAGE / "__init__.py").read_text()
    assert all(f"``{m}``" in listed for m in modules), "the package's docstring lists every module and its concern"


def test_the_asyncua_pin_names_this_contract():
    text = (ROOT / "pyproject.toml").read_text()
    line = next(li for li in text.splitlines() if li.strip().startswith('"asyncua'))
    lo, hi = line.split('"')[1].removeprefix("asyncua").split(",")
    major_minor = tuple(int(x) for x in VERSION.split(".")[:2])
    assert tuple(int(x) for x in lo.removeprefix(">=").split(".")[:2]) <= major_minor, line
    assert major_minor < tuple(int(x) for x in hi.removeprefix("<").split(".")[:2]), line
    assert "scada/opcua/asyncua_private/" in text, "pyproject's asyncua pin comment should point at the package"
