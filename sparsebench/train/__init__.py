"""`sparsebench train`: a tiny byte-level language model trained once per attention pattern."""

from sparsebench.train.data import Corpus, file_corpus, stdlib_corpus
from sparsebench.train.loop import PRESETS, TrainConfig, preset, train_pattern, train_variant
from sparsebench.train.model import ByteLM, ModelConfig

__all__ = ["PRESETS", "ByteLM", "Corpus", "ModelConfig", "TrainConfig", "file_corpus", "preset", "stdlib_corpus",
           "train_pattern", "train_variant"]
