"""Import and export of the published FReMuRe and STTran code's checkpoints and state dicts."""

from .checkpoint import infer_config, load_reference_checkpoint, read_reference_checkpoint
from .state_dict import check_state_dict, export_reference_state_dict, load_reference_state_dict
from .sttran import export_sttran_state_dict, load_sttran_state_dict

__all__ = ["load_reference_state_dict", "export_reference_state_dict", "check_state_dict",
           "load_reference_checkpoint", "read_reference_checkpoint", "infer_config", "load_sttran_state_dict",
           "export_sttran_state_dict"]
