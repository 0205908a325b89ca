"""The pre-registered test of the central claim (``interp/data/protocol.toml``): its design
(``interp.protocol.design``), the run (``interp.protocol.run``), the claims (``interp.protocol.claims``) and
the report (``interp.protocol.report``)."""

from .claims import Claim, PlanSummary, claims_of, plan_summary
from .design import FAMILIES, PROTOCOL, Protocol, family_of, protocol_plans
from .report import ProtocolResult, protocol_report
from .run import run_protocol

__all__ = [
    "FAMILIES",
    "PROTOCOL",
    "Claim",
    "PlanSummary",
    "Protocol",
    "ProtocolResult",
    "claims_of",
    "family_of",
    "plan_summary",
    "protocol_plans",
    "protocol_report",
    "run_protocol",
]
