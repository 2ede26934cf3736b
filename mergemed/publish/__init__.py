"""Model cards and Hub uploads for merged folders (``mergemed card``, ``mergemed publish``)."""

from mergemed.publish.card import build_card, read_card_inputs, write_card
from mergemed.publish.licences import LicenceDecision, decide_licence
from mergemed.publish.upload import UploadPlan, check_folder, publish

__all__ = [
    "LicenceDecision",
    "UploadPlan",
    "build_card",
    "check_folder",
    "decide_licence",
    "publish",
    "read_card_inputs",
    "write_card",
]
