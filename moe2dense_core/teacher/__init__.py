"""Train a small MoE (or equal-size dense) teacher from scratch: the stand-in for a released MoE.

    from moe2dense_core.teacher import TeacherModelConfig, train_teacher
    trained = train_teacher(train_documents, heldout_documents, TeacherModelConfig(steps=300))
    trained.model.save_pretrained(out); trained.tokenizer.save_pretrained(out)

config: architecture and budget; tokenizer: byte-level BPE; model: Qwen3-MoE / dense Qwen3;
objective: CE + per-layer load balancing; train: the loop (library schedule, precision, perplexity);
routing: router entropy and expert load per layer of a trained MoE (have the experts specialised?).
"""

from moe2dense_core.teacher.config import TeacherModelConfig
from moe2dense_core.teacher.model import build_teacher
from moe2dense_core.teacher.objective import layer_balance_loss, teacher_objective
from moe2dense_core.teacher.routing import LayerRouting, RoutingProfile, routing_profile
from moe2dense_core.teacher.tokenizer import END_OF_TEXT, encode_documents, train_bpe_tokenizer
from moe2dense_core.teacher.train import TrainedTeacher, TrainingSummary, train_teacher, train_teacher_model

__all__ = [
    "END_OF_TEXT",
    "LayerRouting",
    "RoutingProfile",
    "TeacherModelConfig",
    "TrainedTeacher",
    "TrainingSummary",
    "build_teacher",
    "encode_documents",
    "layer_balance_loss",
    "routing_profile",
    "teacher_objective",
    "train_bpe_tokenizer",
    "train_teacher",
    "train_teacher_model",
]
